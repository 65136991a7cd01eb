"""Workflows (contract §2.7) against a running server: .war archives built here, node models and
functions in real worker processes, every call over a real socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_config, wait_until
from tests.support.models import BROKEN_INIT_HANDLER, handler_archive
from tests.support.workflows import (
    FLAKY_FUNCTION,
    MAX_MODEL,
    SUM_MODEL,
    WORKFLOW_HANDLER,
    workflow_archive,
)

PIPELINE_SPEC = """
models:
  min-workers: 1
  max-workers: 2
  batch-size: 1
  max-batch-delay: 20
  m_sum:
    url: sum.mar
  m_max:
    url: max.mar
    max-workers: 3
dag:
  pre: [m_sum, m_max]
  m_sum: [agg]
  m_max: [agg]
"""

SOLO_SPEC = """
dag:
  echo: []
"""

FAULTS_SPEC = """
models:
  retry-attempts: 1
  slow:
    url: sum.mar
    min-workers: 2
    max-workers: 2
    timeout-ms: 1500
    retry-attempts: 0
dag:
  pre: [slow]
  slow: [flaky]
"""


def _models(server: Server) -> set[str]:
    return {m.name for m in server.state.registry.all_versions()}


async def _register(server: Server, url: str, **params: str) -> httpx.Response:
    return await server.management.post("/workflows", params={"url": url, **params})


async def _wfpredict(server: Server, name: str, body: str, **headers: str) -> httpx.Response:
    headers = {"content-type": "text/plain", **headers}
    return await server.inference.post(f"/wfpredict/{name}", content=body, headers=headers)


def _error(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


async def test_workflow_registers_runs_both_branches_and_unregisters(
    server_factory: Any, model_store: Path
) -> None:
    # Workflows are not gated by model API control (contract §0.7): switch it off to show it.
    server: Server = await server_factory(make_config(model_store, enable_model_api=False))
    handler_archive(model_store, "sum", SUM_MODEL)
    handler_archive(model_store, "max", MAX_MODEL)
    workflow_archive(model_store, "pipeline", PIPELINE_SPEC)
    workflow_archive(model_store, "solo", SOLO_SPEC)

    reply = await _register(server, "pipeline.war")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "status": "Workflow pipeline has been registered and scaled successfully."
    }
    reply = await server.management.post(
        "/workflows", json={"url": "solo.war", "workflow_name": "solo"}
    )
    assert reply.status_code == 200, reply.text
    nodes = {"pipeline__pre", "pipeline__m_sum", "pipeline__m_max", "pipeline__agg"}
    assert nodes | {"solo__echo"} <= _models(server)
    # Node models are ordinary models, with the spec's settings; none is snapshotted.
    described = (await server.management.get("/models/pipeline__m_max")).json()[0]
    assert (described["minWorkers"], described["maxWorkers"]) == (1, 3)
    assert described["maxBatchDelay"] == 20
    assert not set(server.state.model_states()) & (nodes | {"solo__echo"})

    duplicate = await _register(server, "pipeline.war")
    assert _error(duplicate, 409)["message"] == "Workflow pipeline is already registered."

    described = await server.management.get("/workflows/pipeline")
    assert described.status_code == 200
    assert described.json() == [
        {
            "workflowName": "pipeline",
            "workflowUrl": "pipeline.war",
            "minWorkers": 1,
            "maxWorkers": 2,
            "batchSize": 1,
            "maxBatchDelay": 20,
            "workflowDag": "{pre=[m_sum, m_max], m_sum=[agg], m_max=[agg]}",
        }
    ]
    listed = (await server.management.get("/workflows", params={"limit": "1"})).json()
    assert listed == {
        "nextPageToken": "1",
        "workflows": [{"workflowName": "pipeline", "workflowUrl": "pipeline.war"}],
    }
    listed = await server.management.get(
        "/workflows", params={"limit": "1", "next_page_token": "1"}
    )
    assert listed.json() == {
        "nextPageToken": "2",
        "workflows": [{"workflowName": "solo", "workflowUrl": "solo.war"}],
    }
    assert "nextPageToken" not in (await server.management.get("/workflows")).json()

    # The answer combines both parallel branches, as the aggregating function saw them.
    predicted = await _wfpredict(server, "pipeline", "1,5,3")
    assert predicted.status_code == 200, predicted.text
    assert predicted.headers["content-type"] == "application/json"
    assert predicted.json() == {"m_max": {"max": 5.0}, "m_sum": {"sum": 9.0}}
    solo = await _wfpredict(server, "solo", "hi")
    assert solo.json() == {"echo": "hi"}

    missing = await _wfpredict(server, "nope", "1")
    assert _error(missing, 404) == {
        "code": 404,
        "type": "WorkflowNotFoundException",
        "message": "Workflow not found: nope",
    }
    assert _error(await server.management.get("/workflows/nope"), 404)["type"] == (
        "WorkflowNotFoundException"
    )

    deleted = await server.management.delete("/workflows/pipeline")
    assert deleted.status_code == 200
    assert deleted.json() == {"status": 'Workflow "pipeline" unregistered'}
    assert not {m for m in _models(server) if m.startswith("pipeline__")}
    assert "solo__echo" in _models(server)
    assert _error(await server.management.delete("/workflows/pipeline"), 404)["message"] == (
        "Workflow not found: pipeline"
    )
    assert _error(await _wfpredict(server, "pipeline", "1"), 404)


async def test_node_timeout_failure_and_retries(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "flaky-calls"
    handler_archive(model_store, "sum", SUM_MODEL)
    source = WORKFLOW_HANDLER + FLAKY_FUNCTION.format(counter=str(counter))
    workflow_archive(model_store, "faults", FAULTS_SPEC, source)
    reply = await _register(server, "faults.war")
    assert reply.status_code == 200, reply.text

    # flaky fails its first call; one retry (the global retry-attempts) gets it through.
    ok = await _wfpredict(server, "faults", "1,2")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"flaky": {"sum": 3.0}, "calls": 2}
    assert counter.read_text() == "xx"

    failed = _error(await _wfpredict(server, "faults", "fail"), 500)
    assert failed["type"] == "InternalServerException"
    assert failed["message"].startswith("Error executing pre: ")
    assert "failed 2 attempts" in failed["message"]

    # The slow node sleeps past its timeout-ms (and has no retries): the request fails naming
    # it, while its second worker still serves the next request.
    slow = _error(await _wfpredict(server, "faults", "1,2", **{"x-sleep": "6"}), 500)
    assert slow["message"].startswith("Error executing slow: timed out after 1500 ms")
    after = await _wfpredict(server, "faults", "4,4")
    assert after.status_code == 200, after.text
    assert after.json() == {"flaky": {"sum": 8.0}, "calls": 3}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "dag:\n  echo: [pre]\n  pre: [agg]\n  agg: [pre]\n",
            "Invalid DAG: node pre is on a cycle: pre -> agg -> pre.",
        ),
        (
            "dag:\n  pre: [ghost]\n",
            "Invalid DAG: node ghost is neither a model of the models section nor a function "
            "of the workflow handler.",
        ),
        (
            "dag:\n  pre: [agg]\n  echo: [agg]\n",
            "Invalid DAG: node echo has no path from the start node pre (a workflow has "
            "exactly one start node).",
        ),
    ],
)
async def test_invalid_dag_is_refused_naming_the_node(
    server: Server, model_store: Path, spec: str, message: str
) -> None:
    workflow_archive(model_store, "bad", spec)
    body = _error(await _register(server, "bad.war"), 400)
    assert body == {"code": 400, "type": "InvalidDAGException", "message": message}
    assert not _models(server)
    assert (await server.management.get("/workflows")).json() == {"workflows": []}


async def test_failed_node_unregisters_the_whole_workflow(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "broken", BROKEN_INIT_HANDLER)
    spec = "models:\n  bad:\n    url: broken.mar\ndag:\n  pre: [bad]\n"
    workflow_archive(model_store, "half", spec)
    body = _error(await _register(server, "half.war"), 500)
    assert body["type"] == "WorkflowException"
    assert body["message"] == (
        "Workflow half has failed to register. Failures: [Workflow Node half__bad failed to "
        "register. Details: Failed to start workers for model half__bad version: 1.0]"
    )
    assert not _models(server)
    assert not server.state.workflows.owned_models()
    assert _error(await server.management.get("/workflows/half"), 404)
    # The name is free again.
    assert (await server.management.get("/workflows")).json() == {"workflows": []}


async def test_workflow_store_holds_archives_and_downloads_are_removed(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    workflow_store = tmp_path / "workflow_store"
    workflow_store.mkdir()
    config = make_config(model_store, workflow_store=str(workflow_store))
    server: Server = await server_factory(config)
    workflow_archive(workflow_store, "solo", SOLO_SPEC)
    workflow_archive(model_store, "elsewhere", SOLO_SPEC)
    # Archive names resolve in the workflow store, not in the model store.
    assert _error(await _register(server, "elsewhere.war"), 404)["type"] == (
        "ModelNotFoundException"
    )
    assert (await _register(server, "solo.war")).status_code == 200

    # A URL is downloaded into the workflow store; unregistering deletes the copy (only).
    outside = tmp_path / "outside"
    outside.mkdir()
    original = workflow_archive(outside, "fetched", SOLO_SPEC)
    reply = await _register(server, original.as_uri())
    assert reply.status_code == 200, reply.text
    assert (workflow_store / "fetched.war").is_file()
    described = (await server.management.get("/workflows/fetched")).json()[0]
    assert described["workflowUrl"] == original.as_uri()
    assert (await _wfpredict(server, "fetched", "x")).json() == {"echo": "x"}
    assert (await server.management.delete("/workflows/fetched")).status_code == 200
    assert not (workflow_store / "fetched.war").exists()
    assert original.is_file()
    assert (workflow_store / "solo.war").is_file()


SLOW_INIT_MODEL = """
import time


