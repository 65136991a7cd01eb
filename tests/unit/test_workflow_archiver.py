"""``trioserve workflow-archive``: torch-workflow-archiver's flags and .war layout."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from trioserve import cli
from trioserve.workflows.archive import open_war
from trioserve.workflows.archiver import WarSpec, manifest


def test_manifest_keys_are_torch_workflow_archivers() -> None:
    spec = WarSpec("flow", "conf/spec.yaml", handler="src/handler.py")
    assert manifest(spec, datetime(2026, 12, 1, 9, 5, 7)) == {
        "createdOn": "01/12/2026 09:05:07",
        "workflow": {"workflowName": "flow", "specFile": "spec.yaml", "handler": "handler.py"},
        "archiverVersion": "0.2.15",
    }


def test_cli_writes_a_war_the_server_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "spec.yaml").write_text("dag:\n  pre: []\n")
    (tmp_path / "handler.py").write_text("def pre(data, context):\n    return data\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "labels.json").write_text("{}")
    (extra / "__pycache__").mkdir()
    (extra / "__pycache__" / "x.pyc").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    argv = [
        "workflow-archive",
        "--workflow-name",
        "flow",
        "--spec-file",
        str(tmp_path / "spec.yaml"),
        "--handler",
        str(tmp_path / "handler.py"),
        "--extra-files",
        str(extra),
        "--export-path",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert f"Successfully exported workflow flow to {out / 'flow.war'}" in capsys.readouterr().out
    with zipfile.ZipFile(out / "flow.war") as war:
        assert sorted(war.namelist()) == [
            "WAR-INF/MANIFEST.json",
            "handler.py",
            "labels.json",
            "spec.yaml",
        ]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in war.infolist())
        written = json.loads(war.read("WAR-INF/MANIFEST.json"))
    assert written["workflow"] == {
        "workflowName": "flow",
        "specFile": "spec.yaml",
        "handler": "handler.py",
    }
    archive = open_war(out / "flow.war", tmp_path / "extract")
    assert archive.handler_module == "handler"

    # An existing archive needs -f; a bad name is refused before anything is written.
    assert cli.main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*argv, "-f"]) == 0
    bad = [*argv[:2], "bad name", *argv[3:]]
    assert cli.main(bad) == 1
    assert "Workflow name contains special characters" in capsys.readouterr().err
