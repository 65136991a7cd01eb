"""Reading .war files: the model archive's extraction rules, then the manifest's files."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from tests.support.workflows import war_manifest, write_war
from trioserve.errors import InvalidModel
from trioserve.workflows.archive import open_war, remove_extraction
from trioserve.workflows.errors import InvalidWorkflow

SPEC = "dag:\n  pre: []\n"
HANDLER = "def pre(data, context):\n    return data\n"


def _good(path: Path, **extra: str) -> Path:
    return write_war(
        path,
        {
            "spec.yaml": SPEC,
            "handler.py": HANDLER,
            "WAR-INF/MANIFEST.json": war_manifest("flow", handler="handler.py"),
            **extra,
        },
    )


def test_reads_manifest_spec_and_handler_into_a_private_directory(tmp_path: Path) -> None:
    source = _good(tmp_path / "flow.war", **{"data/extra.txt": "x"})
    archive = open_war(source, tmp_path / "extract")
    assert archive.manifest.workflow_name == "flow"
    assert archive.manifest.spec_file == "spec.yaml"
    assert archive.handler_module == "handler"
    assert archive.spec_text == SPEC.encode()
    assert archive.handler_source == HANDLER.encode()
    assert (archive.directory / "data" / "extra.txt").read_text() == "x"
    assert stat.S_IMODE(archive.directory.stat().st_mode) == 0o700
    remove_extraction(archive)
    assert not archive.directory.exists()


@pytest.mark.parametrize("evil", ["../escape.py", "/etc/evil", "a/../../escape", "..\\win.py"])
def test_zip_slip_is_refused_and_nothing_is_left(tmp_path: Path, evil: str) -> None:
    source = _good(tmp_path / "flow.war", **{evil: "boom"})
    root = tmp_path / "extract"
    with pytest.raises(InvalidModel, match=r"Refusing model archive flow\.war"):
        open_war(source, root)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "escape.py").exists()


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    source = _good(tmp_path / "flow.war")
    with zipfile.ZipFile(source, "a") as archive:
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidModel, match="is a symbolic link"):
        open_war(source, tmp_path / "extract")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"spec.yaml": SPEC}, "flow.war has no WAR-INF/MANIFEST.json"),
        ({"WAR-INF/MANIFEST.json": "{"}, "Failed to parse WAR-INF/MANIFEST.json"),
        ({"WAR-INF/MANIFEST.json": "{}"}, "Missing workflow entry in manifest file."),
        (
            {"WAR-INF/MANIFEST.json": '{"workflow": {"workflowName": "flow"}}'},
            "Workflow spec file is not defined in the manifest.",
        ),
        ({"WAR-INF/MANIFEST.json": war_manifest("flow")}, "spec file 'spec.yaml' is not in"),
        (
            {"WAR-INF/MANIFEST.json": war_manifest("flow", spec_file="../../etc/passwd")},
            "is outside the archive",
        ),
        (
            {
                "spec.yaml": SPEC,
                "WAR-INF/MANIFEST.json": war_manifest("flow", handler="missing.py"),
            },
            "handler 'missing.py' is not in the archive",
        ),
    ],
)
def test_manifest_problems_are_named(
    tmp_path: Path, files: dict[str, str | bytes], message: str
) -> None:
    source = write_war(tmp_path / "flow.war", files)
    with pytest.raises(InvalidWorkflow) as caught:
        open_war(source, tmp_path / "extract")
    assert message in str(caught.value.message)
    assert list((tmp_path / "extract").iterdir()) == []


def test_only_war_files_are_workflow_archives(tmp_path: Path) -> None:
    mar = _good(tmp_path / "flow.mar")
    with pytest.raises(InvalidWorkflow, match=r"flow.mar is not a workflow archive \(.war"):
        open_war(mar, tmp_path / "extract")
    (tmp_path / "junk.war").write_bytes(b"not a zip")
    with pytest.raises(InvalidModel, match=r"junk\.war is not a valid model archive"):
        open_war(tmp_path / "junk.war", tmp_path / "extract")
