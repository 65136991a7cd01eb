"""Workflow API route handlers (contract §2.7): register, list, describe and unregister on the
management port, ``/wfpredict/{w}`` on the inference port.

A workflow's nodes are registered through the ordinary model register path as ``{w}__{node}``
(so workers, batching and metrics apply to them): a model node from its spec ``url``, a function
node from the extracted ``.war`` with ``<handler module>:<function>`` as its handler, so the
function runs in a worker process. Workflow calls are not gated by ``enable_model_api`` and
are never snapshotted.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import trio

from backend.wire import pb
from trioserve.api.inference import later_chunks, start_job, stream_chunk_timeout
from trioserve.api.management import StatusReply, unregister_version
from trioserve.api.register import (
    RegisterParams,
    fetch_and_open,
    int_param,
    register,
    request_values,
    true_param,
)
from trioserve.api.state import ServerState
from trioserve.errors import BadRequest, InternalServerError, ModelNotFound, ServeError
from trioserve.http.request import Input, Request, body_inputs
from trioserve.http.response import JSON, Response, json_response, status_response
from trioserve.models import store
from trioserve.models.job import Job
from trioserve.models.model import ModelVersion
from trioserve.workflows.archive import WorkflowArchive, open_war, remove_extraction
from trioserve.workflows.dag import build_dag, java_map_text
from trioserve.workflows.errors import InvalidWorkflow, WorkflowError
from trioserve.workflows.executor import NodeOutput, run_dag
from trioserve.workflows.registry import Workflow
from trioserve.workflows.spec import NAME_PATTERN, handler_functions, parse_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkflowParams:
    url: str | None
    workflow_name: str | None = None
    response_timeout: int | None = None
    startup_timeout: int | None = None
    s3_sse_kms: bool = False  # sign the downloads (the .war and every model node's url)

    @classmethod
    def from_request(cls, request: Request) -> WorkflowParams:
        """Query parameters, or the same keys in a JSON body (which wins)."""
        values = request_values(request)
        url = values.get("url")
        name = values.get("workflow_name")
        return cls(
            url=None if url is None else str(url),
            workflow_name=str(name) if name else None,
            response_timeout=int_param(values.get("response_timeout")),
            startup_timeout=int_param(values.get("startup_timeout")),
            s3_sse_kms=true_param(values.get("s3_sse_kms", False)),
        )


def _workflow(
    archive: WorkflowArchive, params: WorkflowParams, url: str, downloaded: bool
) -> Workflow:
    """Check the archive's spec and graph; the workflow it describes (not yet registered)."""
    name = params.workflow_name or archive.manifest.workflow_name
    if not name:
        raise InvalidWorkflow("Workflow name is not defined.")
    if not NAME_PATTERN.match(name):
        raise InvalidWorkflow(f"Invalid workflow name {name!r} (allowed: {NAME_PATTERN.pattern}).")
    spec = parse_spec(archive.spec_text)
    functions: frozenset[str] = frozenset()
    if archive.handler_source is not None and archive.manifest.handler is not None:
        functions = handler_functions(archive.handler_source, archive.manifest.handler)
    dag = build_dag(spec.edges, spec.models.keys(), functions)
    return Workflow(name, url, archive, spec, dag, downloaded)


def _node_params(workflow: Workflow, node: str, params: WorkflowParams) -> RegisterParams:
    settings = workflow.spec.settings(node)
    model = workflow.spec.models.get(node)
    if model is not None:
        url, handler = model.url, None
    else:
        # The extracted .war is used in place as the function's model directory.
        url = str(workflow.archive.directory)
        handler = f"{workflow.archive.handler_module}:{node}"
    return RegisterParams(
        url=url,
        model_name=workflow.model_name(node),
        handler=handler,
        batch_size=settings.batch_size,
        max_batch_delay=settings.max_batch_delay,
        initial_workers=settings.min_workers,
        synchronous=True,
        response_timeout=params.response_timeout,
        startup_timeout=params.startup_timeout,
        s3_sse_kms=params.s3_sse_kms and model is not None,
    )


