"""models/archive.py: layouts, manifest and model-config parsing, and hostile archives.

Archives are built here with zipfile/tarfile from one description (a tuple of ``Entry``), so a
case names exactly the entries a real archiver, or an attacker, would write.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from trioserve.errors import InvalidModel, ModelNotFound
from trioserve.models import archive as archive_mod
from trioserve.models.archive import (
    MANIFEST_PATH,
    ModelArchive,
    open_archive,
    remove_extraction,
)
from trioserve.models.manifest import Manifest, ModelConfig

MANIFEST = json.dumps(
    {
        "createdOn": "24/09/2024 10:00:00",
        "runtime": "python",
        "model": {
            "modelName": "squeeze",
            "serializedFile": "model.pt",
            "handler": "handler.py:handle",
            "modelVersion": "2.0",
        },
        "archiverVersion": "0.12.0",
    }
).encode()


@dataclass(frozen=True)
class Entry:
    """One archive entry. ``kind``: file, dir, symlink, hardlink, chardev, fifo."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def build_zip(path: Path, entries: tuple[Entry, ...], compression: int) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression) as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are a test case
        for e in entries:
            info = zipfile.ZipInfo(e.name)
            info.compress_type = compression
            if e.kind == "dir":
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
            elif e.kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, e.target)
                continue
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, e.data)
    return path


