"""The registered workflows, and the model names each one owns.

A workflow's node models are ordinary registry models named ``{workflow}__{node}``. Their names
are reserved here from the moment a registration starts, so config snapshots leave them out
even while the workflow is still being registered (or rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trioserve.errors import Conflict
from trioserve.workflows.archive import WorkflowArchive
from trioserve.workflows.dag import Dag
from trioserve.workflows.errors import WorkflowNotFound
from trioserve.workflows.spec import WorkflowSpec


def node_model_name(workflow: str, node: str) -> str:
    return f"{workflow}__{node}"


@dataclass(frozen=True)
class Workflow:
    name: str
    url: str  # as given at registration
    archive: WorkflowArchive
    spec: WorkflowSpec
    dag: Dag
    downloaded: bool  # the .war was fetched into the workflow store (deleted on unregister)

    @property
    def source(self) -> Path:
        return self.archive.source

    def model_name(self, node: str) -> str:
        return node_model_name(self.name, node)

    def model_names(self) -> list[str]:
        return [self.model_name(node) for node in self.dag.nodes]


class WorkflowRegistry:
    def __init__(self) -> None:
        self.workflows: dict[str, Workflow] = {}
        self._reserved: dict[str, frozenset[str]] = {}  # registering: name -> its model names

    def resolve(self, name: str) -> Workflow:
        found = self.workflows.get(name)
        if found is None:
            raise WorkflowNotFound(f"Workflow not found: {name}")
        return found

    def reserve(self, name: str, model_names: list[str]) -> None:
        """Claim ``name`` for a registration in progress.

        Raises:
            Conflict: the name is registered, or being registered.
        """
        if name in self.workflows or name in self._reserved:
            raise Conflict(f"Workflow {name} is already registered.")
        self._reserved[name] = frozenset(model_names)

    def release(self, name: str) -> None:
        """End a reservation (a registration failed, or an unregistration is done)."""
        self._reserved.pop(name, None)

    def add(self, workflow: Workflow) -> None:
        self.workflows[workflow.name] = workflow
        self._reserved.pop(workflow.name, None)

    def remove(self, name: str) -> Workflow:
        """Make a workflow unreachable; its names stay reserved until :meth:`release`, while
        its models are taken down."""
        workflow = self.resolve(name)
        del self.workflows[name]
        self._reserved[name] = frozenset(workflow.model_names())
        return workflow

    def owned_models(self) -> frozenset[str]:
        """Every model name a workflow owns or is registering: kept out of snapshots."""
        names = {m for w in self.workflows.values() for m in w.model_names()}
        for reserved in self._reserved.values():
            names |= reserved
        return frozenset(names)

    def sorted(self) -> list[Workflow]:
        return [self.workflows[name] for name in sorted(self.workflows)]
