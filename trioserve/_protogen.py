"""Regenerates the protobuf code in backend/_proto from protos/ (``nox -s protos``).

The generated files are committed; ``tests/unit/test_protos.py`` regenerates them into a
temporary directory and fails when the committed copies differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WORKER_OUT = ROOT / "backend" / "_proto"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(PROTOS / "worker.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else WORKER_OUT)