def build_tgz(path: Path, entries: tuple[Entry, ...]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TAR_TYPES[e.kind]
            info.linkname = e.target
            info.size = len(e.data) if e.kind == "file" else 0
            tf.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
    return path


def build_dir(path: Path, entries: tuple[Entry, ...]) -> Path:
    path.mkdir()
    for e in entries:
        target = path / e.name
        if e.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(e.data)
    return path


def build(tmp_path: Path, fmt: str, entries: tuple[Entry, ...]) -> Path:
    """Write ``entries`` as ``fmt``: mar (deflated), mar-stored, a tar suffix, or dir."""
    if fmt == "mar":
        return build_zip(tmp_path / "m.mar", entries, zipfile.ZIP_DEFLATED)
    if fmt == "mar-stored":
        return build_zip(tmp_path / "m.mar", entries, zipfile.ZIP_STORED)
    if fmt == "dir":
        return build_dir(tmp_path / "src", entries)
    return build_tgz(tmp_path / f"m{fmt}", entries)


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


MODEL = {MANIFEST_PATH: MANIFEST, "model.pt": b"weights", "sub/util.py": b"x = 1\n"}


def entries(
    files: dict[str, bytes], prefix: str = "", dirs: tuple[str, ...] = ()
) -> tuple[Entry, ...]:
    return tuple(Entry(prefix + d, kind="dir") for d in dirs) + tuple(
        Entry(prefix + name, data) for name, data in files.items()
    )


@dataclass(frozen=True)
class Layout:
    id: str
    fmt: str
    entries: tuple[Entry, ...]
    expected: dict[str, bytes]  # files under model_dir
    inner: str = ""  # for directories: the model_dir below the source
    model_name: str | None = "squeeze"


LAYOUTS = [
    Layout("mar-deflated", "mar", entries(MODEL, dirs=("MAR-INF/",)), MODEL),
    Layout("mar-stored", "mar-stored", entries(MODEL), MODEL),
    Layout("tgz-top-dir-stripped", ".tar.gz", entries(MODEL, "squeeze/", ("",)), MODEL),
    Layout("tgz-dot-slash-top-dir", ".tgz", entries(MODEL, "./squeeze/", ("MAR-INF",)), MODEL),
    Layout("model-suffix-is-tgz", ".model", entries(MODEL, "any-name/"), MODEL),
    Layout("tar-manifest-at-root", ".tar.gz", entries(MODEL, dirs=("sub",)), MODEL),
    Layout("dir-in-place", "dir", entries(MODEL), MODEL),
    Layout("dir-single-inner-dir", "dir", entries(MODEL, "squeeze/"), MODEL, inner="squeeze"),
    Layout(
        "dir-only-mar-inf-not-descended",
        "dir",
        entries({MANIFEST_PATH: MANIFEST}),
        {MANIFEST_PATH: MANIFEST},
    ),
    Layout(
        "mar-no-manifest", "mar", entries({"model.pt": b"w"}), {"model.pt": b"w"}, model_name=None
    ),
    Layout(
        "tgz-no-manifest",
        ".tgz",
        entries({"model.pt": b"w"}, "m/"),
        {"model.pt": b"w"},
        model_name=None,
    ),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: c.id)
def test_layout_opens_with_expected_files(tmp_path: Path, layout: Layout) -> None:
    source = build(tmp_path, layout.fmt, layout.entries)
    root = tmp_path / "extract"
    archive = open_archive(source, root)
    assert archive.source == source
    assert files_under(archive.model_dir) == layout.expected
    assert archive.manifest.model_name == layout.model_name
    if layout.model_name is None:
        assert archive.manifest == Manifest.empty()
    assert archive.model_config == ModelConfig.empty()
    if layout.fmt == "dir":
        assert not archive.extracted
        assert archive.model_dir == (source / layout.inner if layout.inner else source)
        assert not root.exists()
    else:
        assert archive.extracted
        assert archive.model_dir.parent == root
        assert len(archive.model_dir.name) == 32
        int(archive.model_dir.name, 16)
        assert stat.S_IMODE(archive.model_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: c.id)
def test_remove_extraction_deletes_only_our_extraction(tmp_path: Path, layout: Layout) -> None:
    source = build(tmp_path, layout.fmt, layout.entries)
    archive = open_archive(source, tmp_path / "extract")
    remove_extraction(archive)
    remove_extraction(archive)  # idempotent
    assert archive.model_dir.exists() is not archive.extracted
    assert source.exists()


# --- hostile and broken archives -----------------------------------------------------------

OK_FILE = Entry("m/model.pt", b"weights")


@dataclass(frozen=True)
class Hostile:
    id: str
    fmt: str
    entries: tuple[Entry, ...]
    message: str


HOSTILE = [
    Hostile(
        "zip-slip",
        "mar",
        (Entry("model.pt", b"w"), Entry("../evil", b"x")),
        "Refusing model archive m.mar: entry '../evil' has a '..' component.",
    ),
    Hostile(
        "zip-slip-nested",
        "mar",
        (Entry("a/../../evil", b"x"),),
        "Refusing model archive m.mar: entry 'a/../../evil' has a '..' component.",
    ),
    Hostile(
        "zip-slip-backslash",
        "mar",
        (Entry("..\\evil", b"x"),),
        "Refusing model archive m.mar: entry '..\\\\evil' has a '..' component.",
    ),
    Hostile(
        "zip-absolute",
        "mar",
        (Entry("/tmp/evil", b"x"),),
        "Refusing model archive m.mar: entry '/tmp/evil' has an absolute path.",
    ),
    Hostile(
        "zip-drive-letter",
        "mar",
        (Entry("C:/evil", b"x"),),
        "Refusing model archive m.mar: entry 'C:/evil' has an absolute path.",
    ),
    Hostile(
        "zip-symlink",
        "mar",
        (Entry("model.pt", b"w"), Entry("link", kind="symlink", target="/etc/passwd")),
        "Refusing model archive m.mar: entry 'link' is a symbolic link.",
    ),
    Hostile(
        "tar-slip",
        ".tar.gz",
        (OK_FILE, Entry("m/../../evil", b"x")),
        "Refusing model archive m.tar.gz: entry 'm/../../evil' has a '..' component.",
    ),
    Hostile(
        "tar-absolute",
        ".tar.gz",
        (Entry("/m/evil", b"x"),),
        "Refusing model archive m.tar.gz: entry '/m/evil' has an absolute path.",
    ),
    Hostile(
        "tar-symlink",
        ".tar.gz",
        (OK_FILE, Entry("m/link", kind="symlink", target="/etc/passwd")),
        "Refusing model archive m.tar.gz: entry 'm/link' is a symbolic link.",
    ),
    Hostile(
        "tar-hardlink",
        ".tar.gz",
        (OK_FILE, Entry("m/hard", kind="hardlink", target="m/model.pt")),
        "Refusing model archive m.tar.gz: entry 'm/hard' is a hard link.",
    ),
    Hostile(
        "tar-chardev",
        ".tar.gz",
        (Entry("m/dev", kind="chardev"),),
        "Refusing model archive m.tar.gz: entry 'm/dev' is a device or other special file.",
    ),
    Hostile(
        "tar-fifo",
        ".tar.gz",
        (Entry("m/fifo", kind="fifo"),),
        "Refusing model archive m.tar.gz: entry 'm/fifo' is a device or other special file.",
    ),
    Hostile(
        "zip-file-then-dir-collide",
        "mar",
        (Entry("model.pt", b"w"), Entry("a", b"file"), Entry("a/b", b"x")),
        "Refusing model archive m.mar: entry 'a/b' collides with another entry.",
    ),
    Hostile(
        "zip-duplicate-entry",
        "mar",
        (Entry("model.pt", b"w"), Entry("model.pt", b"again")),
        "Refusing model archive m.mar: entry 'model.pt' collides with another entry.",
    ),
    Hostile(
        "tar-duplicate-entry",
        ".tar.gz",
        (OK_FILE, Entry("m/model.pt", b"again")),
        "Refusing model archive m.tar.gz: entry 'm/model.pt' collides with another entry.",
    ),
    Hostile(
        "manifest-invalid-after-extraction",
        "mar",
        (Entry("model.pt", b"w"), Entry(MANIFEST_PATH, b'{"runtime": "python"}')),
        "Missing Model entry in manifest file.",
    ),
    Hostile(
        "config-file-outside-model-dir",
        "mar",
        (Entry(MANIFEST_PATH, b'{"model": {"modelVersion": "1", "configFile": "../c.yaml"}}'),),
        "configFile '../c.yaml' is outside the model directory.",
    ),
]


def assert_refused(source: Path, root: Path, message: str) -> None:
    with pytest.raises(InvalidModel) as info:
        open_archive(source, root)
    assert info.value.message == message
    assert info.value.type_name == "InvalidModelException"
    assert info.value.code == 400
    # The extraction root was created, but nothing is left in it.
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.id)
def test_hostile_archive_is_refused_and_cleaned_up(tmp_path: Path, case: Hostile) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = build(work, case.fmt, case.entries)
    assert_refused(source, tmp_path / "extract", case.message)
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract", "work"]


