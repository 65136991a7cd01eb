"""Management API route handlers (contract §2): register, scale, describe, list, unregister."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import trio

from backend.wire import pb
from trioserve.api import openapi
from trioserve.api.state import ServerState
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
from trioserve.models.archive import ModelArchive, open_archive, remove_extraction
from trioserve.models.job import Job
from trioserve.models.model import ModelSettings, ModelVersion
from trioserve.models.worker import WorkerState, WorkerSupervisor

logger = logging.getLogger(__name__)

RUNTIMES = ("python", "python3", "LSP")


def _int(value: Any) -> int | None:
    """An integer parameter, or None when absent or not an integer (TorchServe ignores those)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


@dataclass(frozen=True)
class RegisterParams:
    url: str | None
    model_name: str | None = None
    handler: str | None = None
    runtime: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    initial_workers: int | None = None
    synchronous: bool = False
    response_timeout: int | None = None
    startup_timeout: int | None = None

    @classmethod
    def from_request(cls, request: Request) -> RegisterParams:
        values: dict[str, Any] = {k: v[0] for k, v in request.query.items() if v}
        if request.mime_type == "application/json" and request.body.strip():
            try:
                body = json.loads(request.body)
            except ValueError as exc:
                raise BadRequest(f"Invalid JSON body: {exc}") from exc
            if not isinstance(body, dict):
                raise BadRequest("Invalid JSON body: expected an object.")
            values.update(body)
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RegisterParams:
        url = values.get("url")
        return cls(
            url=None if url is None else str(url),
            model_name=str(values["model_name"]) if values.get("model_name") else None,
            handler=str(values["handler"]) if values.get("handler") else None,
            runtime=str(values["runtime"]) if values.get("runtime") else None,
            batch_size=_int(values.get("batch_size")),
            max_batch_delay=_int(values.get("max_batch_delay")),
            initial_workers=_int(values.get("initial_workers")),
            synchronous=_true(values.get("synchronous", False)),
            response_timeout=_int(values.get("response_timeout")),
            startup_timeout=_int(values.get("startup_timeout")),
        )


def _first(*values: int | None, default: int) -> int:
    for value in values:
        if value is not None and value > 0:
            return value
    return default


def default_startup_workers(state: ServerState) -> int:
    if state.config.default_workers_per_model > 0:
        return state.config.default_workers_per_model
    return os.cpu_count() or 1


def resolve_settings(
    state: ServerState,
    params: RegisterParams,
    archive: ModelArchive,
    name: str,
    version: str,
    *,
    at_startup: bool,
) -> ModelSettings:
    """Combine register parameters, model-config.yaml, the ``models`` JSON and defaults.

    Precedence: explicit parameter > model-config.yaml > ``models`` JSON > server default.
    (TorchServe lets the yaml timeouts beat explicit parameters; we let the caller win.)
    """
    config = state.config
    yaml = archive.model_config
    json_cfg: dict[str, Any] = dict(config.models.get(name, {}).get(version, {}))

    def from_json(key: str) -> int | None:
        return _int(json_cfg.get(key))

    if at_startup:
        workers = _first(from_json("minWorkers"), default=default_startup_workers(state))
        max_workers = _first(from_json("maxWorkers"), default=workers)
    else:
        initial = params.initial_workers
        workers = (
            initial
            if initial is not None and initial > 0
            else max(config.default_workers_per_model, 0)
        )
        max_workers = workers
    if yaml.min_workers is not None and yaml.min_workers > 0:
        top = yaml.max_workers if yaml.max_workers is not None else yaml.min_workers
        if top >= yaml.min_workers:
            workers, max_workers = yaml.min_workers, top
    max_workers = max(max_workers, workers)
    handler = params.handler or archive.manifest.handler or config.default_service_handler or ""
    return ModelSettings(
        min_workers=workers,
        max_workers=max_workers,
        batch_size=_first(params.batch_size, yaml.batch_size, from_json("batchSize"), default=1),
        max_batch_delay=_first(
            params.max_batch_delay, yaml.max_batch_delay, from_json("maxBatchDelay"), default=100
        ),
        response_timeout=_first(
            params.response_timeout,
            yaml.response_timeout,
            from_json("responseTimeout"),
            default=config.default_response_timeout,
        ),
        startup_timeout=_first(
            params.startup_timeout,
            yaml.startup_timeout,
            from_json("startupTimeout"),
            default=config.default_startup_timeout,
        ),
        job_queue_size=_first(yaml.job_queue_size, default=config.job_queue_size),
        handler=handler,
        runtime=params.runtime or archive.manifest.runtime or "python",
        loaded_at_startup=at_startup,
        max_retry_timeout_sec=yaml.max_retry_timeout_sec,
        client_timeout_ms=yaml.client_timeout_ms,
        parallel_type=yaml.parallel_type or "",
        parallel_level=yaml.parallel_level,
        device_type="cpu",
    )


