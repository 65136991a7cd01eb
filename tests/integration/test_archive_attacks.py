"""Hostile archives through the real register endpoint: each is refused with the contract's
InvalidModelException, nothing lands outside the model directory, and the extraction is gone.

The archives are built by the unit tests' builders (tests/unit/test_archive.py) from a list of
entries, as an attacker would write them.
"""

from __future__ import annotations

import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.unit.test_archive import Entry, build_tgz, build_zip
from trioserve.models import archive as archive_mod

MANIFEST = b'{"model": {"modelName": "m", "modelVersion": "1.0", "handler": "h.py"}}'
# What a slip would write, named so that no other file could be mistaken for it.
EVIL = f"evil-{uuid.uuid4().hex}"
MODEL = (Entry("MAR-INF/MANIFEST.json", MANIFEST), Entry("h.py", b"def handle(d, c): return d\n"))


@dataclass(frozen=True)
class Attack:
    id: str
    name: str  # the archive's file name in the model store
    entries: tuple[Entry, ...]
    why: str  # what the refusal says about the bad entry


def attacks(outside: Path) -> list[Attack]:
    """``outside`` is where a successful attack would write (never inside the extraction)."""
    return [
        Attack(
            "zip-slip", "slip.mar", (*MODEL, Entry(f"../../{EVIL}", b"x")), "has a '..' component"
        ),
        Attack(
            "zip-absolute",
            "abs.mar",
            (*MODEL, Entry(str(outside / EVIL), b"x")),
            "has an absolute path",
        ),
        Attack(
            "zip-symlink",
            "link.mar",
            (*MODEL, Entry("weights", kind="symlink", target=str(outside))),
            "is a symbolic link",
        ),
        Attack(
            "tar-slip",
            "slip.tar.gz",
            (*(Entry("m/" + e.name, e.data) for e in MODEL), Entry(f"m/../../{EVIL}", b"x")),
            "has a '..' component",
        ),
        Attack(
            "tar-symlink",
            "link.tar.gz",
            (Entry("m/h.py", b""), Entry("m/weights", kind="symlink", target=str(outside))),
            "is a symbolic link",
        ),
        Attack(
            "tar-device",
            "dev.tar.gz",
            (Entry("m/h.py", b""), Entry("m/null", kind="chardev")),
            "is a device or other special file",
        ),
        Attack(
            "tar-fifo",
            "fifo.tar.gz",
            (Entry("m/h.py", b""), Entry("m/pipe", kind="fifo")),
            "is a device or other special file",
        ),
    ]


def build(store: Path, attack: Attack) -> Path:
    path = store / attack.name
    if attack.name.endswith(".mar"):
        return build_zip(path, attack.entries, zipfile.ZIP_DEFLATED)
    return build_tgz(path, attack.entries)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def no_escape(extract_root: Path) -> bool:
    """Nothing where a slip out of extract_root/<hex>/ lands, and the extraction removed."""
    escaped = (extract_root / EVIL).exists() or (extract_root.parent / EVIL).exists()
    return not escaped and list(extract_root.iterdir()) == []


async def assert_refused_and_nothing_written(
    server: Server, store: Path, tmp_path: Path, name: str, message: str
) -> None:
    extract_root: Path = server.state.extract_root
    before = tree(tmp_path)
    response = await server.management.post("/models", params={"url": name})
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 400, "type": "InvalidModelException", "message": message}
    assert response.headers["connection"] == "close"
    assert tree(tmp_path) == before  # the store, the would-be targets: untouched
    assert no_escape(extract_root)
    assert (await server.management.get("/models")).json() == {"models": []}


@pytest.mark.parametrize("case", range(7), ids=[a.id for a in attacks(Path("/x"))])
async def test_hostile_archive_is_refused_through_register(
    server: Server, model_store: Path, tmp_path: Path, case: int
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    attack = attacks(outside)[case]
    build(model_store, attack)
    bad = attack.entries[-1]  # each attack's bad entry comes last
    message = f"Refusing model archive {attack.name}: entry {bad.name!r} {attack.why}."
    await assert_refused_and_nothing_written(server, model_store, tmp_path, attack.name, message)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mar", ".tar.gz"])
async def test_zip_bomb_is_refused_through_register(
    server: Server,
    model_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    """A few KiB that unpack to 8 MiB, against a 1 MiB limit (the real one is 8 GiB)."""
    monkeypatch.setattr(archive_mod, "MAX_UNPACKED_BYTES", 1 << 20)
    prefix = "" if suffix == ".mar" else "m/"
    bomb = Entry(prefix + "weights.bin", bytes(8 << 20))
    entries = (*(Entry(prefix + e.name, e.data) for e in MODEL), bomb)
    name = f"bomb{suffix}"
    path = model_store / name
    if suffix == ".mar":
        build_zip(path, entries, zipfile.ZIP_DEFLATED)
    else:
        build_tgz(path, entries)
    assert path.stat().st_size < 64 * 1024
    message = (
        f"Refusing model archive {name}: entry {bomb.name!r} takes the unpacked size over"
        f" {1 << 20} bytes."
    )
    await assert_refused_and_nothing_written(server, model_store, tmp_path, name, message)
