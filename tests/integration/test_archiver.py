"""``trioserve archive`` against the real ``torch-model-archiver`` 0.12, both ways (contract
§6): its archives load and serve in trioserve, and ours have its manifest keys and layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import Server
from tests.support.handler_models import TS_CLASS_HANDLER, json_bytes, state_bytes
from tests.support.models import EAGER_MODEL, TinyNet, expected_probs
from trioserve import cli

ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")
FORMATS = ("default", "zip-store", "tgz", "no-archive")
SUFFIX = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
VALUES = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A model's sources as a user has them: a ts handler, the eager TinyNet and its weights, a
    label map, a directory of extras (with a subdirectory), requirements and a config, plus
    what both archivers leave out: a __pycache__ and a dot-directory."""
    src = tmp_path / "src"
    (src / "extras" / "nested").mkdir(parents=True)
    (src / "handler.py").write_text(textwrap.dedent(TS_CLASS_HANDLER))
    (src / "model.py").write_text(textwrap.dedent(EAGER_MODEL))
    torch.manual_seed(0)
    (src / "weights.pt").write_bytes(state_bytes(TinyNet()))
    (src / "index_to_name.json").write_text(json.dumps({"0": "low", "1": "mid", "2": "high"}))
    (src / "extras" / "notes.txt").write_text("notes\n")
    (src / "extras" / "nested" / "table.csv").write_text("a,b\n")
    (src / "extras" / "__pycache__").mkdir()
    (src / "extras" / "__pycache__" / "cached.txt").write_text("skip me\n")
    (src / "extras" / ".hidden").mkdir()
    (src / "extras" / ".hidden" / "secret.txt").write_text("skip me\n")
    (src / "requirements.txt").write_text("# nothing to install\n")
    (src / "model-config.yaml").write_text("batchSize: 1\nmaxBatchDelay: 50\n")
    return src


def flags(src: Path, export: Path, fmt: str, name: str = "tinynet") -> list[str]:
    return [
        "--model-name",
        name,
        "--version",
        "2.0",
        "--handler",
        str(src / "handler.py"),
        "--model-file",
        str(src / "model.py"),
        "--serialized-file",
        str(src / "weights.pt"),
        "--extra-files",
        f"{src / 'index_to_name.json'},{src / 'extras'}",
        "--requirements-file",
        str(src / "requirements.txt"),
        "--config-file",
        str(src / "model-config.yaml"),
        "--export-path",
        str(export),
        "--archive-format",
        fmt,
    ]


def torch_model_archiver(args: list[str], tmp_path: Path) -> None:
    # 0.12 stages its inputs in $TMPDIR/{name}: give it a private one.
    staging = tmp_path / "archiver-tmp"
    staging.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(staging)}
    subprocess.run([str(ARCHIVER), *args], check=True, env=env, capture_output=True, timeout=120)


def trioserve_archive(args: list[str]) -> None:
    assert cli.main(["archive", *args]) == 0