async def _register_node(
    state: ServerState,
    workflow: Workflow,
    node: str,
    params: WorkflowParams,
    registered: list[ModelVersion],
    failures: list[str],
) -> None:
    model_name = workflow.model_name(node)
    try:
        model, started, ready = await register(state, _node_params(workflow, node, params))
    except ServeError as exc:
        failures.append(f"Workflow Node {model_name} failed to register. Details: {exc.message}")
        return
    registered.append(model)
    if ready < started:
        failures.append(
            f"Workflow Node {model_name} failed to register. Details: Failed to start workers "
            f"for model {model_name} version: {model.version}"
        )
        return
    wanted = workflow.spec.settings(node).max_workers
    if wanted > model.settings.max_workers:
        model.scale(model.settings.min_workers, wanted)


async def _unregister_models(state: ServerState, models: list[tuple[str, str | None]]) -> list[str]:
    """Unregister (name, version) pairs concurrently; return what failed. A model already gone
    (unregistered by hand) is not a failure."""
    failures: list[str] = []

    async def one(name: str, version: str | None) -> None:
        try:
            await unregister_version(state, name, version)
        except ModelNotFound:
            logger.info("workflow node %s was already unregistered", name)
        except ServeError as exc:
            failures.append(f"Error while unregistering workflow node {name}: {exc.message}")

    async with trio.open_nursery() as nursery:
        for name, version in models:
            nursery.start_soon(one, name, version)
    return failures


def _discard(workflow: Workflow) -> None:
    remove_extraction(workflow.archive)
    if workflow.downloaded:
        store.remove_download(workflow.source)


async def register_workflow_core(state: ServerState, params: WorkflowParams) -> StatusReply:
    """Register a workflow: fetch and check its archive, then register every node's model and
    wait for their workers (always synchronous).

    Raises:
        BadRequest: no url; InvalidWorkflow / InvalidDag: the archive or spec is unusable.
        Conflict: the workflow name is taken.
        WorkflowError: a node failed to register; every node registered so far is
            unregistered again, so no part of the workflow is left.
    """
    if params.url is None:
        raise BadRequest("Parameter url is required.")
    config = state.config
    workflow_store = config.workflow_store or config.model_store
    archive, path, downloaded = await fetch_and_open(
        state, params.url, params.s3_sse_kms, workflow_store, open_war
    )
    try:
        workflow = _workflow(archive, params, params.url, downloaded)
        state.workflows.reserve(workflow.name, workflow.model_names())
    except BaseException:
        remove_extraction(archive)
        if downloaded:
            store.remove_download(path)
        raise
    registered: list[ModelVersion] = []
    failures: list[str] = []
    done = False
    # Names another model already holds: their nodes fail (409), and a rollback leaves them be.
    taken = {m for m in workflow.model_names() if m in state.registry.models}
    try:
        async with trio.open_nursery() as nursery:
            for node in workflow.dag.nodes:
                nursery.start_soon(
                    _register_node, state, workflow, node, params, registered, failures
                )
        if not failures:
            state.workflows.add(workflow)
            done = True
            return StatusReply(
                f"Workflow {workflow.name} has been registered and scaled successfully."
            )
    finally:
        if not done:
            # Also when the registration itself is cancelled: no half workflow is left.
            ours: dict[str, str | None] = {m.name: m.version for m in registered}
            # A registration cancelled while waiting for workers has its model in the registry
            # without having returned it.
            for name in workflow.model_names():
                if name not in ours and name not in taken and name in state.registry.models:
                    ours[name] = None
            with trio.CancelScope(shield=True):
                failures += await _unregister_models(state, list(ours.items()))
            state.workflows.release(workflow.name)
            _discard(workflow)
    raise WorkflowError(
        f"Workflow {workflow.name} has failed to register. Failures: [{', '.join(failures)}]"
    )


