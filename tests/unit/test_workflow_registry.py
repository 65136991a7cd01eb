"""The workflow registry: names reserved from the start of a registration to the end of an
unregistration, so snapshots never see a workflow's node models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.workflows import war_manifest, write_war
from trioserve.errors import Conflict
from trioserve.workflows.archive import open_war
from trioserve.workflows.dag import build_dag
from trioserve.workflows.errors import WorkflowNotFound
from trioserve.workflows.registry import Workflow, WorkflowRegistry
from trioserve.workflows.spec import parse_spec


def _workflow(tmp_path: Path, name: str) -> Workflow:
    source = write_war(
        tmp_path / f"{name}.war",
        {
            "spec.yaml": "dag:\n  pre: [post]\n",
            "h.py": "def pre(d, c): pass\ndef post(d, c): pass\n",
            "WAR-INF/MANIFEST.json": war_manifest(name, handler="h.py"),
        },
    )
    archive = open_war(source, tmp_path / "extract")
    spec = parse_spec(archive.spec_text)
    dag = build_dag(spec.edges, (), {"pre", "post"})
    return Workflow(name, f"{name}.war", archive, spec, dag, downloaded=False)


def test_names_are_owned_from_reservation_to_release(tmp_path: Path) -> None:
    registry = WorkflowRegistry()
    flow = _workflow(tmp_path, "flow")
    registry.reserve("flow", flow.model_names())
    assert registry.owned_models() == {"flow__pre", "flow__post"}
    with pytest.raises(Conflict, match=r"^Workflow flow is already registered\.$"):
        registry.reserve("flow", [])
    with pytest.raises(WorkflowNotFound, match=r"^Workflow not found: flow$"):
        registry.resolve("flow")  # reserved is not registered yet
    registry.add(flow)
    assert registry.resolve("flow") is flow
    assert registry.owned_models() == {"flow__pre", "flow__post"}

    assert registry.remove("flow") is flow
    assert registry.owned_models() == {"flow__pre", "flow__post"}  # still being taken down
    with pytest.raises(Conflict):
        registry.reserve("flow", [])
    registry.release("flow")
    assert registry.owned_models() == frozenset()
    assert registry.sorted() == []


def test_workflows_sort_by_name(tmp_path: Path) -> None:
    registry = WorkflowRegistry()
    for name in ("b", "a", "c"):
        registry.add(_workflow(tmp_path, name))
    assert [w.name for w in registry.sorted()] == ["a", "b", "c"]