class SlowInit:
    def initialize(self, context):
        time.sleep(5)

    def handle(self, data, context):
        return ["late"] * len(data)
"""


async def test_a_registration_the_client_abandons_leaves_nothing(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "slowinit", SLOW_INIT_MODEL)
    spec = "models:\n  slow:\n    url: slowinit.mar\ndag:\n  pre: [slow]\n"
    workflow_archive(model_store, "gone", spec)

    async def has_slow_model() -> bool:
        return "gone__slow" in _models(server)

    async def nothing_left() -> bool:
        models = {m for m in _models(server) if m.startswith("gone__")}
        return not models and not server.state.workflows.owned_models()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_register, server, "gone.war")
        await wait_until(has_slow_model)
        assert "gone__slow" not in server.state.model_states()  # reserved, never snapshotted
        nursery.cancel_scope.cancel()  # the client leaves while the workers still load
    await wait_until(nothing_left)
    assert (await server.management.get("/workflows")).json() == {"workflows": []}


DISCONNECT_SPEC = """
models:
  slow:
    url: sum.mar
    min-workers: 1
    max-workers: 1
dag:
  pre: [slow]
  slow: [record]
"""

# Appends each input it gets to a file: shows which requests' DAGs reached the last node.
RECORD_FUNCTION = """

LOG = {log!r}


def record(data, context):
    if data is None:
        return None
    with open(LOG, "a") as f:
        for row in data:
            f.write(json.dumps(json.loads(_text(row["body"]))) + "\\n")
    return [{{"recorded": True}} for row in data]
"""


async def test_a_client_disconnect_cancels_the_rest_of_the_dag(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "recorded"
    handler_archive(model_store, "sum", SUM_MODEL)
    source = WORKFLOW_HANDLER + RECORD_FUNCTION.format(log=str(log))
    workflow_archive(model_store, "gone", DISCONNECT_SPEC, source)
    assert (await _register(server, "gone.war")).status_code == 200
    # The first client leaves while its request is in the slow model.
    with pytest.raises(httpx.ReadTimeout):
        await server.inference.post(
            "/wfpredict/gone",
            content="1,2",
            headers={"content-type": "text/plain", "x-sleep": "2"},
            timeout=0.5,
        )
    # The second queues behind it on the model's one worker, so when it is answered the first
    # has left the model too; had its DAG gone on, its record call would have come first.
    second = await _wfpredict(server, "gone", "3,4")
    assert second.status_code == 200, second.text
    assert log.read_text().splitlines() == ['{"sum": 7.0}']