@pytest.mark.parametrize("fmt", ["mar", ".tar.gz"])
def test_member_count_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setattr(archive_mod, "MAX_MEMBERS", 3)
    three = tuple(Entry(f"m/f{i}", b"x") for i in range(3))
    assert open_archive(build(tmp_path, fmt, three), tmp_path / "ok").extracted
    source = build(tmp_path, fmt, (*three, Entry("m/f3", b"x")))
    message = f"Refusing model archive {source.name}: entry 'm/f3' is past the limit of 3 entries."
    assert_refused(source, tmp_path / "extract", message)


@pytest.mark.parametrize("fmt", ["mar", "mar-stored", ".tar.gz"])
@pytest.mark.parametrize(
    ("sizes", "refused"), [((100,), False), ((101,), True), ((60, 40), False), ((60, 41), True)]
)
def test_unpacked_size_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    sizes: tuple[int, ...],
    refused: bool,
) -> None:
    monkeypatch.setattr(archive_mod, "MAX_UNPACKED_BYTES", 100)
    members = tuple(Entry(f"m/f{i}", b"z" * n) for i, n in enumerate(sizes))
    source = build(tmp_path, fmt, members)
    if not refused:
        assert open_archive(source, tmp_path / "extract").extracted
        return
    last = f"m/f{len(sizes) - 1}"
    message = (
        f"Refusing model archive {source.name}: entry {last!r} takes the unpacked size over"
        " 100 bytes."
    )
    assert_refused(source, tmp_path / "extract", message)


