"""Management API route handlers (contract §2): register, scale, describe, list, unregister."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from backend.wire import pb
from trioserve.api import openapi
from trioserve.api.inference import queue_timeout
from trioserve.api.register import RegisterParams, int_param, register, true_param
from trioserve.api.state import ServerState, snapshot_after
from trioserve.errors import (
    BadRequest,
    InternalServerError,
    MethodNotAllowed,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
)
from trioserve.http.request import Request
from trioserve.http.response import Response, json_response, status_response
from trioserve.models import store
from trioserve.models.archive import remove_extraction
from trioserve.models.gpu import gpu_usage
from trioserve.models.job import Job
from trioserve.models.model import ModelVersion
from trioserve.models.worker import WorkerState, WorkerSupervisor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusReply:
    """What a management call that changes models answers: REST sends ``{"status": text}``
    with ``code``; gRPC sends the text (any 2xx code is OK there)."""

    text: str
    code: int = 200


# The transport-neutral cores below are what REST (the route functions further down) and gRPC
# (trioserve/grpc/) both call; each transport only parses its parameters and renders the result.


@snapshot_after
async def register_version(state: ServerState, params: RegisterParams) -> StatusReply:
    """Register a model version and start its workers (contract §2.2)."""
    model, started, ready = await register(state, params)
    prefix = f'Model "{model.name}" Version: {model.version}'
    if started == 0:
        return StatusReply(
            f"{prefix} registered with 0 initial workers. "
            "Use scale workers API to add workers for the model."
        )
    if ready < 0:
        return StatusReply("Processing worker updates...", 202)
    if ready == 0:
        await _unregister(state, model)
        raise InternalServerError(
            f"Failed to start workers for model {model.name} version: {model.version}"
        )
    if ready < started:
        return StatusReply("Workers scaling in progress...", 206)
    return StatusReply(f"{prefix} registered with {ready} initial workers")


@snapshot_after
async def scale(
    state: ServerState,
    model: str,
    version: str | None,
    min_workers: int,
    max_workers: int | None,
    synchronous: bool,
    grace_s: int | None = None,
) -> StatusReply:
    """Set a version's min/max workers and start or stop workers to match (contract §2.3);
    ``max_workers`` None means ``min_workers``."""
    target = state.registry.resolve(model, version)
    if max_workers is None:
        max_workers = min_workers
    if max_workers < min_workers:
        raise BadRequest("max_worker cannot be less than min_worker.")
    if min_workers < 0:
        raise InternalServerError(f"min_worker cannot be negative: {min_workers}")
    before = target.live_workers()
    # TorchServe's scale `timeout`: -1 (or absent) waits for busy workers' batches; 0 or more
    # re-queues a batch still running after that many seconds.
    grace = None if grace_s is None or grace_s < 0 else float(grace_s)
    started = target.scale(min_workers, max_workers, grace=grace)
    if not synchronous:
        return StatusReply("Processing worker updates...", 202)
    retired = [w for w in before if w.retiring]
    ready, _ = await target.wait_workers(started)
    # A synchronous scale-down answers once the retired workers' processes are gone (a busy one
    # finishes its batch first), as TorchServe waits for the kill; bounded like unregister.
    with trio.move_on_after(state.config.unregister_model_timeout):
        await _wait_stopped(retired)
    if started and ready == 0:
        # TorchServe prints the path's version, literally "null" when none was given.
        raise InternalServerError(
            f"Failed to start workers for model {model} version: {version or 'null'}"
        )
    if ready < len(started):
        return StatusReply("Workers scaling in progress...", 206)
    suffix = f", version: {version}" if version else ""
    return StatusReply(f"Workers scaled to {min_workers} for model: {model}{suffix}")


async def _wait_stopped(workers: list[WorkerSupervisor]) -> None:
    """Wait until each worker's supervisor has finished (its process is reaped)."""
    for worker in workers:
        await worker.stopped.wait()


def _worker_json(worker: Any) -> dict[str, Any]:
    memory = 0
    if worker.pid > 0:
        try:
            memory = psutil.Process(worker.pid).memory_info().rss
        except psutil.Error:
            memory = 0
    ready = worker.state in (WorkerState.READY, WorkerState.BUSY)
    return {
        "id": str(worker.id),
        "startTime": worker.start_time_text(),
        "status": "READY" if ready else "UNLOADING",
        "memoryUsage": memory,
        "pid": worker.pid,
        "gpu": worker.gpu_id >= 0,
        "gpuUsage": gpu_usage(worker.gpu_id, os.environ),
    }


def describe_json(model: ModelVersion) -> dict[str, Any]:
    s = model.settings
    stats = model.statistics()
    body: dict[str, Any] = {
        "modelName": model.name,
        "modelVersion": model.version,
        "modelUrl": model.url,
        "runtime": s.runtime,
        "minWorkers": s.min_workers,
        "maxWorkers": s.max_workers,
        "batchSize": s.batch_size,
        "maxBatchDelay": s.max_batch_delay,
        "responseTimeout": s.response_timeout,
        "startupTimeout": s.startup_timeout,
        "maxRetryTimeoutInSec": s.max_retry_timeout_sec,
        "clientTimeoutInMills": s.client_timeout_ms,
        "parallelType": s.parallel_type,
        "parallelLevel": s.parallel_level,
        "deviceType": s.device_type,
    }
    if s.device_ids is not None:
        body["deviceIds"] = list(s.device_ids)
    body |= {
        "continuousBatching": False,
        "useJobTicket": False,
        "useVenv": False,
        "stateful": False,
        "sequenceMaxIdleMSec": 0,
        "sequenceTimeoutMSec": 0,
        "maxNumSequence": 0,
        "maxSequenceJobQueueSize": 0,
        "loadedAtStartup": s.loaded_at_startup,
        # Retired workers leave the list at once, as TorchServe drops them from its thread list.
        "workers": [
            _worker_json(w)
            for w in model.workers
            if w.state is not WorkerState.STOPPED and not w.retiring
        ],
        "jobQueueStatus": {
            "remainingCapacity": stats.remaining_capacity,
            "pendingRequests": stats.queued,
        },
    }
    return body


