"""``trioserve workflow-archive``: write a ``.war`` as torch-workflow-archiver 0.2.15 (the one
released with TorchServe 0.12) does.

Same flags (``--workflow-name``, ``--spec-file``, ``--handler``, ``--export-path``,
``--extra-files``, ``-f/--force``), same output (``{name}.war``, a deflated zip with the files at
its root and ``WAR-INF/MANIFEST.json``), same manifest. As with ``trioserve archive``, inputs are
staged in a private temporary directory (0.2.15 reuses ``$TMPDIR/{name}``) and the archive
appears at its final path only once complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The extra-files rules (globs, directories flattened) and the file filter are the model
# archiver's, so both archivers treat inputs alike.
from trioserve.archiver import ArchiverError, archived_files, check_output, copy_extra
from trioserve.workflows.archive import WAR_MANIFEST, WAR_SUFFIX
from trioserve.workflows.spec import NAME_PATTERN

ARCHIVER_VERSION = "0.2.15"


@dataclass(frozen=True)
class WarSpec:
    """torch-workflow-archiver's flags, as values."""

    workflow_name: str
    spec_file: str
    handler: str | None = None
    export_path: str = "."
    extra_files: str | None = None
    force: bool = False


def manifest(spec: WarSpec, now: datetime | None = None) -> dict[str, object]:
    """MANIFEST.json as torch-workflow-archiver writes it: keys in its order, file names
    reduced to their base names."""
    workflow: dict[str, str] = {
        "workflowName": spec.workflow_name,
        "specFile": os.path.basename(spec.spec_file),
    }
    if spec.handler:
        workflow["handler"] = os.path.basename(spec.handler)
    return {
        "createdOn": (now or datetime.now()).strftime("%d/%m/%Y %H:%M:%S"),
        "workflow": workflow,
        "archiverVersion": ARCHIVER_VERSION,
    }


def output_path(spec: WarSpec) -> Path:
    return Path(spec.export_path) / f"{spec.workflow_name}{WAR_SUFFIX}"


def validate(spec: WarSpec) -> Path:
    """Check the flags; return the output path.

    Raises:
        ArchiverError: the name breaks the pattern, the export path is not a directory, or
            the output exists without ``force``.
    """
    if not NAME_PATTERN.match(spec.workflow_name):
        raise ArchiverError(
            "Workflow name contains special characters.\n"
            "The allowed regular expression filter for workflow name is: "
            f"{NAME_PATTERN.pattern}"
        )
    return check_output(spec.export_path, output_path(spec), spec.force, "workflow archive")


def _stage(spec: WarSpec, stage: Path) -> None:
    for path, what in ((spec.spec_file, "spec file"), (spec.handler, "handler file")):
        if path is None:
            continue
        if not os.path.isfile(path):
            raise ArchiverError(f"{what} not found: {path}")
        shutil.copy2(path, stage / os.path.basename(path))
    if spec.extra_files:
        copy_extra(spec.extra_files, stage)


def create_war(spec: WarSpec, *, now: datetime | None = None) -> Path:
    """Write the ``.war`` ``spec`` describes; return its path.

    Raises:
        ArchiverError: see :func:`validate`, or an input file is missing.
    """
    target = validate(spec)
    text = json.dumps(manifest(spec, now), indent=2)
    with tempfile.TemporaryDirectory(prefix="trioserve-war-") as tmp:
        stage = Path(tmp) / spec.workflow_name
        stage.mkdir()
        _stage(spec, stage)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        partial.unlink(missing_ok=True)
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for relative in archived_files(stage):
                    if relative != WAR_MANIFEST and not relative.endswith(WAR_SUFFIX):
                        archive.write(stage / relative, relative)
                archive.writestr(WAR_MANIFEST, text)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """torch-workflow-archiver's flags."""
    parser.add_argument("--workflow-name", required=True, help="name of the workflow (and file)")
    parser.add_argument("--spec-file", required=True, help="the workflow spec YAML")
    parser.add_argument("--handler", help="Python file with the workflow's functions")
    parser.add_argument("--export-path", default=os.getcwd(), help="where to write (cwd)")
    parser.add_argument("--extra-files", help="comma-separated files, directories or globs")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing one")


def main(args: argparse.Namespace) -> int:
    """Run ``trioserve workflow-archive``: 0 on success, 1 with the reason on stderr."""
    spec = WarSpec(
        workflow_name=args.workflow_name,
        spec_file=args.spec_file,
        handler=args.handler,
        export_path=args.export_path,
        extra_files=args.extra_files,
        force=args.force,
    )
    try:
        target = create_war(spec)
    except (ArchiverError, OSError) as exc:
        print(f"trioserve workflow-archive: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully exported workflow {spec.workflow_name} to {target}")
    return 0


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` as ``trioserve workflow-archive`` does and run it."""
    parser = argparse.ArgumentParser(prog="trioserve workflow-archive")
    add_arguments(parser)
    return main(parser.parse_args(list(argv)))
