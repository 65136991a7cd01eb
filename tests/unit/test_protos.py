"""The committed generated protobuf code matches protos/ (regenerate with `nox -s protos`)."""

from __future__ import annotations

from pathlib import Path

from trioserve._protogen import GRPC_FILES, GRPC_OUT, WORKER_OUT, generate, generate_grpc


def test_generated_worker_proto_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("worker_pb2.py", "worker_pb2.pyi"):
        assert (tmp_path / name).read_text() == (WORKER_OUT / name).read_text(), (
            f"backend/_proto/{name} is stale: run `nox -s protos`"
        )


def test_generated_grpc_code_is_current(tmp_path: Path) -> None:
    generate_grpc(tmp_path)
    committed = {p.name for p in GRPC_OUT.iterdir() if p.suffix in (".py", ".pyi")}
    assert committed == {*GRPC_FILES, "__init__.py"}, "trioserve/grpc/_proto has stray files"
    for name in GRPC_FILES:
        assert (tmp_path / name).read_text() == (GRPC_OUT / name).read_text(), (
            f"trioserve/grpc/_proto/{name} is stale: run `nox -s protos`"
        )


def test_grpc_code_imports_from_its_package() -> None:
    """protoc writes top-level imports (``import inference_pb2``); the generator rewrites them,
    and marks every file as generated."""
    for name in GRPC_FILES:
        text = (GRPC_OUT / name).read_text()
        assert text.startswith("# Generated from protos/"), name
        assert "\nimport inference_pb2" not in text
        assert "\nimport management_pb2" not in text
