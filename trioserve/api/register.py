"""Registering a model version: parameters, settings precedence, archive to running version.

Shared by the REST register call and by startup loading.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from trioserve.api.state import ServerState
from trioserve.errors import BadRequest, InternalServerError
from trioserve.http.request import Request
from trioserve.models import s3, store
from trioserve.models.archive import ModelArchive, open_archive, remove_extraction
from trioserve.models.model import ModelSettings, ModelVersion
from trioserve.models.process import DEPS_DIR
from trioserve.models.recycling import RecyclePolicy

logger = logging.getLogger(__name__)

A = TypeVar("A")  # an opened archive: a model's or a workflow's

RUNTIMES = ("python", "python3", "LSP")
# How long pip may take installing one archive's requirementsFile (install_py_dep_per_model):
# a registration stuck on a slow or unreachable index must still end.
PIP_INSTALL_TIMEOUT_S = 600.0
# Lines of pip's output quoted in the error when an install fails (the log keeps all of it).
PIP_TAIL_LINES = 10


def request_values(request: Request) -> dict[str, Any]:
    """A management call's parameters: the query string's, then the same keys in a JSON body
    (``Content-Type: application/json``), which win.

    Raises:
        BadRequest: a JSON body that does not parse or is not an object.
    """
    values: dict[str, Any] = {k: v[0] for k, v in request.query.items() if v}
    if request.mime_type == "application/json" and request.body.strip():
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise BadRequest(f"Invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON body: expected an object.")
        values.update(body)
    return values


def int_param(value: Any) -> int | None:
    """An integer parameter, or None when absent or not an integer (TorchServe ignores those)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def true_param(value: Any) -> bool:
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
    # Fetch an http(s) URL as a SigV4-signed S3 GET (SSE-KMS objects need one); s3:// URLs
    # are always signed.
    s3_sse_kms: bool = False

    @classmethod
    def from_request(cls, request: Request) -> RegisterParams:
        return cls.from_values(request_values(request))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RegisterParams:
        url = values.get("url")
        return cls(
            url=None if url is None else str(url),
            model_name=str(values["model_name"]) if values.get("model_name") else None,
            handler=str(values["handler"]) if values.get("handler") else None,
            runtime=str(values["runtime"]) if values.get("runtime") else None,
            batch_size=int_param(values.get("batch_size")),
            max_batch_delay=int_param(values.get("max_batch_delay")),
            initial_workers=int_param(values.get("initial_workers")),
            synchronous=true_param(values.get("synchronous", False)),
            response_timeout=int_param(values.get("response_timeout")),
            startup_timeout=int_param(values.get("startup_timeout")),
            s3_sse_kms=true_param(values.get("s3_sse_kms", False)),
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
    (TorchServe lets the yaml timeouts beat explicit parameters; we let the caller win.) The
    device comes from the server's GPUs and the yaml's ``deviceType`` / ``deviceIds``; the
    recycling limits from the yaml, else the server-wide config keys.
    """
    config = state.config
    gpus = state.registry.gpus(config.number_of_gpu)
    yaml = archive.model_config
    json_cfg: dict[str, Any] = dict(config.models.get(name, {}).get(version, {}))

    def from_json(key: str) -> int | None:
        return int_param(json_cfg.get(key))

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
        device_type=gpus.device_type(yaml.device_type),
        device_ids=gpus.valid_device_ids(yaml.device_ids),
        recycling=RecyclePolicy(
            max_requests=_or(yaml.max_requests_per_worker, config.max_requests_per_worker),
            max_rss_mb=_or(yaml.max_worker_rss_mb, config.max_worker_rss_mb),
        ),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _derive_name(path: Path) -> str:
    stem = path.name
    for suffix in (".tar.gz", ".mar", ".model", ".tgz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


async def install_dependencies(archive: ModelArchive, name: str) -> None:
    """``pip install --target <model_dir>/.deps -r <requirementsFile>`` for an archive that has
    one (install_py_dep_per_model); only that model's workers get ``.deps`` on their path.

    Raises:
        BadRequest: the requirements file is missing or outside the archive, or pip failed
            (the message quotes pip's last lines).
        InternalServerError: pip ran past ``PIP_INSTALL_TIMEOUT_S``.
    """
    requirements = archive.manifest.requirements_file
    if not requirements:
        return
    model_dir = archive.model_dir
    path = model_dir / requirements
    if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
        raise BadRequest(f"requirementsFile {requirements!r} is not in the archive of {name}.")
    target = model_dir / DEPS_DIR
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--upgrade",
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "-r",
        str(path),
    ]
    logger.info("Installing the dependencies of model %s: %s", name, " ".join(command))
    result: subprocess.CompletedProcess[bytes] | None = None
    with trio.move_on_after(PIP_INSTALL_TIMEOUT_S):
        result = await trio.run_process(
            command,
            cwd=str(model_dir),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result is None:
        shutil.rmtree(target, ignore_errors=True)
        raise InternalServerError(
            f"Custom pip package installation for model {name} did not finish "
            f"within {PIP_INSTALL_TIMEOUT_S:g} s."
        )
    output = result.stdout.decode("utf-8", "replace")
    logger.info("pip for model %s (exit code %d):\n%s", name, result.returncode, output)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        tail = "\n".join([line for line in output.splitlines() if line.strip()][-PIP_TAIL_LINES:])
        raise BadRequest(f"Custom pip package installation failed for model {name}:\n{tail}")


async def fetch_and_open(
    state: ServerState,
    url: str,
    s3_sse_kms: bool,
    into: str | None,
    opener: Callable[[Path, Path], A],
) -> tuple[A, Path, bool]:
    """Fetch ``url`` into the store ``into`` (signed for SSE-KMS and ``s3://`` URLs) and open
    it with ``opener`` in a thread: (archive, its path, whether it was downloaded). A download
    that does not open is removed again.

    Raises:
        ServeError: what the fetch or ``opener`` raises (a 400 for a bad URL or archive).
    """
    config = state.config
    auth = None
    if s3_sse_kms or s3.is_s3_url(url):
        auth = s3.S3Download(config.s3_endpoint_url)
    path, downloaded = await store.fetch(url, into, config.allowed_urls, auth=auth)
    try:
        archive = await trio.to_thread.run_sync(opener, path, state.extract_root)
    except BaseException:
        if downloaded:
            store.remove_download(path)
        raise
    return archive, path, downloaded


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
    archive, path, downloaded = await fetch_and_open(
        state, params.url, params.s3_sse_kms, config.model_store, open_archive
    )
    try:
        name = params.model_name or archive.manifest.model_name
        if not name and at_startup:
            name = _derive_name(path)
        if not name:
            raise BadRequest("Model name is not defined.")
        version = archive.manifest.model_version or "1.0"
        state.registry.check_free(name, version)
        if config.install_py_dep_per_model:
            await install_dependencies(archive, name)
        settings = resolve_settings(state, params, archive, name, version, at_startup=at_startup)
        gpus = state.registry.gpus(config.number_of_gpu)
        devices = gpus.for_model(settings.device_type, settings.device_ids)
        model = ModelVersion(
            name,
            version,
            params.url,
            archive,
            settings,
            next_worker_id=state.registry.next_worker_id,
            next_gpu_id=devices.next_gpu_id,
            decode_input_request=config.decode_input_request,
            envelope=config.service_envelope or archive.manifest.envelope or "",
            limit_max_image_pixels=config.limit_max_image_pixels,
            downloaded=downloaded,
            max_response_size=config.max_response_size,
            metrics=state.metrics.for_version(name, version),
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
