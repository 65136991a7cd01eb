"""The DAG executor with a fake node runner: inputs, concurrency, timeouts, retries and
cancellation, on trio's clock (no sockets, no workers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from trioserve.errors import ServiceUnavailable
from trioserve.http.request import Input
from trioserve.workflows.dag import build_dag
from trioserve.workflows.executor import NodeFailed, NodeOutput, run_dag
from trioserve.workflows.spec import NodeSettings

DIAMOND = build_dag(
    [("pre", ["m1", "m2"]), ("m1", ["agg"]), ("m2", ["agg"])], {"m1", "m2"}, {"pre", "agg"}
)
REQUEST = [Input("body", b"1,2", "text/plain")]


def settings(timeout_ms: int = 10000, retries: int = 0) -> Callable[[str], NodeSettings]:
    return lambda node: NodeSettings(retry_attempts=retries, timeout_ms=timeout_ms)


class Recorder:
    """Answers every node with ``{node}(<its inputs>)`` and records what each node got."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Input]] = {}
        self.calls: list[str] = []

    async def __call__(self, node: str, inputs: list[Input]) -> NodeOutput:
        self.seen[node] = inputs
        self.calls.append(node)
        await trio.lowlevel.checkpoint()
        joined = b"+".join(i.value for i in inputs)
        return NodeOutput(node.encode() + b"(" + joined + b")", "text/plain")


async def test_inputs_follow_the_graph() -> None:
    runner = Recorder()
    outputs = await run_dag(DIAMOND, REQUEST, settings(), runner)
    assert runner.seen["pre"] == REQUEST
    assert runner.seen["m1"] == [Input("body", b"pre(1,2)", "text/plain")]
    assert [(i.name, i.value) for i in runner.seen["agg"]] == [
        ("m1", b"m1(pre(1,2))"),
        ("m2", b"m2(pre(1,2))"),
    ]
    assert outputs == {"agg": NodeOutput(b"agg(m1(pre(1,2))+m2(pre(1,2)))", "text/plain")}


async def test_independent_branches_run_concurrently() -> None:
    # Each branch waits for the other to have started: run one after the other, they hang.
    started = {"m1": trio.Event(), "m2": trio.Event()}

    async def runner(node: str, inputs: list[Input]) -> NodeOutput:
        if node in started:
            started[node].set()
            other = "m2" if node == "m1" else "m1"
            await started[other].wait()
        return NodeOutput(node.encode())

    with trio.fail_after(5):
        outputs = await run_dag(DIAMOND, REQUEST, settings(), runner)
    assert outputs == {"agg": NodeOutput(b"agg")}


async def test_several_leaves_answer_together() -> None:
    dag = build_dag([("a", ["b", "c"])], (), {"a", "b", "c"})
    outputs = await run_dag(dag, REQUEST, settings(), Recorder())
    assert list(outputs) == ["b", "c"]


async def test_a_node_past_its_timeout_is_retried_then_fails_naming_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def runner(node: str, inputs: list[Input]) -> NodeOutput:
        if node == "m2":
            calls.append(trio.current_time())
            await trio.sleep_forever()
        return NodeOutput(b"ok")

    start = trio.current_time()
    with pytest.raises(NodeFailed) as caught:
        await run_dag(DIAMOND, REQUEST, settings(timeout_ms=250, retries=2), runner)
    assert caught.value.node == "m2"
    assert caught.value.code == 500
    assert caught.value.message == "Error executing m2: timed out after 250 ms (failed 3 attempts)"
    assert [round(t - start, 3) for t in calls] == [0.0, 0.25, 0.5]


async def test_a_failing_node_is_retried_and_can_recover() -> None:
    failures = {"m1": 1}

    async def runner(node: str, inputs: list[Input]) -> NodeOutput:
        if failures.get(node, 0) > 0:
            failures[node] -= 1
            raise ServiceUnavailable("no worker yet")
        return NodeOutput(node.encode())

    assert await run_dag(DIAMOND, REQUEST, settings(retries=1), runner) == {
        "agg": NodeOutput(b"agg")
    }
    failures["pre"] = 5
    expected = r"^Error executing pre: no worker yet \(failed 2 attempts\)$"
    with pytest.raises(NodeFailed, match=expected):
        await run_dag(DIAMOND, REQUEST, settings(retries=1), runner)


async def test_a_failure_cancels_the_other_branch() -> None:
    cancelled: list[str] = []
    m2_started = trio.Event()

    async def runner(node: str, inputs: list[Input]) -> NodeOutput:
        if node == "m2":
            m2_started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.append(node)
        if node == "m1":
            await m2_started.wait()
            raise ServiceUnavailable("m1 is down")
        return NodeOutput(b"ok")

    with trio.fail_after(5), pytest.raises(NodeFailed, match="Error executing m1: m1 is down"):
        await run_dag(DIAMOND, REQUEST, settings(), runner)
    assert cancelled == ["m2"]


async def test_cancelling_the_request_cancels_every_running_node() -> None:
    running: set[str] = set()
    cancelled: list[str] = []
    both = trio.Event()

    async def runner(node: str, inputs: list[Input]) -> NodeOutput:
        if node == "pre":
            return NodeOutput(b"")
        running.add(node)
        if running == {"m1", "m2"}:
            both.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(node)
        raise AssertionError("unreachable")

    async def cancel_when_both_run(scope: trio.CancelScope) -> None:
        await both.wait()
        scope.cancel()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_when_both_run, scope)
                await run_dag(DIAMOND, REQUEST, settings(), runner)
    assert scope.cancelled_caught
    assert sorted(cancelled) == ["m1", "m2"]