async def unregister_workflow_core(state: ServerState, name: str) -> StatusReply:
    """Remove a workflow and unregister all its node models.

    Raises:
        WorkflowNotFound: no such workflow.
        InternalServerError: a node model could not be unregistered (the workflow is gone).
    """
    workflow = state.workflows.remove(name)
    try:
        with trio.CancelScope(shield=True):  # a client that leaves must not strand its models
            failures = await _unregister_models(
                state, [(model, None) for model in workflow.model_names()]
            )
    finally:
        state.workflows.release(name)
        _discard(workflow)
    if failures:
        raise InternalServerError(
            f"Error while unregistering the workflow {name}. Details: [{', '.join(failures)}]"
        )
    return StatusReply(f'Workflow "{name}" unregistered')


def describe_json(workflow: Workflow) -> dict[str, Any]:
    defaults = workflow.spec.defaults
    return {
        "workflowName": workflow.name,
        "workflowUrl": workflow.url,
        "minWorkers": defaults.min_workers,
        "maxWorkers": defaults.max_workers,
        "batchSize": defaults.batch_size,
        "maxBatchDelay": defaults.max_batch_delay,
        "workflowDag": java_map_text(workflow.dag.edges),
    }


def list_page(state: ServerState, limit: int, offset: int) -> dict[str, Any]:
    """One page of workflows sorted by name, with the model list's paging rules (§2.5)."""
    if limit > 100 or limit < 0:
        limit = 100
    offset = max(offset, 0)
    workflows = state.workflows.sorted()
    body: dict[str, Any] = {}
    if offset + limit <= len(workflows):
        body["nextPageToken"] = str(offset + limit)
    body["workflows"] = [
        {"workflowName": w.name, "workflowUrl": w.url} for w in workflows[offset : offset + limit]
    ]
    return body


async def _run_node(
    state: ServerState,
    workflow: Workflow,
    headers: list[tuple[str, str]],
    node: str,
    inputs: list[Input],
) -> NodeOutput:
    model = state.registry.resolve(workflow.model_name(node))
    # A fresh id per attempt: a retry must not share an id with a timed-out job still running.
    job = Job(str(uuid.uuid4()), inputs, headers, pb.PREDICT)
    kind, value = await start_job(model, job, None)
    body = value.body
    if kind == "chunk":  # a streaming handler: the node's output is the whole stream
        parts = [body]
        async with aclosing(later_chunks(job, stream_chunk_timeout(model))) as chunks:
            async for chunk in chunks:
                parts.append(chunk.body)
        body = b"".join(parts)
    return NodeOutput(body, value.content_type)


def _leaf_value(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


async def predict_core(state: ServerState, name: str, request: Request) -> Response:
    """Run a request through the workflow: one leaf answers with its output as is
    (``application/json``), several with one JSON object keyed by leaf."""
    workflow = state.workflows.resolve(name)
    headers = [*request.headers, ("explain", "False"), ("url_path", "")]

    async def run_node(node: str, inputs: list[Input]) -> NodeOutput:
        return await _run_node(state, workflow, headers, node, inputs)

    outputs = await run_dag(workflow.dag, body_inputs(request), workflow.spec.settings, run_node)
    if len(outputs) == 1:
        (only,) = outputs.values()
        return Response(200, only.body, JSON)
    return json_response({leaf: _leaf_value(out.body) for leaf, out in outputs.items()})


# REST route functions: parse the request, call the core, render JSON.


async def register_workflow(state: ServerState, request: Request) -> Response:
    reply = await register_workflow_core(state, WorkflowParams.from_request(request))
    return status_response(reply.text, reply.code)


async def list_workflows(state: ServerState, request: Request) -> Response:
    limit = int_param(request.param("limit"))
    offset = int_param(request.param("next_page_token"))
    return json_response(list_page(state, 100 if limit is None else limit, offset or 0))


async def describe_workflow(state: ServerState, request: Request, workflow: str) -> Response:
    return json_response([describe_json(state.workflows.resolve(workflow))])


async def unregister_workflow(state: ServerState, request: Request, workflow: str) -> Response:
    reply = await unregister_workflow_core(state, workflow)
    return status_response(reply.text, reply.code)


async def predict_workflow(state: ServerState, request: Request, workflow: str) -> Response:
    request.model = workflow  # for the access log
    return await predict_core(state, workflow, request)
