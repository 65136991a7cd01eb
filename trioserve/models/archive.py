"""Open a model archive: a ``.mar`` zip, a gzip tar, or a directory (contract §6).

File system only: no sockets, no trio. Archives come from users and from URLs, so extraction
treats every entry as hostile: it checks every header before writing a byte, writes only regular
files and directories under a fresh private directory, and counts the bytes it actually writes
instead of trusting the sizes the headers declare. The metadata files it finds are read here
(bounded by ``MAX_METADATA_BYTES``) and parsed by :mod:`trioserve.models.manifest`.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trioserve.errors import InvalidModel, ModelNotFound
from trioserve.models.manifest import Manifest, ModelConfig

# A model archive holds a handler, weights and a few support files; tens of thousands of entries
# is an attempt to exhaust inodes (or the memory the entry list takes), not a model.
MAX_MEMBERS = 10_000
# Bounds the disk one registration can fill (zip and gzip bombs). Bigger models are served from a
# directory, which is used in place and never copied.
MAX_UNPACKED_BYTES = 8 * 1024**3
# MANIFEST.json and model-config.yaml are parsed whole in memory; real ones are a few KiB.
MAX_METADATA_BYTES = 4 * 1024**2
MANIFEST_PATH = "MAR-INF/MANIFEST.json"

_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"[A-Za-z]:")
# What a damaged zip or gzip tar raises while it is read (an encrypted zip entry or an unknown
# compression method: RuntimeError).
_READ_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    ValueError,
)

_TAR_REFUSED = {tarfile.SYMTYPE: "is a symbolic link", tarfile.LNKTYPE: "is a hard link"}


@dataclass(frozen=True)
class ModelArchive:
    """An opened archive. ``extracted`` says whether ``model_dir`` is ours to delete: a
    directory source is used in place and must outlive the registration."""

    source: Path
    model_dir: Path
    manifest: Manifest
    model_config: ModelConfig
    extracted: bool


def open_archive(source: Path, extract_root: Path) -> ModelArchive:
    """Open ``source`` as contract §6.1 says: ``*.mar`` is a zip, any other file a gzip tar
    whose entries lose their first path component (unless ``MAR-INF`` is at its root), and a
    directory is used in place (or its one inner directory, as ``no-archive`` writes it).

    Raises:
        ModelNotFound: ``source`` does not exist.
        InvalidModel: the archive is corrupt, hostile or over a limit (the message names the
            entry), or its manifest or model-config is invalid.

    Resource handling: a file is extracted into a new ``extract_root/<32 hex>/`` (mode 0700),
    removed again on any failure; on success the caller owns it and frees it with
    :func:`remove_extraction`.
    """
    if not source.exists():
        raise ModelNotFound(f"Model not found at: {source}")
    if source.is_dir():
        return _load(source, _model_root(source), extracted=False)
    if not source.is_file():
        raise _corrupt(source, "not a regular file")
    extract_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = extract_root / secrets.token_hex(16)
    dest.mkdir(mode=0o700)
    try:
        dest.chmod(0o700)  # mkdir's mode passes through the umask
        if source.name.endswith(".mar"):
            extract_zip(source, dest)
        else:
            _extract_tar(source, dest)
        return _load(source, dest, extracted=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def remove_extraction(archive: ModelArchive) -> None:
    """Delete ``archive.model_dir`` if it is our extraction; a directory used in place is left
    alone. Idempotent and best effort: it runs on cleanup paths that must not fail."""
    if archive.extracted:
        shutil.rmtree(archive.model_dir, ignore_errors=True)


def _model_root(directory: Path) -> Path:
    # no-archive exports nest the model one level down ({export}/{name}/). A lone MAR-INF is the
    # model's own metadata (a manifest naming a built-in handler), not such a nesting.
    entries = list(itertools.islice(directory.iterdir(), 2))
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name != "MAR-INF":
        return entries[0]
    return directory


def _load(source: Path, model_dir: Path, *, extracted: bool) -> ModelArchive:
    # Absolute: the worker runs with the model directory as its working directory, where a
    # path relative to ours (a model store given as "examples/models") would not resolve.
    model_dir = model_dir.absolute()
    manifest_file = model_dir / MANIFEST_PATH
    manifest = Manifest.empty()
    if manifest_file.is_file():
        manifest = Manifest.from_json(read_small(manifest_file))
    config = ModelConfig.empty()
    if manifest.config_file is not None:
        path = model_dir / manifest.config_file
        # The manifest is as untrusted as the rest of the archive.
        if not path.resolve().is_relative_to(model_dir.resolve()):
            raise InvalidModel(
                f"configFile {manifest.config_file!r} is outside the model directory."
            )
        if path.is_file():
            config = ModelConfig.from_yaml(read_small(path))
    return ModelArchive(source, model_dir, manifest, config, extracted)


def read_small(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise InvalidModel(f"{path.name} is larger than {MAX_METADATA_BYTES} bytes.")
    return data


def _corrupt(source: Path, why: object) -> InvalidModel:
    return InvalidModel(f"{source.name} is not a valid model archive: {why}")


def _refused(source: Path, name: str, why: str) -> InvalidModel:
    return InvalidModel(f"Refusing model archive {source.name}: entry {name!r} {why}.")


def _entry_parts(source: Path, name: str) -> tuple[str, ...]:
    """The path components of entry ``name``, refusing any that could land outside the
    extraction. Backslashes count as separators, as Windows-made zips use them."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise _refused(source, name, "has an absolute path")
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if ".." in parts:
        raise _refused(source, name, "has a '..' component")
    return parts


