"""Open a workflow archive (``.war``, contract §2.7): a zip holding ``WAR-INF/MANIFEST.json``, a
spec YAML and a handler module.

File system only: no sockets, no trio. A ``.war`` is as untrusted as a ``.mar``, so it is
extracted by the model archive's extractor, with every one of its checks (paths, links, entry
count, unpacked size), and the files the manifest names must lie inside the extraction.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The extractor and the bounded metadata reader are the model archive's own, shared so both
# kinds of archive get exactly the same treatment.
from trioserve.models.archive import extract_zip, read_small
from trioserve.workflows.errors import InvalidWorkflow

WAR_SUFFIX = ".war"
WAR_MANIFEST = "WAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class WorkflowManifest:
    """``WAR-INF/MANIFEST.json`` as torch-workflow-archiver writes it: ``createdOn``,
    ``description`` (optional), ``archiverVersion`` and ``workflow{workflowName, specFile,
    handler}``."""

    workflow_name: str | None
    spec_file: str
    handler: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: bytes) -> WorkflowManifest:
        """Raises InvalidWorkflow: not JSON, no ``workflow`` section, or no ``specFile``."""
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise InvalidWorkflow(f"Failed to parse {WAR_MANIFEST}: {exc}") from exc
        section = raw.get("workflow") if isinstance(raw, dict) else None
        if not isinstance(section, dict):
            raise InvalidWorkflow("Missing workflow entry in manifest file.")
        spec_file = section.get("specFile")
        if not isinstance(spec_file, str) or not spec_file:
            raise InvalidWorkflow("Workflow spec file is not defined in the manifest.")
        name = section.get("workflowName")
        handler = section.get("handler")
        return cls(
            workflow_name=name if isinstance(name, str) and name else None,
            spec_file=spec_file,
            handler=handler if isinstance(handler, str) and handler else None,
            raw=raw,
        )


@dataclass(frozen=True)
class WorkflowArchive:
    """An extracted ``.war``; ``directory`` is ours and freed by :func:`remove_extraction`."""

    source: Path
    directory: Path
    manifest: WorkflowManifest
    spec_text: bytes
    handler_source: bytes | None  # None when the manifest names no handler

    @property
    def handler_module(self) -> str | None:
        """The handler's module name as a worker imports it (``workflow_handler``)."""
        handler = self.manifest.handler
        return None if handler is None else handler.removesuffix(".py")


def _member(directory: Path, name: str, what: str) -> Path:
    path = directory / name
    # The manifest is as untrusted as the rest of the archive.
    if not path.resolve().is_relative_to(directory.resolve()):
        raise InvalidWorkflow(f"The workflow {what} {name!r} is outside the archive.")
    if not path.is_file():
        raise InvalidWorkflow(f"The workflow {what} {name!r} is not in the archive.")
    return path


def _load(source: Path, directory: Path) -> WorkflowArchive:
    manifest_file = directory / WAR_MANIFEST
    if not manifest_file.is_file():
        raise InvalidWorkflow(f"{source.name} has no {WAR_MANIFEST}.")
    manifest = WorkflowManifest.from_json(read_small(manifest_file))
    spec_text = read_small(_member(directory, manifest.spec_file, "spec file"))
    handler_source = None
    if manifest.handler is not None:
        # Workers import the handler from the archive root, by its module name.
        if "/" in manifest.handler or "\\" in manifest.handler:
            raise InvalidWorkflow(
                f"The workflow handler {manifest.handler!r} must be at the archive root."
            )
        handler_source = read_small(_member(directory, manifest.handler, "handler"))
    return WorkflowArchive(source, directory, manifest, spec_text, handler_source)


def open_war(source: Path, extract_root: Path) -> WorkflowArchive:
    """Extract ``source`` into a new ``extract_root/<32 hex>/`` (mode 0700) and read its
    manifest, spec and handler.

    Raises:
        InvalidWorkflow: not a ``.war`` file, or its manifest or named files are missing.
        InvalidModel: the zip is corrupt, hostile or over a limit (the extractor's message
            names the entry).

    Resource handling: the extraction is removed again on any failure; on success the caller
    owns it and frees it with :func:`remove_extraction`.
    """
    if not source.is_file() or not source.name.endswith(WAR_SUFFIX):
        raise InvalidWorkflow(f"{source.name} is not a workflow archive ({WAR_SUFFIX} file).")
    extract_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = extract_root / secrets.token_hex(16)
    dest.mkdir(mode=0o700)
    try:
        dest.chmod(0o700)  # mkdir's mode passes through the umask
        extract_zip(source, dest)
        return _load(source, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def remove_extraction(archive: WorkflowArchive) -> None:
    """Delete the extraction; idempotent and best effort (it runs on cleanup paths)."""
    shutil.rmtree(archive.directory, ignore_errors=True)
