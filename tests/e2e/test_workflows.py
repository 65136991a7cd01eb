"""Workflows through the `trioserve` command: `workflow-archive`, `run --workflow-store`, and
config snapshots that leave workflows (and their node models) out across a restart."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.spawn import EXAMPLES, free_ports, spawned, stop, trioserve, write_properties
from tests.support.workflows import WORKFLOW_HANDLER

SPEC = "models:\n  e:\n    url: echo\ndag:\n  pre: [e]\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    return tmp_path


@pytest.fixture
def ports() -> dict[str, int]:
    return free_ports()


@contextmanager
def running(workdir: Path, args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The server for the block; stopped by SIGTERM after it (exit 0), killed if it fails."""
    with spawned(args, workdir) as process:
        yield process
        assert stop(process) == 0


def test_workflow_is_served_from_the_workflow_store_and_never_snapshotted(
    workdir: Path, ports: dict[str, int]
) -> None:
    source = workdir / "src"
    source.mkdir()
    (source / "spec.yaml").write_text(SPEC)
    (source / "workflow_handler.py").write_text(WORKFLOW_HANDLER)
    store = workdir / "workflows"
    store.mkdir()
    archived = subprocess.run(
        [
            *trioserve("workflow-archive"),
            "--workflow-name",
            "flow",
            "--spec-file",
            str(source / "spec.yaml"),
            "--handler",
            str(source / "workflow_handler.py"),
            "--export-path",
            str(store),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert archived.returncode == 0, archived.stderr
    assert (store / "flow.war").is_file()

    config = write_properties(workdir, ports)
    args = ["--ts-config", str(config), "--model-store", str(EXAMPLES)]
    args += ["--workflow-store", str(store)]
    inference = f"http://127.0.0.1:{ports['inference']}"
    management = f"http://127.0.0.1:{ports['management']}"
    with running(workdir, args):
        registered = httpx.post(f"{management}/workflows", params={"url": "flow.war"}, timeout=120)
        assert registered.status_code == 200, registered.text
        answer = httpx.post(f"{inference}/wfpredict/flow", content=b"1,2", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"values": [1.0, 2.0]}
        # A plain model makes the server write a snapshot while the workflow is registered.
        plain = httpx.post(f"{management}/models", params={"url": "echo", "model_name": "plain"})
        assert plain.status_code == 202, plain.text  # registered; its worker starts meanwhile
    snapshots = sorted((workdir / "logs" / "config").glob("*.cfg"))
    assert any("snapshot" in p.name for p in snapshots)
    for path in snapshots:
        assert "flow__" not in path.read_text()

    # The restart restores the plain model, and neither the workflow nor its node models.
    with running(workdir, ["--workflow-store", str(store)]):
        names = [m["modelName"] for m in httpx.get(f"{management}/models").json()["models"]]
        assert names == ["plain"]
        assert httpx.get(f"{management}/workflows").json() == {"workflows": []}