def _check_limits(source: Path, name: str, count: int, size: int) -> None:
    if count > MAX_MEMBERS:
        raise _refused(source, name, f"is past the limit of {MAX_MEMBERS} entries")
    if size > MAX_UNPACKED_BYTES:
        raise _refused(source, name, f"takes the unpacked size over {MAX_UNPACKED_BYTES} bytes")


def _make_dirs(path: Path, source: Path, name: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _refused(source, name, "collides with another entry") from None


def _write_file(
    read: Callable[[int], bytes], target: Path, source: Path, name: str, used: int
) -> int:
    """Stream one entry to ``target``; return ``used`` plus the bytes written. Never writes past
    the size limit, whatever the entry's header declared."""
    _make_dirs(target.parent, source, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise _refused(source, name, "collides with another entry") from None
    with os.fdopen(fd, "wb") as out:
        while True:
            try:
                chunk = read(min(_CHUNK, MAX_UNPACKED_BYTES - used + 1))
            except _READ_ERRORS as exc:
                raise _corrupt(source, f"entry {name!r}: {exc}") from exc
            if not chunk:
                return used
            used += len(chunk)
            _check_limits(source, name, 0, used)
            out.write(chunk)


# One entry to write: its name as archived (for messages), where it lands, and how to read it.
_Plan = list[tuple[str, tuple[str, ...], bool, Callable[[], IO[bytes] | None]]]


def _write_all(source: Path, dest: Path, plan: _Plan) -> None:
    used = 0
    for name, parts, is_dir, open_member in plan:
        if not parts:
            continue
        target = dest.joinpath(*parts)
        if is_dir:
            _make_dirs(target, source, name)
            continue
        try:
            member = open_member()
        except _READ_ERRORS as exc:
            raise _corrupt(source, f"entry {name!r}: {exc}") from exc
        if member is None:  # only tar entries that are not files have no data; none get here
            raise _corrupt(source, f"entry {name!r} has no data")
        with member:
            used = _write_file(member.read, target, source, name, used)


def extract_zip(source: Path, dest: Path) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except _READ_ERRORS as exc:
        raise _corrupt(source, exc) from exc
    with archive:
        plan: _Plan = []
        declared = 0
        # Every header is checked before anything is written.
        for info in archive.infolist():
            name = info.filename
            parts = _entry_parts(source, name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise _refused(source, name, "is a symbolic link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refused(source, name, "is not a regular file or directory")
            declared += info.file_size
            _check_limits(source, name, len(plan) + 1, declared)
            # As ZipInfo.is_dir, which fails on an empty name (found by fuzz/fuzz_archive.py).
            is_dir = name.endswith("/") or kind == stat.S_IFDIR
            plan.append((name, parts, is_dir, functools.partial(archive.open, info)))
        _write_all(source, dest, plan)


def _extract_tar(source: Path, dest: Path) -> None:
    try:
        archive = tarfile.open(source, "r:gz")
    except _READ_ERRORS as exc:
        raise _corrupt(source, exc) from exc
    with archive:
        checked: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
        declared = 0
        try:
            # Iteration reads one header at a time, so the count limit stops a flood of
            # entries before they are all in memory. Nothing is written until all pass.
            for info in archive:
                parts = _entry_parts(source, info.name)
                if not (info.isreg() or info.isdir()):
                    why = _TAR_REFUSED.get(info.type, "is a device or other special file")
                    raise _refused(source, info.name, why)
                declared += info.size if info.isreg() else 0
                _check_limits(source, info.name, len(checked) + 1, declared)
                checked.append((info, parts))
        except _READ_ERRORS as exc:
            raise _corrupt(source, exc) from exc
        # The archiver's tgz puts everything under {name}/; a tar made at the model root, with
        # MAR-INF at its top, is taken as it is.
        skip = 0 if any(parts[:1] == ("MAR-INF",) for _, parts in checked) else 1
        plan: _Plan = [
            (info.name, parts[skip:], info.isdir(), functools.partial(archive.extractfile, info))
            for info, parts in checked
        ]
        _write_all(source, dest, plan)
