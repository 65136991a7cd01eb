"""Fuzz target: archive bytes -> ``open_archive`` (as a ``.mar`` zip and as a ``.tar.gz``), and
the same bytes as a MANIFEST.json and a model-config.yaml.

Contract: any bytes either open or raise a ``ServeError`` (``InvalidModel``), nothing else. A
refused archive leaves nothing behind; an opened one holds only regular files and directories,
all inside its own model directory, and nothing is written anywhere else.

Run under atheris (``python fuzz/fuzz_archive.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_archive.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import random
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import _harness

from trioserve.errors import ServeError
from trioserve.models.archive import open_archive, remove_extraction
from trioserve.models.manifest import Manifest, ModelConfig

logging.disable(logging.CRITICAL)  # a manifest without createdOn logs a warning
# Under atheris, libFuzzer exits without running atexit: `nox -s fuzz` points
# TRIOSERVE_FUZZ_TMP into its scratch directory, which it removes.
WORK = Path(tempfile.mkdtemp(prefix="fuzz-archive-", dir=os.environ.get("TRIOSERVE_FUZZ_TMP")))
atexit.register(shutil.rmtree, WORK, True)
SOURCE = WORK / "source"
EXTRACT = WORK / "extract"

MANIFEST = json.dumps(
    {
        "createdOn": "24/09/2024 10:00:00",
        "runtime": "python",
        "model": {
            "modelName": "m",
            "modelVersion": "1.0",
            "handler": "handler.py",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
).encode()
CONFIG = b"minWorkers: 1\nmaxWorkers: 2\nbatchSize: 4\ntorchrun:\n  nproc-per-node: 2\n"
FILES = {
    "MAR-INF/MANIFEST.json": MANIFEST,
    "model-config.yaml": CONFIG,
    "handler.py": b"def handle(data, context):\n    return data\n",
}


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _tgz(files: dict[str, bytes], prefix: str = "m/") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(prefix + "link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    return out.getvalue()


SEEDS: list[bytes] = [
    _zip(FILES),
    _zip({"../evil": b"x", "MAR-INF/MANIFEST.json": MANIFEST}),
    _zip({"model.pt": bytes(4096)}),
    _tgz(FILES),
    _tgz(FILES, prefix=""),
    MANIFEST,
    CONFIG,
    b'{"model": {"modelVersion": 2, "handler": ["x"]}, "runtime": "python"}',
    b"a: &a [*a]\nb: {x: 1}\n",
]


def _check_tree(model_dir: Path) -> None:
    for path in model_dir.rglob("*"):
        assert not path.is_symlink(), path
        assert path.is_file() or path.is_dir(), path
        assert path.resolve().is_relative_to(model_dir.resolve()), path


def _open(data: bytes, name: str) -> None:
    SOURCE.mkdir(exist_ok=True)
    source = SOURCE / name
    source.write_bytes(data)
    try:
        archive = open_archive(source, EXTRACT)
    except ServeError:
        assert list(EXTRACT.iterdir()) == [], "a refused archive left files behind"
    else:
        assert archive.extracted
        assert archive.model_dir.is_relative_to(EXTRACT)
        _check_tree(archive.model_dir)
        remove_extraction(archive)
    finally:
        source.unlink()
    assert sorted(p.name for p in WORK.iterdir()) == ["extract", "source"]
    assert list(SOURCE.iterdir()) == []


def check(data: bytes) -> None:
    try:
        Manifest.from_json(data)
    except ServeError:
        pass
    try:
        ModelConfig.from_yaml(data)
    except ServeError:
        pass
    _open(data, "m.mar")
    _open(data, "m.tar.gz")
    shutil.rmtree(EXTRACT, ignore_errors=True)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del out[at : at + rng.randint(1, 16)]
        else:
            del out[at:]
    return bytes(out)


def main(argv: list[str]) -> int:
    return _harness.main(
        argv, name="archive", doc=__doc__ or "", check=check, seeds=SEEDS, mutate=mutate
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
