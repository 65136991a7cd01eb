"""Regenerates the protobuf code from protos/ (``nox -s protos``).

- ``protos/worker.proto`` -> ``backend/_proto/`` (messages only: the worker wire protocol).
- ``protos/inference.proto``, ``protos/management.proto``, ``protos/open_inference.proto``
  -> ``trioserve/grpc/_proto/``:
  messages (``--python_out``, ``--pyi_out``), with their imports made package-relative and a
  "generated, do not edit" header. The services need no generated code: grpc/methods.py
  serves each RPC from the messages' service descriptors.

The generated files are committed; ``tests/unit/test_protos.py`` regenerates them into a
temporary directory and fails when the committed copies differ.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WORKER_OUT = ROOT / "backend" / "_proto"
GRPC_OUT = ROOT / "trioserve" / "grpc" / "_proto"
GRPC_PACKAGE = "trioserve.grpc._proto"
GRPC_PROTOS = ("inference.proto", "management.proto", "open_inference.proto")
GRPC_FILES = tuple(
    f"{Path(proto).stem}{suffix}" for proto in GRPC_PROTOS for suffix in ("_pb2.py", "_pb2.pyi")
)
HEADER = "# Generated from protos/{proto} by trioserve/_protogen.py: do not edit (nox -s protos).\n"


def include_dirs() -> list[str]:
    """Where protoc finds our protos and the ones they import: google/protobuf/* ships with
    grpcio-tools, google/rpc/status.proto with googleapis-common-protos."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).parent / "_proto"
    spec = importlib.util.find_spec("google.rpc")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("googleapis-common-protos is not installed (google/rpc/status.proto)")
    googleapis = Path(next(iter(spec.submodule_search_locations))).parent.parent
    return [str(PROTOS), str(well_known), str(googleapis)]


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    includes = [f"-I{path}" for path in include_dirs()]
    if protoc.main(["protoc", *includes, *args]) != 0:
        raise SystemExit("protoc failed")


def generate(out_dir: Path) -> None:
    """The worker protocol's messages (backend/_proto)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc([f"--python_out={out_dir}", f"--pyi_out={out_dir}", str(PROTOS / "worker.proto")])


def _package_imports(text: str) -> str:
    """protoc writes ``import inference_pb2`` (a top-level module); make it our package's."""
    stems = "|".join(re.escape(Path(proto).stem) for proto in GRPC_PROTOS)
    return re.sub(
        rf"^import ({stems})_pb2$", rf"from {GRPC_PACKAGE} import \1_pb2", text, flags=re.M
    )


def generate_grpc(out_dir: Path) -> None:
    """The gRPC messages (trioserve/grpc/_proto)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        _protoc(
            [
                f"--python_out={raw}",
                f"--pyi_out={raw}",
                *(str(PROTOS / proto) for proto in GRPC_PROTOS),
            ]
        )
        for name in GRPC_FILES:
            proto = name.rsplit("_", 1)[0] + ".proto"  # inference_pb2.py -> inference.proto
            text = _package_imports((Path(raw) / name).read_text())
            (out_dir / name).write_text(HEADER.format(proto=proto) + text)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC code: see trioserve/_protogen.py. Do not edit."""\n')


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        generate(target / "worker")
        generate_grpc(target / "grpc")
    else:
        generate(WORKER_OUT)
        generate_grpc(GRPC_OUT)