async def _customized(model: ModelVersion, request_id: str) -> str | None:
    job = Job(request_id, [], [("describe", "True")], pb.DESCRIBE)
    try:
        model.submit_nowait(job)
    except ServiceUnavailable:
        raise ServiceUnavailable(
            f'Model "{model.name}" has no worker to serve describe request. '
            "Please use scale workers API to add workers."
        ) from None
    _, value = await job.first_outcome(
        model.name,
        queue_timeout=queue_timeout(model),
        response_timeout=model.settings.response_timeout,
    )
    if isinstance(value, ServeError):
        raise value
    text = value.body.decode("utf-8", "replace")
    if not text.strip() or text.strip() == "null":
        return None
    return text


async def describe(
    state: ServerState, model: str, version: str | None, *, customized: bool, request_id: str
) -> list[dict[str, Any]]:
    """The describe array (contract §2.4): one version, the default, or "all"; ``customized``
    asks a worker for the handler's metadata (job ``request_id``)."""
    if version == "all":
        state.registry.resolve(model)
        return [describe_json(v) for v in state.registry.models[model].sorted_versions()]
    target = state.registry.resolve(model, version)
    body = describe_json(target)
    if customized:
        metadata = await _customized(target, request_id)
        if metadata is not None:
            # The docs define customizedMetadata as the handler's output as a JSON string.
            body["customizedMetadata"] = metadata
    return [body]


def list_page(state: ServerState, limit: int, offset: int) -> dict[str, Any]:
    """One page of the default versions, sorted by name (contract §2.5); a limit over 100 or
    negative is 100, a negative offset 0."""
    if limit > 100 or limit < 0:
        limit = 100
    offset = max(offset, 0)
    models = state.registry.defaults()
    page = models[offset : offset + limit]
    body: dict[str, Any] = {}
    if offset + limit <= len(models):
        body["nextPageToken"] = str(offset + limit)
    body["models"] = [{"modelName": m.name, "modelUrl": m.url} for m in page]
    return body


async def _unregister(state: ServerState, model: ModelVersion) -> None:
    """Drain and stop a version the registry no longer reaches, within unregister_model_timeout."""
    state.registry.discard(model)
    timeout = state.config.unregister_model_timeout
    with trio.move_on_after(timeout) as scope:
        await model.drain()
    model.stop()
    await model.stopped.wait()
    remove_extraction(model.archive)
    if model.downloaded:
        # The archive's source is where the download landed (the URL's path basename; the URL
        # itself may carry a query string).
        store.remove_download(model.archive.source)
    if scope.cancelled_caught:
        raise RequestTimeout(f"Timed out while cleaning resources: {model.name}")


@snapshot_after
async def unregister_version(state: ServerState, model: str, version: str | None) -> StatusReply:
    """Remove a version (None: the default) and stop its workers (contract §2.6)."""
    target = state.registry.remove(model, version)
    await _unregister(state, target)
    return StatusReply(f'Model "{model}" unregistered')


@snapshot_after
async def set_default_version(state: ServerState, model: str, version: str) -> StatusReply:
    state.registry.set_default(model, version)
    return StatusReply(f'Default version successfully updated for model "{model}" to "{version}"')


# REST route functions: parse the request, call the core, render JSON.


async def register_model(state: ServerState, request: Request) -> Response:
    if not state.config.enable_model_api:
        raise MethodNotAllowed()
    reply = await register_version(state, RegisterParams.from_request(request))
    return status_response(reply.text, reply.code)


async def scale_workers(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    min_raw = request.param("min_worker")
    min_workers = int_param(min_raw) if min_raw is not None else 1
    reply = await scale(
        state,
        model,
        version or request.param("model_version"),
        1 if min_workers is None else min_workers,
        int_param(request.param("max_worker")),
        true_param(request.param("synchronous")),
        int_param(request.param("timeout")),
    )
    return status_response(reply.text, reply.code)


async def describe_model(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    customized = true_param(request.param("customized"))
    body = await describe(
        state, model, version, customized=customized, request_id=request.request_id
    )
    return json_response(body)


def _page_param(value: str | None, default: int) -> int:
    parsed = int_param(value)
    return default if parsed is None else parsed


async def list_models(state: ServerState, request: Request) -> Response:
    limit = _page_param(request.param("limit"), 100)
    offset = _page_param(request.param("next_page_token"), 0)
    return json_response(list_page(state, limit, offset))


async def unregister_model(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    if not state.config.enable_model_api:
        raise MethodNotAllowed()
    reply = await unregister_version(state, model, version)
    return status_response(reply.text, reply.code)


async def set_default(state: ServerState, request: Request, model: str, version: str) -> Response:
    reply = await set_default_version(state, model, version)
    return status_response(reply.text, reply.code)


async def management_api_description(state: ServerState, request: Request) -> Response:
    return json_response(openapi.management_api())


async def model_management_description(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    state.registry.resolve(model, version)
    return json_response(openapi.model_management_api(model, version))