def _derive_name(path: Path) -> str:
    stem = path.name
    for suffix in (".tar.gz", ".mar", ".model", ".tgz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


async def register(
    state: ServerState, params: RegisterParams, *, at_startup: bool = False
) -> tuple[ModelVersion, int, int]:
    """Open the archive, add the version to the registry and start its workers.

    Returns (model, workers started, workers ready); ready is -1 for an asynchronous start.
    """
    if params.url is None:
        raise BadRequest("Parameter url is required.")
    if params.runtime is not None and params.runtime not in RUNTIMES:
        raise BadRequest(f"Invalid RuntimeType value: {params.runtime}")
    config = state.config
    path, downloaded = await store.fetch(params.url, config.model_store, config.allowed_urls)
    try:
        archive = await trio.to_thread.run_sync(open_archive, path, state.extract_root)
    except BaseException:
        if downloaded:
            store.remove_download(path)
        raise
    try:
        name = params.model_name or archive.manifest.model_name
        if not name and at_startup:
            name = _derive_name(path)
        if not name:
            raise BadRequest("Model name is not defined.")
        version = archive.manifest.model_version or "1.0"
        state.registry.check_free(name, version)
        settings = resolve_settings(state, params, archive, name, version, at_startup=at_startup)
        model = ModelVersion(
            name,
            version,
            params.url,
            archive,
            settings,
            next_worker_id=state.registry.next_worker_id,
            decode_input_request=config.decode_input_request,
            envelope=config.service_envelope or archive.manifest.envelope or "",
            limit_max_image_pixels=config.limit_max_image_pixels,
            downloaded=downloaded,
            max_response_size=config.max_response_size,
        )
        await state.registry.add(model)
    except BaseException:
        remove_extraction(archive)
        if downloaded:
            store.remove_download(path)
        raise
    started = model.scale(settings.min_workers, settings.max_workers)
    if not started or not params.synchronous:
        return model, len(started), -1
    ready, _ = await model.wait_workers(started)
    return model, len(started), ready


async def register_model(state: ServerState, request: Request) -> Response:
    if not state.config.enable_model_api:
        raise MethodNotAllowed()
    params = RegisterParams.from_request(request)
    model, started, ready = await register(state, params)
    prefix = f'Model "{model.name}" Version: {model.version}'
    if started == 0:
        return status_response(
            f"{prefix} registered with 0 initial workers. "
            "Use scale workers API to add workers for the model."
        )
    if ready < 0:
        return status_response("Processing worker updates...", 202)
    if ready == 0:
        await _unregister(state, model)
        raise InternalServerError(
            f"Failed to start workers for model {model.name} version: {model.version}"
        )
    if ready < started:
        return status_response("Workers scaling in progress...", 206)
    return status_response(f"{prefix} registered with {ready} initial workers")


async def scale_workers(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    version = version or request.param("model_version")
    target = state.registry.resolve(model, version)
    min_raw = request.param("min_worker")
    min_workers = _int(min_raw) if min_raw is not None else 1
    if min_workers is None:
        min_workers = 1
    max_workers = _int(request.param("max_worker"))
    if max_workers is None:
        max_workers = min_workers
    if max_workers < min_workers:
        raise BadRequest("max_worker cannot be less than min_worker.")
    if min_workers < 0:
        raise InternalServerError(f"min_worker cannot be negative: {min_workers}")
    before = target.live_workers()
    started = target.scale(min_workers, max_workers)
    if not _true(request.param("synchronous")):
        return status_response("Processing worker updates...", 202)
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
        return status_response("Workers scaling in progress...", 206)
    suffix = f", version: {version}" if version else ""
    return status_response(f"Workers scaled to {min_workers} for model: {model}{suffix}")


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
        "gpu": False,
        "gpuUsage": "N/A",
    }


def describe_json(model: ModelVersion) -> dict[str, Any]:
    s = model.settings
    stats = model.statistics()
    return {
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


async def _customized(model: ModelVersion, request: Request) -> str | None:
    job = Job(request.request_id, [], [("describe", "True")], pb.DESCRIBE)
    try:
        model.submit_nowait(job)
    except ServiceUnavailable:
        raise ServiceUnavailable(
            f'Model "{model.name}" has no worker to serve describe request. '
            "Please use scale workers API to add workers."
        ) from None
    try:
        _, value = await job.next_outcome()
    except trio.Cancelled:
        job.cancelled = True  # the client went away: the batcher drops the job
        raise
    if isinstance(value, ServeError):
        raise value
    text = value.body.decode("utf-8", "replace")
    if not text.strip() or text.strip() == "null":
        return None
    return text


async def describe_model(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    if version == "all":
        state.registry.resolve(model)
        return json_response(
            [describe_json(v) for v in state.registry.models[model].sorted_versions()]
        )
    target = state.registry.resolve(model, version)
    body = describe_json(target)
    if _true(request.param("customized")):
        metadata = await _customized(target, request)
        if metadata is not None:
            # The docs define customizedMetadata as the handler's output as a JSON string.
            body["customizedMetadata"] = metadata
    return json_response([body])


def _page_param(value: str | None, default: int) -> int:
    parsed = _int(value)
    return default if parsed is None else parsed


async def list_models(state: ServerState, request: Request) -> Response:
    limit = _page_param(request.param("limit"), 100)
    if limit > 100 or limit < 0:
        limit = 100
    offset = max(_page_param(request.param("next_page_token"), 0), 0)
    models = state.registry.defaults()
    page = models[offset : offset + limit]
    body: dict[str, Any] = {}
    if offset + limit <= len(models):
        body["nextPageToken"] = str(offset + limit)
    body["models"] = [{"modelName": m.name, "modelUrl": m.url} for m in page]
    return json_response(body)


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


async def unregister_model(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    if not state.config.enable_model_api:
        raise MethodNotAllowed()
    target = state.registry.remove(model, version)
    await _unregister(state, target)
    return status_response(f'Model "{model}" unregistered')


async def set_default(state: ServerState, request: Request, model: str, version: str) -> Response:
    state.registry.set_default(model, version)
    return status_response(
        f'Default version successfully updated for model "{model}" to "{version}"'
    )


async def management_api_description(state: ServerState, request: Request) -> Response:
    return json_response(openapi.management_api())


async def model_management_description(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    state.registry.resolve(model, version)
    return json_response(openapi.model_management_api(model, version))
