"""``trioserve archive``: write model archives as torch-model-archiver 0.12 does (contract §6).

Same flags, same outputs (``{name}.mar`` zip, deflated or stored; ``{name}.tar.gz`` under a
``{name}/`` top directory; a ``{name}/`` directory), and the same ``MAR-INF/MANIFEST.json``.
Differences, each a fix: inputs are staged in a private temporary directory (0.12 reuses
``$TMPDIR/{name}``, so two runs for one name trample each other), a ``handler.py:fn`` handler is
copied as ``handler.py`` (0.12 looks for a file named ``handler.py:fn``), the file filter 0.12
defines but never applies (``*.pyc``, ``.DS_Store``, ``*.mar``) is applied, and the output
appears at its final path only once it is complete.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The manifest format written is torch-model-archiver 0.12's; the version says so to readers.
ARCHIVER_VERSION = "0.12.0"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
RUNTIMES = ("python", "python3", "LSP")
FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
# Handler names that mean a built-in handler: the archive names them and holds no file.
DEFAULT_HANDLERS = frozenset(
    {
        "base_handler",
        "text_classifier",
        "image_classifier",
        "object_detector",
        "image_segmenter",
        "dali_image_classifier",
        "vllm_handler",
        "trt_llm_handler",
    }
)
LSP_DEFAULT_HANDLERS = frozenset({"BaseHandler", "TorchScriptHandler"})
SKIPPED_DIRS = frozenset({"__pycache__", "__MACOSX"})
SKIPPED_SUFFIXES = (".pyc", ".DS_Store", ".mar")
MANIFEST = "MAR-INF/MANIFEST.json"


class ArchiverError(Exception):
    """The flags cannot make an archive (bad name, missing file, output exists): the message
    says which and what to do."""


@dataclass(frozen=True)
class ArchiveSpec:
    """torch-model-archiver's flags, as values."""

    model_name: str
    version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    extra_files: str | None = None
    runtime: str = "python"
    export_path: str = "."
    archive_format: str = "default"
    force: bool = False
    requirements_file: str | None = None
    config_file: str | None = None


