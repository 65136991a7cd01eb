"""The committed generated protobuf code matches protos/ (regenerate with `nox -s protos`)."""

from __future__ import annotations

from pathlib import Path

from trioserve._protogen import WORKER_OUT, generate


def test_generated_worker_proto_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("worker_pb2.py", "worker_pb2.pyi"):
        assert (tmp_path / name).read_text() == (WORKER_OUT / name).read_text(), (
            f"backend/_proto/{name} is stale: run `nox -s protos`"
        )