def test_size_limit_counts_bytes_written_not_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip whose headers understate the sizes still stops at the limit while streaming."""
    source = build(tmp_path, "mar", (Entry("a", b"z" * 80), Entry("b", b"z" * 80)))
    real_sizes: dict[str, int] = {}
    real_infolist = zipfile.ZipFile.infolist
    real_open = zipfile.ZipFile.open

    def lying_infolist(self: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        infos = real_infolist(self)
        for info in infos:
            real_sizes[info.filename], info.file_size = info.file_size, 1
        return infos

    def honest_open(self: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
        info.file_size = real_sizes[info.filename]
        return real_open(self, info)

    monkeypatch.setattr(archive_mod, "MAX_UNPACKED_BYTES", 100)
    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying_infolist)
    monkeypatch.setattr(zipfile.ZipFile, "open", honest_open)
    message = "Refusing model archive m.mar: entry 'b' takes the unpacked size over 100 bytes."
    assert_refused(source, tmp_path / "extract", message)


def test_corrupt_entry_midway_leaves_no_partial_extraction(tmp_path: Path) -> None:
    source = build(tmp_path, "mar-stored", (Entry("a", b"A" * 1000), Entry("b", b"B" * 1000)))
    raw = bytearray(source.read_bytes())
    raw[raw.index(b"B" * 1000) + 500] ^= 0xFF  # CRC mismatch, found only when "b" is read
    source.write_bytes(bytes(raw))
    with pytest.raises(InvalidModel, match=r"^m\.mar is not a valid model archive: entry 'b'"):
        open_archive(source, tmp_path / "extract")
    assert list((tmp_path / "extract").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("m.mar", b"not a zip at all"),
        ("m.mar", b""),
        ("m.tar.gz", b"not gzip"),
        ("m.tgz", b"\x1f\x8b\x08\x00garbage"),
        ("m.tar.gz", b"truncated"),  # replaced below by half a real tgz
    ],
)
def test_corrupt_archive_is_invalid_model(tmp_path: Path, name: str, content: bytes) -> None:
    source = tmp_path / name
    if content == b"truncated":
        whole = build(tmp_path, ".tgz", (Entry("m/big", bytes(range(256)) * 4000),)).read_bytes()
        content = whole[: len(whole) // 2]
    source.write_bytes(content)
    with pytest.raises(InvalidModel, match=rf"^{name} is not a valid model archive: ") as info:
        open_archive(source, tmp_path / "extract")
    assert info.value.type_name == "InvalidModelException"
    assert list((tmp_path / "extract").iterdir()) == []


def test_missing_source_is_model_not_found(tmp_path: Path) -> None:
    source = tmp_path / "nope.mar"
    with pytest.raises(ModelNotFound) as info:
        open_archive(source, tmp_path / "extract")
    assert info.value.message == f"Model not found at: {source}"
    assert info.value.code == 404


# --- MANIFEST.json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "Failed to parse signature.json."),
        (b"\xff\xfe\x00garbage", "Failed to parse signature.json."),
        (b"[]", "Failed to parse signature.json."),
        (b"[" * 100_000, "Failed to parse signature.json."),
        (b'{"model": "squeeze"}', "Failed to parse signature.json."),
        (b'{"model": {"modelVersion": "1", "handler": {}}}', "Failed to parse signature.json."),
        (b'{"runtime": "python"}', "Missing Model entry in manifest file."),
        (b'{"model": null}', "Missing Model entry in manifest file."),
        (b'{"model": {"modelName": "m"}}', "Model version is not defined."),
        (b'{"model": {"modelName": "m", "modelVersion": ""}}', "Model version is not defined."),
        (b'{"model": {"modelVersion": null}}', "Model version is not defined."),
        (
            b'{"runtime": "java", "model": {"modelVersion": "1"}}',
            "Runtime is not defined or invalid.",
        ),
        (
            b'{"runtime": null, "model": {"modelVersion": "1"}}',
            "Runtime is not defined or invalid.",
        ),
        (
            b'{"runtime": ["x"], "model": {"modelVersion": "1"}}',
            "Runtime is not defined or invalid.",
        ),
        (
            b'{"runtime": "Python", "model": {"modelVersion": "1"}}',
            "Runtime is not defined or invalid.",
        ),
    ],
)
def test_manifest_validation_messages(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModel) as info:
        Manifest.from_json(data)
    assert info.value.message == message


def test_manifest_fields_and_raw() -> None:
    doc = {
        "createdOn": "24/09/2024 10:00:00",
        "runtime": "LSP",
        "description": "top-level",
        "model": {
            "modelName": "squeeze",
            "serializedFile": "model.pt",
            "handler": "handler.py:handle",
            "modelFile": "model.py",
            "modelVersion": "2.0",
            "extensions": "ext.so",
            "requirementsFile": "requirements.txt",
            "configFile": "model-config.yaml",
            "envelope": "kserve",
            "custom": [1, 2],
        },
        "archiverVersion": "0.12.0",
    }
    m = Manifest.from_json(json.dumps(doc).encode())
    assert m == Manifest(
        model_name="squeeze",
        model_version="2.0",
        handler="handler.py:handle",
        serialized_file="model.pt",
        model_file="model.py",
        runtime="LSP",
        config_file="model-config.yaml",
        requirements_file="requirements.txt",
        extensions="ext.so",
        envelope="kserve",
        description="top-level",
        raw=doc,
    )


@pytest.mark.parametrize(
    ("model", "name", "version", "description"),
    [
        ({"modelVersion": "1.0"}, None, "1.0", None),  # name comes from the register param
        ({"modelName": "", "modelVersion": 3}, None, "3", None),
        ({"version": 1.5, "description": "inner"}, None, "1.5", "inner"),
        ({"modelName": "m", "modelVersion": "2", "version": "9"}, "m", "2", None),
    ],
)
def test_manifest_lenient_fields(
    model: dict[str, object], name: str | None, version: str, description: str | None
) -> None:
    m = Manifest.from_json(json.dumps({"model": model}).encode())
    assert (m.model_name, m.model_version, m.description, m.runtime) == (
        name,
        version,
        description,
        "python",
    )


def test_manifest_empty() -> None:
    m = Manifest.empty()
    assert (m.model_name, m.model_version, m.handler, m.runtime, dict(m.raw)) == (
        None,
        "1.0",
        None,
        "python",
        {},
    )
    assert hash(m) == hash(Manifest.empty())


# --- model-config.yaml ---------------------------------------------------------------------

CONFIG_YAML = b"""\
minWorkers: 1
maxWorkers: 4
batchSize: 8
maxBatchDelay: 50
responseTimeout: 300
startupTimeout: 600
deviceType: gpu
deviceIds: [0, 2]
parallelType: tp
parallelLevel: 2
maxRetryTimeoutInSec: 60
clientTimeoutInMills: 5000
jobQueueSize: 10
useJobTicket: true
useVenv: true
sequenceBatching: true
continuousBatching: true
sequenceMaxIdleMSec: 100
sequenceTimeoutMSec: 200
maxSequenceJobQueueSize: 3
maxNumSequence: 4
asyncCommunication: true
handler:
  max_length: 50
  labels: [a, b]