def contents(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(manifest, sorted file paths relative to the model root) of an archive in any format."""
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        data = (path / "MAR-INF" / "MANIFEST.json").read_bytes()
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            top = {m.name.split("/", 1)[0] for m in members}
            assert top == {"tinynet"}  # everything under {name}/
            names = sorted(m.name.split("/", 1)[1] for m in members)
            extracted = tar.extractfile("tinynet/MAR-INF/MANIFEST.json")
            assert extracted is not None
            data = extracted.read()
    else:
        with zipfile.ZipFile(path) as zf:
            names = sorted(zf.namelist())
            data = zf.read("MAR-INF/MANIFEST.json")
    return json.loads(data), names


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("createdOn", "archiverVersion")}


@pytest.mark.parametrize("fmt", FORMATS)
def test_trioserve_archive_writes_what_torch_model_archiver_writes(
    sources: Path, tmp_path: Path, fmt: str
) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    torch_model_archiver(flags(sources, theirs, fmt), tmp_path)
    trioserve_archive(flags(sources, ours, fmt))
    their_manifest, their_files = contents(theirs / f"tinynet{SUFFIX[fmt]}")
    our_manifest, our_files = contents(ours / f"tinynet{SUFFIX[fmt]}")
    assert comparable(our_manifest) == comparable(their_manifest)
    assert list(our_manifest) == list(their_manifest)  # same key order
    assert list(our_manifest["model"]) == list(their_manifest["model"])
    assert our_files == their_files
    assert "nested/table.csv" in our_files
    assert "notes.txt" in our_files


@pytest.mark.parametrize("fmt", ["default", "zip-store"])
def test_zip_formats_deflate_or_store_like_torch_model_archiver(
    sources: Path, tmp_path: Path, fmt: str
) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    torch_model_archiver(flags(sources, theirs, fmt), tmp_path)
    trioserve_archive(flags(sources, ours, fmt))

    def methods(path: Path) -> dict[str, int]:
        with zipfile.ZipFile(path) as zf:
            return {info.filename: info.compress_type for info in zf.infolist()}

    assert methods(ours / "tinynet.mar") == methods(theirs / "tinynet.mar")


async def serve_and_predict(server: Server, url: str) -> httpx.Response:
    response = await server.management.post(
        "/models", params={"url": url, "initial_workers": "1", "synchronous": "true"}
    )
    assert response.status_code == 200, response.text
    return await server.inference.post(
        "/predictions/tinynet",
        content=json_bytes(VALUES),
        headers={"content-type": "application/json"},
    )


def expected() -> dict[str, float]:
    return dict(zip(["low", "mid", "high"], expected_probs(VALUES), strict=True))


@pytest.mark.parametrize("fmt", ["default", "tgz", "no-archive"])
async def test_torch_model_archiver_archives_serve_in_trioserve(
    server: Server, model_store: Path, sources: Path, tmp_path: Path, fmt: str
) -> None:
    torch_model_archiver(flags(sources, model_store, fmt), tmp_path)
    response = await serve_and_predict(server, url_of(model_store, fmt))
    assert response.status_code == 201, response.text  # the ts handler's own status
    assert response.json() == pytest.approx(expected(), rel=1e-4)
    described = await server.management.get("/models/tinynet")
    assert described.json()[0]["modelVersion"] == "2.0"
    assert described.json()[0]["maxBatchDelay"] == 50  # its model-config.yaml was read


def url_of(model_store: Path, fmt: str) -> str:
    return f"tinynet{SUFFIX[fmt]}" if fmt != "no-archive" else str(model_store / "tinynet")


@pytest.mark.parametrize("fmt", FORMATS)
async def test_trioserve_archives_serve_in_trioserve(
    server: Server, model_store: Path, sources: Path, fmt: str
) -> None:
    trioserve_archive(flags(sources, model_store, fmt))
    response = await serve_and_predict(server, url_of(model_store, fmt))
    assert response.status_code == 201, response.text
    assert response.json() == pytest.approx(expected(), rel=1e-4)


async def test_default_handler_archive_names_the_handler_and_ships_no_handler_file(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    torch.manual_seed(0)
    (src / "weights.pt").write_bytes(state_bytes(TinyNet()))
    (src / "model.py").write_text(textwrap.dedent(EAGER_MODEL))
    common = [
        "--model-name",
        "tinynet",
        "-v",
        "1.0",
        "--handler",
        "base_handler",
        "--model-file",
        str(src / "model.py"),
        "--serialized-file",
        str(src / "weights.pt"),
    ]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    torch_model_archiver([*common, "--export-path", str(theirs)], tmp_path)
    trioserve_archive([*common, "--export-path", str(model_store)])
    their_manifest, their_files = contents(theirs / "tinynet.mar")
    our_manifest, our_files = contents(model_store / "tinynet.mar")
    assert comparable(our_manifest) == comparable(their_manifest)
    assert our_files == their_files == ["MAR-INF/MANIFEST.json", "model.py", "weights.pt"]
    response = await serve_and_predict(server, "tinynet.mar")
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(expected_probs(VALUES), rel=1e-4)


def test_archive_command_runs_as_a_program(sources: Path, tmp_path: Path) -> None:
    export = tmp_path / "cli"
    export.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "trioserve", "archive", *flags(sources, export, "default")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (export / "tinynet.mar").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "trioserve", "archive", *flags(sources, export, "default")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