def manifest(spec: ArchiveSpec, now: datetime | None = None) -> dict[str, object]:
    """MANIFEST.json as torch-model-archiver 0.12 writes it: keys in its order, unset ones
    left out, file names reduced to their base names (``handler`` keeps ``:function``)."""
    model: dict[str, str] = {"modelName": spec.model_name}
    if spec.serialized_file:
        model["serializedFile"] = os.path.basename(spec.serialized_file)
    model["handler"] = os.path.basename(spec.handler)
    if spec.model_file:
        model["modelFile"] = os.path.basename(spec.model_file)
    if spec.version:
        model["modelVersion"] = spec.version
    if spec.requirements_file:
        model["requirementsFile"] = os.path.basename(spec.requirements_file)
    if spec.config_file:
        model["configFile"] = os.path.basename(spec.config_file)
    return {
        "createdOn": (now or datetime.now()).strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": spec.runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }


def output_path(spec: ArchiveSpec) -> Path:
    return Path(spec.export_path) / f"{spec.model_name}{FORMATS[spec.archive_format]}"


def _handler_file(spec: ArchiveSpec) -> str | None:
    """The file the handler flag names, or None for a built-in handler."""
    if spec.runtime in ("python", "python3"):
        if spec.handler in DEFAULT_HANDLERS:
            return None
        path = spec.handler
        if ":" in os.path.basename(path):
            path = path.rsplit(":", 1)[0]
        return path if path.endswith(".py") else path + ".py"
    if spec.handler in LSP_DEFAULT_HANDLERS:
        return None
    path = spec.handler.split(":")[0]
    return path + (".dylib" if sys.platform == "darwin" else ".so")


def _copy_file(source: str, stage: Path, what: str) -> None:
    if not os.path.isfile(source):
        raise ArchiverError(f"{what} not found: {source}")
    shutil.copy2(source, stage / os.path.basename(source))


def copy_extra(entries: str, stage: Path) -> None:
    """Comma-separated files, directories and globs; a directory's contents land at the
    archive root (its files flattened, its subdirectories kept whole)."""
    for entry in (e.strip() for e in entries.split(",")):
        if not entry:
            continue
        wildcard = any(c in entry for c in "*?") or ("[" in entry and "]" in entry)
        if not wildcard and not os.path.exists(entry):
            raise ArchiverError(f"File does not exist: {entry}")
        matches = sorted(glob.glob(entry))
        if wildcard and not matches:
            print(f"Given wildcard pattern did not match any file: {entry}", file=sys.stderr)
        for match in matches:
            if os.path.isfile(match):
                shutil.copy2(match, stage / os.path.basename(match))
            elif os.path.isdir(match):
                for item in sorted(os.listdir(match)):
                    source = os.path.join(match, item)
                    if os.path.isfile(source):
                        shutil.copy2(source, stage / item)
                    elif os.path.isdir(source):
                        shutil.copytree(source, stage / item, dirs_exist_ok=True)
            else:
                raise ArchiverError(f"Invalid extra file given {match}")


def stage_artifacts(spec: ArchiveSpec, stage: Path) -> None:
    """Copy every input named by ``spec`` into ``stage`` (the future archive root)."""
    handler = _handler_file(spec)
    if handler is not None:
        _copy_file(handler, stage, "handler file")
    for path, what in (
        (spec.model_file, "model file"),
        (spec.serialized_file, "serialized file"),
        (spec.requirements_file, "requirements file"),
        (spec.config_file, "config file"),
    ):
        if path:
            _copy_file(path, stage, what)
    if spec.extra_files:
        copy_extra(spec.extra_files, stage)


def archived_files(root: Path) -> Iterator[str]:
    """The files under ``root`` that go into the archive, as sorted relative POSIX paths:
    not ``__pycache__``, ``__MACOSX`` or dot-directories, not ``*.pyc``, ``.DS_Store`` or
    ``*.mar``, and not a stale ``MAR-INF/MANIFEST.json`` (the archive gets a fresh one)."""
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(SKIPPED_SUFFIXES):
                continue
            relative = Path(directory, name).relative_to(root).as_posix()
            if relative != MANIFEST:
                yield relative


def _write(spec: ArchiveSpec, stage: Path, manifest_text: str, target: Path) -> None:
    fmt = spec.archive_format
    if fmt == "no-archive":
        target.mkdir(exist_ok=True)
        for relative in archived_files(stage):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(stage / relative, target / relative)
        (target / "MAR-INF").mkdir(exist_ok=True)
        (target / MANIFEST).write_text(manifest_text, encoding="utf-8")
    elif fmt == "tgz":
        with tarfile.open(target, "w:gz") as tar:
            for relative in archived_files(stage):
                tar.add(stage / relative, arcname=f"{spec.model_name}/{relative}")
            data = manifest_text.encode("utf-8")
            info = tarfile.TarInfo(f"{spec.model_name}/{MANIFEST}")
            info.size = len(data)
            info.mtime = int(datetime.now().timestamp())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    else:
        method = zipfile.ZIP_STORED if fmt == "zip-store" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(target, "w", method) as archive:
            for relative in archived_files(stage):
                archive.write(stage / relative, relative)
            archive.writestr(MANIFEST, manifest_text)


def validate(spec: ArchiveSpec) -> Path:
    """Check the flags; return the output path.

    Raises:
        ArchiverError: the name breaks the pattern, the export path is not a directory, the
            runtime or format is unknown, or the output exists without ``force``.
    """
    if not MODEL_NAME_PATTERN.match(spec.model_name):
        raise ArchiverError(
            "Model name contains special characters.\n"
            "The allowed regular expression filter for model name is: "
            f"{MODEL_NAME_PATTERN.pattern}"
        )
    if spec.runtime not in RUNTIMES:
        raise ArchiverError(f"Unknown runtime {spec.runtime!r}: one of {', '.join(RUNTIMES)}")
    if spec.archive_format not in FORMATS:
        raise ArchiverError(f"Unknown archive format {spec.archive_format!r}")
    return check_output(spec.export_path, output_path(spec), spec.force, "model archive")


def check_output(export_path: str, target: Path, force: bool, what: str) -> Path:
    """The archivers' shared checks on where the ``what`` ("model archive", "workflow
    archive") goes; returns ``target``.

    Raises:
        ArchiverError: the export path is not a directory, or ``target`` exists without
            ``force``.
    """
    if not os.path.isdir(export_path):
        raise ArchiverError(
            f"Given export-path {export_path} is not a directory. "
            "Point to a valid export-path directory."
        )
    if (target.exists() or target.is_symlink()) and not force:
        raise ArchiverError(
            f"{target} already exists.\n"
            f"Please specify --force/-f option to overwrite the {what} output file.\n"
            "See -h/--help for more details."
        )
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def create_archive(spec: ArchiveSpec, *, now: datetime | None = None) -> Path:
    """Write the archive ``spec`` describes; return its path.

    Raises:
        ArchiverError: see :func:`validate`, or an input file is missing.

    Resource handling: inputs are copied to a private temporary directory, the archive is
    written next to its final path under a temporary name and renamed into place, so a
    failure leaves neither a partial archive nor (with ``force``) a lost old one. An existing
    ``no-archive`` directory is written into, never removed: it may hold the inputs.
    """
    target = validate(spec)
    manifest_text = json.dumps(manifest(spec, now), indent=2)
    with tempfile.TemporaryDirectory(prefix="trioserve-archive-") as tmp:
        stage = Path(tmp) / spec.model_name
        stage.mkdir()
        stage_artifacts(spec, stage)
        if spec.archive_format == "no-archive" and target.is_dir():
            _write(spec, stage, manifest_text, target)
            return target
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        _remove(partial)
        try:
            _write(spec, stage, manifest_text, partial)
            _remove(target)
            partial.rename(target)
        except BaseException:
            _remove(partial)
            raise
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """torch-model-archiver's flags (contract §6.4)."""
    parser.add_argument("--model-name", required=True, help="name of the model (and file)")
    parser.add_argument("--serialized-file", help=".pt/.pth state dict or TorchScript, .onnx")
    parser.add_argument("--model-file", help="Python file with the one nn.Module class")
    parser.add_argument(
        "--handler", required=True, help="a default handler's name, or a file.py[:function]"
    )
    parser.add_argument("--extra-files", help="comma-separated files, directories or globs")
    parser.add_argument("--runtime", default="python", choices=RUNTIMES)
    parser.add_argument("--export-path", default=os.getcwd(), help="where to write (cwd)")
    parser.add_argument("--archive-format", default="default", choices=tuple(FORMATS))
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing one")
    parser.add_argument("-v", "--version", required=True, help="the model's version")
    parser.add_argument("-r", "--requirements-file", help="pip requirements of the model")
    parser.add_argument("-c", "--config-file", help="model-config.yaml")


def spec_from_args(args: argparse.Namespace) -> ArchiveSpec:
    return ArchiveSpec(
        model_name=args.model_name,
        version=args.version,
        handler=args.handler,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=args.extra_files,
        runtime=args.runtime,
        export_path=args.export_path,
        archive_format=args.archive_format,
        force=args.force,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trioserve archive``: 0 on success, 1 with the reason on stderr."""
    try:
        target = create_archive(spec_from_args(args))
    except (ArchiverError, OSError) as exc:
        print(f"trioserve archive: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully exported model {args.model_name} to {target}")
    return 0


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` as ``trioserve archive`` does and run it (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="trioserve archive")
    add_arguments(parser)
    return main(parser.parse_args(list(argv)))
