"""Inference API route handlers (contract §1): ping, predictions, explanations, API docs."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import trio

from backend.wire import pb
from trioserve.api import openapi
from trioserve.api.state import ServerState
from trioserve.errors import InternalServerError, ServeError
from trioserve.http.request import Request, body_inputs
from trioserve.http.response import Response, StreamingResponse, json_response, status_response
from trioserve.models.job import ANSWER_GRACE_S, DEFAULT_QUEUE_TIMEOUT_S, Job, Outcome
from trioserve.models.model import ModelVersion
from trioserve.models.worker import WorkerState, WorkerSupervisor


def _counts_as_healthy(worker: WorkerSupervisor) -> bool:
    """Loaded its model at least once and not given up on (contract §8.7: a worker restarting
    after a crash still counts until it has failed for maxRetryTimeoutInSec). A worker still
    loading for the first time does not count, so startup models make /ping wait."""
    if worker.retiring or worker.state in (WorkerState.FAILED, WorkerState.STOPPED):
        return False
    return worker.loaded.is_set() and worker.load_error is None


def is_healthy(state: ServerState) -> bool:
    """Healthy iff the startup models are registered and every model's default version has at
    least its minimum of healthy workers."""
    if state.starting:
        return False
    for model in state.registry.defaults():
        healthy = sum(1 for w in model.workers if _counts_as_healthy(w))
        if healthy < model.settings.min_workers:
            return False
    return True


def health(state: ServerState) -> tuple[str, int]:
    """The /ping status text and its HTTP status (gRPC Ping answers OK with the text)."""
    if state.draining:
        return "Draining", 503
    return ("Healthy", 200) if is_healthy(state) else ("Unhealthy", 500)


async def ping(state: ServerState, request: Request) -> Response:
    return status_response(*health(state))


async def api_description(state: ServerState, request: Request) -> Response:
    return json_response(openapi.inference_api())


async def model_api_description(state: ServerState, request: Request, model: str) -> Response:
    state.registry.resolve(model)
    return json_response(openapi.model_inference_api(model))


def _job(request: Request, command: int, explain: bool, url_path: str) -> Job:
    headers = list(request.headers)
    headers.append(("explain", "True" if explain else "False"))
    headers.append(("url_path", url_path))
    return Job(request.request_id, body_inputs(request), headers, command)


def _response(result: pb.Response) -> tuple[int, str | None, str | None, list[tuple[str, str]]]:
    headers = [(h.name, h.value) for h in result.headers]
    return result.status or 200, result.reason or None, result.content_type or None, headers


async def start_job(
    model: ModelVersion, job: Job, url_version: str | None
) -> tuple[str, pb.Response]:
    """Queue a job on a model version and wait for its first outcome: the transport-neutral
    core of a prediction, shared by REST and gRPC. Returns the outcome's kind ("final", or
    "chunk" when the handler streams: read the rest with :func:`later_chunks`) and the
    response. A cancelled wait drops the job (a queued one is never run).

    Raises:
        ServeError: no worker or a full queue (503), or the worker's error for this job.
    """
    model.metrics.inference_request(url_version)
    model.submit_nowait(job, url_version=url_version)
    kind, value = await job.first_outcome(
        model.name,
        queue_timeout=queue_timeout(model),
        response_timeout=model.settings.response_timeout,
    )
    if isinstance(value, ServeError):
        raise value
    model.metrics.inference_done(url_version, trio.current_time() - job.enqueued_at)
    return kind, value


def queue_timeout(model: ModelVersion) -> float:
    """How long a job may wait for a worker: the model's clientTimeoutInMills, else the
    server default."""
    client_ms = model.settings.client_timeout_ms
    return client_ms / 1000 if client_ms > 0 else DEFAULT_QUEUE_TIMEOUT_S


def stream_chunk_timeout(model: ModelVersion) -> float:
    """How long a streamed response may go quiet between two chunks."""
    return model.settings.response_timeout + ANSWER_GRACE_S


async def later_chunks(job: Job, chunk_timeout: float) -> AsyncGenerator[pb.Response, None]:
    """The chunks a streaming handler sends after the first, the final response last; closing
    the iterator early drops the job.

    Raises:
        ServeError: the worker failed mid-stream, or ``chunk_timeout`` passed with no chunk.
    """
    try:
        while True:
            outcome: Outcome | None = None
            with trio.move_on_after(chunk_timeout):
                outcome = await job.next_outcome()
            if outcome is None:
                raise InternalServerError(f"streamed response of job {job.request_id} stalled")
            kind, value = outcome
            if isinstance(value, ServeError):
                raise value
            yield value
            if kind == "final":
                return
    finally:
        if not job.done:
            job.cancelled = True


async def _stream(job: Job, first: bytes, chunk_timeout: float) -> AsyncIterator[bytes]:
    try:
        yield first
        # A ServeError raised here comes after the head is out: the connection ends without
        # the final chunk, which is how the client learns the body is incomplete.
        async with aclosing(later_chunks(job, chunk_timeout)) as chunks:
            async for chunk in chunks:
                yield chunk.body
    finally:
        if not job.done:
            job.cancelled = True


async def predict(
    state: ServerState,
    request: Request,
    model: str,
    version: str | None = None,
    rest: str = "",
    explain: bool = False,
) -> Response | StreamingResponse:
    target = state.registry.resolve(model, version)
    command = pb.EXPLAIN if explain else pb.PREDICT
    job = _job(request, command, explain, rest)
    kind, value = await start_job(target, job, version)
    status, reason, content_type, headers = _response(value)
    if kind == "final":
        return Response(status, value.body, content_type, headers, reason)
    chunks = _stream(job, value.body, stream_chunk_timeout(target))
    return StreamingResponse(status, chunks, content_type, headers, reason)


async def explain(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response | StreamingResponse:
    return await predict(state, request, model, version, explain=True)
