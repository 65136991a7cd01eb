"""Inference API route handlers (contract §1): ping, predictions, explanations, API docs."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
    """Healthy iff every model's default version has at least its minimum of healthy workers."""
    for model in state.registry.defaults():
        healthy = sum(1 for w in model.workers if _counts_as_healthy(w))
        if healthy < model.settings.min_workers:
            return False
    return True


async def ping(state: ServerState, request: Request) -> Response:
    if is_healthy(state):
        return status_response("Healthy")
    return status_response("Unhealthy", 500)


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


async def run_job(
    model: ModelVersion, job: Job, url_version: str | None
) -> Response | StreamingResponse:
    """Queue a job and turn its outcome into a response; a cancelled wait drops the job."""
    model.submit_nowait(job, url_version=url_version)
    kind, value = await job.first_outcome(
        model.name,
        queue_timeout=queue_timeout(model),
        response_timeout=model.settings.response_timeout,
    )
    if isinstance(value, ServeError):
        raise value
    status, reason, content_type, headers = _response(value)
    if kind == "final":
        return Response(status, value.body, content_type, headers, reason)
    chunks = _stream(job, value.body, model.settings.response_timeout + ANSWER_GRACE_S)
    return StreamingResponse(status, chunks, content_type, headers, reason)


def queue_timeout(model: ModelVersion) -> float:
    """How long a job may wait for a worker: the model's clientTimeoutInMills, else the
    server default."""
    client_ms = model.settings.client_timeout_ms
    return client_ms / 1000 if client_ms > 0 else DEFAULT_QUEUE_TIMEOUT_S


async def _stream(job: Job, first: bytes, chunk_timeout: float) -> AsyncIterator[bytes]:
    yield first
    try:
        while True:
            outcome: Outcome | None = None
            with trio.move_on_after(chunk_timeout):
                outcome = await job.next_outcome()
            if outcome is None:
                raise InternalServerError(f"streamed response of job {job.request_id} stalled")
            kind, value = outcome
            if isinstance(value, ServeError):
                # The head is out already: raising makes the connection end without the final
                # chunk, which is how the client learns the body is incomplete.
                raise value
            yield value.body
            if kind == "final":
                return
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
    return await run_job(target, _job(request, command, explain, rest), version)


async def explain(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response | StreamingResponse:
    return await predict(state, request, model, version, explain=True)
