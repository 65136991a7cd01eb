"""Sans-IO: a spec's ``dag:`` section checked and turned into a graph the executor walks.

The rules (contract §2.7, as TorchServe 0.12 checks them, with messages that name the node):
every node is a model of the ``models:`` section or a function of the handler; there is no
cycle; there is exactly one start node (no predecessors), so every node has a path from it.
Any number of leaves is allowed; their outputs are the workflow's answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from trioserve.workflows.errors import InvalidDag

Edges = Sequence[tuple[str, Sequence[str]]]


@dataclass(frozen=True)
class Dag:
    nodes: tuple[str, ...]  # in a topological order (ties in the spec's order)
    successors: Mapping[str, tuple[str, ...]]
    predecessors: Mapping[str, tuple[str, ...]]
    start: str
    leaves: tuple[str, ...]
    edges: tuple[tuple[str, tuple[str, ...]], ...]  # the section as written, for describe


def _adjacency(edges: Edges) -> dict[str, list[str]]:
    successors: dict[str, list[str]] = {}
    for node, after in edges:
        targets = successors.setdefault(node, [])
        for successor in after:
            if successor not in targets:
                targets.append(successor)
            successors.setdefault(successor, [])
    return successors


def _find_cycle(successors: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a node path that starts and ends on one node, or None. Iterative depth-first
    search, so a long chain cannot exhaust the stack."""
    done: set[str] = set()
    for root in successors:
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                path.append(node)
                on_path.add(node)
            after = successors[node]
            if index < len(after):
                stack.append((node, index + 1))
                nxt = after[index]
                if nxt in on_path:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in done:
                    stack.append((nxt, 0))
                continue
            path.pop()
            on_path.discard(node)
            done.add(node)
    return None


def build_dag(edges: Edges, models: Collection[str], functions: Collection[str]) -> Dag:
    """Check ``edges`` (node -> successors, in spec order) and build the graph.

    Raises:
        InvalidDag: an empty graph, a node that is neither in ``models`` nor in ``functions``,
            a cycle, or a second start node; each message names a node.
    """
    successors = _adjacency(edges)
    if not successors:
        raise InvalidDag("Invalid DAG: the dag section has no nodes.")
    for node in successors:
        if node not in models and node not in functions:
            raise InvalidDag(
                f"Invalid DAG: node {node} is neither a model of the models section nor a "
                "function of the workflow handler."
            )
    cycle = _find_cycle(successors)
    if cycle is not None:
        raise InvalidDag(f"Invalid DAG: node {cycle[0]} is on a cycle: {' -> '.join(cycle)}.")
    predecessors: dict[str, list[str]] = {node: [] for node in successors}
    for node, after in successors.items():
        for successor in after:
            predecessors[successor].append(node)
    starts = [node for node, before in predecessors.items() if not before]
    if len(starts) > 1:
        raise InvalidDag(
            f"Invalid DAG: node {starts[1]} has no path from the start node {starts[0]} "
            "(a workflow has exactly one start node)."
        )
    # Kahn's order; with one start and no cycle it reaches every node.
    order: list[str] = []
    waiting = {node: len(before) for node, before in predecessors.items()}
    ready = deque(starts)
    while ready:
        node = ready.popleft()
        order.append(node)
        for successor in successors[node]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.append(successor)
    return Dag(
        nodes=tuple(order),
        successors={n: tuple(s) for n, s in successors.items()},
        predecessors={n: tuple(p) for n, p in predecessors.items()},
        start=starts[0],
        leaves=tuple(n for n in order if not successors[n]),
        edges=tuple((node, tuple(after)) for node, after in edges),
    )


def java_map_text(edges: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The dag as TorchServe's describe prints it (a Java map's text):
    ``{pre=[m1, m2], m1=[post], m2=[post]}``."""
    return "{" + ", ".join(f"{node}=[{', '.join(after)}]" for node, after in edges) + "}"
