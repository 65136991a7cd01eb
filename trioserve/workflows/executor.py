"""Run one request through a workflow's graph (contract §2.7).

A node starts as soon as all its predecessors have answered, in one nursery, so independent
branches run concurrently. The start node gets the request's inputs; a node with one
predecessor gets that predecessor's output as its ``body`` input; a node with several gets one
input per predecessor, named after it (so the handler sees ``{"m1": ..., "m2": ...}``), as
TorchServe builds them. Each attempt at a node runs under its ``timeout-ms`` (queueing
included) and a failed or timed-out node is tried ``retry-attempts`` more times; a node that
still fails fails the request, naming the node, and cancels the rest of the graph. Cancelling
the caller (the client left) cancels every node; their queued jobs are dropped.

What running a node means (queueing a job on its model) is the caller's: ``run_node``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from trioserve.errors import ServeError
from trioserve.http.request import Input
from trioserve.workflows.dag import Dag
from trioserve.workflows.spec import NodeSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeOutput:
    body: bytes
    content_type: str = ""


NodeRunner = Callable[[str, list[Input]], Awaitable[NodeOutput]]


class NodeFailed(ServeError):
    """A node failed on every attempt; the request fails with a 500 naming the node (its
    message starts as TorchServe's does: ``Error executing {node}``)."""

    def __init__(self, node: str, attempts: int, cause: str) -> None:
        plural = "s" if attempts != 1 else ""
        super().__init__(f"Error executing {node}: {cause} (failed {attempts} attempt{plural})")
        self.node = node


def node_inputs(dag: Dag, node: str, outputs: Mapping[str, NodeOutput]) -> list[Input]:
    """A non-start node's inputs, built from its predecessors' outputs."""
    before = dag.predecessors[node]
    if len(before) == 1:
        out = outputs[before[0]]
        return [Input("body", out.body, out.content_type)]
    return [Input(p, outputs[p].body, outputs[p].content_type) for p in before]


async def _attempt(
    node: str, inputs: list[Input], settings: NodeSettings, run_node: NodeRunner
) -> NodeOutput:
    attempts = settings.retry_attempts + 1
    timeout = settings.timeout_ms / 1000 if settings.timeout_ms > 0 else math.inf
    cause = ""
    for attempt in range(1, attempts + 1):
        with trio.move_on_after(timeout) as scope:
            try:
                return await run_node(node, inputs)
            except ServeError as exc:
                cause = exc.message or exc.type_name
        if scope.cancelled_caught:
            cause = f"timed out after {settings.timeout_ms} ms"
        logger.warning("workflow node %s, attempt %d of %d: %s", node, attempt, attempts, cause)
    raise NodeFailed(node, attempts, cause)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> NodeFailed | None:
    for exc in group.exceptions:
        if isinstance(exc, NodeFailed):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_failure(exc)
            if found is not None:
                return found
    return None


async def run_dag(
    dag: Dag,
    request_inputs: list[Input],
    settings: Callable[[str], NodeSettings],
    run_node: NodeRunner,
) -> dict[str, NodeOutput]:
    """Run the graph once; return each leaf's output, keyed by leaf, in the graph's order.

    Raises:
        NodeFailed: a node failed (or timed out) on every attempt; the other nodes were
            cancelled.
    """
    outputs: dict[str, NodeOutput] = {}
    waiting = {node: len(before) for node, before in dag.predecessors.items()}

    async def run(node: str, nursery: trio.Nursery) -> None:
        inputs = request_inputs if node == dag.start else node_inputs(dag, node, outputs)
        outputs[node] = await _attempt(node, inputs, settings(node), run_node)
        for successor in dag.successors[node]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                nursery.start_soon(run, successor, nursery)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, dag.start, nursery)
    except BaseExceptionGroup as group:
        # One node's failure cancels its siblings; it is the answer (the cancellations of the
        # others are what it caused, not news).
        failure = _first_failure(group)
        if failure is None:
            raise
        raise failure from None
    return {leaf: outputs[leaf] for leaf in dag.leaves}