"""


def test_model_config_typed_fields_and_raw() -> None:
    config = ModelConfig.from_yaml(CONFIG_YAML)
    assert config == ModelConfig(
        min_workers=1,
        max_workers=4,
        batch_size=8,
        max_batch_delay=50,
        response_timeout=300,
        startup_timeout=600,
        device_type="gpu",
        device_ids=(0, 2),
        parallel_type="tp",
        parallel_level=2,
        max_retry_timeout_sec=60,
        client_timeout_ms=5000,
        job_queue_size=10,
        use_job_ticket=True,
        use_venv=True,
        sequence_batching=True,
        continuous_batching=True,
        sequence_max_idle_ms=100,
        sequence_timeout_ms=200,
        max_sequence_job_queue_size=3,
        max_num_sequence=4,
        raw=config.raw,
    )
    assert config.raw["handler"] == {"max_length": 50, "labels": ["a", "b"]}
    assert config.raw["asyncCommunication"] is True
    assert config.raw["batchSize"] == 8


@pytest.mark.parametrize("data", [b"", b"# only a comment\n", b"batchSize:\n"])
def test_model_config_empty_and_null_keys_give_defaults(data: bytes) -> None:
    config = ModelConfig.from_yaml(data)
    assert config.batch_size is None
    assert (config.parallel_level, config.max_retry_timeout_sec, config.max_num_sequence) == (
        0,
        300,
        1,
    )
    assert ModelConfig.empty() == ModelConfig()


def test_model_config_torchrun_sets_parallel_level() -> None:
    data = b"torchrun:\n  nproc-per-node: 4\n"
    assert ModelConfig.from_yaml(data).parallel_level == 4
    assert ModelConfig.from_yaml(data + b"parallelLevel: 2\n").parallel_level == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"batchSize: eight\n", "Invalid model config: batchSize must be an integer, got 'eight'."),
        (b"minWorkers: true\n", "Invalid model config: minWorkers must be an integer, got True."),
        (
            b"maxBatchDelay: 1.5\n",
            "Invalid model config: maxBatchDelay must be an integer, got 1.5.",
        ),
        (b"useVenv: 1\n", "Invalid model config: useVenv must be true or false, got 1."),
        (b"deviceType: 0\n", "Invalid model config: deviceType must be a string, got 0."),
        (
            b"deviceIds: [0, x]\n",
            "Invalid model config: deviceIds must be a list of integers, got [0, 'x'].",
        ),
        (b"deviceIds: 0\n", "Invalid model config: deviceIds must be a list of integers, got 0."),
        (b"torchrun: 4\n", "Invalid model config: torchrun must be a mapping, got 4."),
        (
            b"torchrun: {nproc-per-node: x}\n",
            "Invalid model config: torchrun.nproc-per-node must be an integer, got 'x'.",
        ),
        (b"- a\n- b\n", "Invalid model config: the document must be a mapping, got 'list'."),
        (b"1: a\n", "Invalid model config: every key must be a string, got 1."),
        (b"a: [1\n", "Invalid model config: not valid YAML at line 2."),
        (b"\xff\xfe\xfd", "Invalid model config: not valid YAML."),
        (
            b"batchSize: '" + b"y" * 100 + b"'\n",
            "Invalid model config: batchSize must be an integer, got '" + "y" * 56 + "....",
        ),
    ],
)
def test_model_config_bad_values_name_the_key(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModel) as info:
        ModelConfig.from_yaml(data)
    assert info.value.message == message


@pytest.mark.parametrize("fmt", ["mar", ".tgz", "dir"])
def test_archive_reads_config_file_named_by_manifest(tmp_path: Path, fmt: str) -> None:
    manifest = json.dumps({"model": {"modelVersion": "1", "configFile": "model-config.yaml"}})
    files = {MANIFEST_PATH: manifest.encode(), "model-config.yaml": b"batchSize: 4\nfoo: bar\n"}
    prefix = "" if fmt == "mar" else "m/"  # a .mar keeps its layout; tgz and dir unwrap m/
    archive = open_archive(build(tmp_path, fmt, entries(files, prefix)), tmp_path / "extract")
    assert isinstance(archive, ModelArchive)
    assert archive.model_config.batch_size == 4
    assert archive.model_config.raw == {"batchSize": 4, "foo": "bar"}


def test_archive_config_file_named_but_absent_is_empty(tmp_path: Path) -> None:
    manifest = json.dumps({"model": {"modelVersion": "1", "configFile": "missing.yaml"}})
    source = build(tmp_path, "mar", (Entry(MANIFEST_PATH, manifest.encode()),))
    assert open_archive(source, tmp_path / "extract").model_config == ModelConfig.empty()


def test_bad_config_in_archive_is_cleaned_up(tmp_path: Path) -> None:
    manifest = json.dumps({"model": {"modelVersion": "1", "configFile": "c.yaml"}})
    members = (Entry(MANIFEST_PATH, manifest.encode()), Entry("c.yaml", b"batchSize: x\n"))
    source = build(tmp_path, "mar", members)
    message = "Invalid model config: batchSize must be an integer, got 'x'."
    assert_refused(source, tmp_path / "extract", message)
