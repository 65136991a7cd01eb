"""KServe on the inference port: the v1 protocol and the Open Inference Protocol (v2) REST API
with its model repository extension. The gRPC OIP service uses the same cores.

A request is checked here (a bad tensor is a 400 before any worker sees it), then sent to the
worker as its JSON body under the envelope its route implies (``kserve`` for v1, ``kservev2``
for v2), so handlers written for TorchServe's KServe envelopes see what they expect. Errors
answer ``{"error": message}``, as KServe clients read them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from backend.wire import pb
from trioserve import __version__
from trioserve.api import management, oip
from trioserve.api.inference import is_healthy, later_chunks, start_job, stream_chunk_timeout
from trioserve.api.register import RegisterParams
from trioserve.api.state import ServerState
from trioserve.errors import BadRequest, MethodNotAllowed, ModelNotFound, ServeError
from trioserve.http.request import Input, Request
from trioserve.http.response import JSON, Response, dump_json, json_response
from trioserve.models.job import Job
from trioserve.models.model import ModelVersion

SERVER_NAME = "trioserve"
EXTENSIONS = ["model_repository", "kserve", "kubeflow"]
PLATFORM = "pytorch"
KSERVE_V1, KSERVE_V2 = "kserve", "kservev2"


def _error(exc: ServeError) -> Response:
    return json_response({"error": exc.message or type(exc).__name__}, exc.code)


def _answering_errors(
    fn: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    async def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except ServeError as exc:
            return _error(exc)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


# -- readiness ------------------------------------------------------------------------------


def model_ready(state: ServerState, model: ModelVersion) -> bool:
    """Ready to answer now: the server is not draining and at least max(minWorkers, 1) of the
    version's workers have loaded it and are not failed or retiring (a model still loading or
    warming up is not ready)."""
    if state.draining:
        return False
    healthy = sum(1 for worker in model.workers if worker.ready_to_serve())
    return healthy >= max(model.settings.min_workers, 1)


def server_ready(state: ServerState) -> bool:
    return not state.draining and is_healthy(state)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def model_metadata(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    """Name, versions (all of them, or the one asked for), platform and tensors. A handler
    takes what it takes, so the server knows the tensors only where the model says: an ``oip``
    section of its model-config.yaml (``platform``, ``inputs``, ``outputs``, each tensor
    ``{name, datatype, shape}``, -1 for a variable dimension); otherwise the lists are empty."""
    target = state.registry.resolve(name, version)
    versions = (
        [version] if version else [v.version for v in state.registry.models[name].sorted_versions()]
    )
    declared = target.archive.model_config.raw.get("oip")
    declared = declared if isinstance(declared, dict) else {}
    platform = declared.get("platform")
    return {
        "name": target.name,
        "versions": versions,
        "platform": platform if isinstance(platform, str) else PLATFORM,
        "inputs": declared_tensors(declared.get("inputs")),
        "outputs": declared_tensors(declared.get("outputs")),
    }


def declared_tensors(value: Any) -> list[dict[str, Any]]:
    """The well-formed tensor declarations of a model-config ``oip`` list (others are left
    out: metadata is advice, never a reason to fail a call)."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if not isinstance(item, dict):
            continue
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if (
            isinstance(name, str)
            and isinstance(datatype, str)
            and datatype in oip.DATATYPES
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)
        ):
            out.append({"name": name, "datatype": datatype, "shape": shape})
    return out


# -- running a KServe job -------------------------------------------------------------------


def kserve_job(
    request_id: str,
    body: bytes,
    headers: list[tuple[str, str]],
    *,
    envelope: str,
    explain: bool,
) -> Job:
    job_headers = [*headers, ("explain", "True" if explain else "False"), ("url_path", "")]
    command = pb.EXPLAIN if explain else pb.PREDICT
    return Job(request_id, [Input("body", body, JSON)], job_headers, command, envelope=envelope)


async def run_job(model: ModelVersion, job: Job, version: str | None) -> pb.Response:
    """The worker's whole answer; a handler that streams has its chunks joined."""
    kind, first = await start_job(model, job, version)
    if kind == "final":
        return first
    parts = [first.body]
    async for chunk in later_chunks(job, stream_chunk_timeout(model)):
        parts.append(chunk.body)
    first.body = b"".join(parts)
    return first


def _reply(result: pb.Response, body: bytes | None = None) -> Response:
    headers = [(h.name, h.value) for h in result.headers]
    content = result.content_type or JSON
    return Response(result.status or 200, result.body if body is None else body, content, headers)


# -- v1 -------------------------------------------------------------------------------------


@_answering_errors
async def v1_list(state: ServerState, request: Request) -> Response:
    return json_response({"models": sorted(state.registry.models)})


@_answering_errors
async def v1_model(state: ServerState, request: Request, model: str) -> Response:
    """``/v1/models/{m}`` (readiness) and ``/v1/models/{m}:predict`` / ``:explain``."""
    name, _, verb = model.partition(":")
    if not verb:
        if request.method != "GET":
            raise MethodNotAllowed()
        target = state.registry.resolve(name)
        ready = model_ready(state, target)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)
    if verb not in ("predict", "explain"):
        raise BadRequest(f"Unknown verb {verb!r}: expected predict or explain.")
    target = state.registry.resolve(name)
    document = oip.parse_json(request.body)
    if not isinstance(document, dict) or not isinstance(
        document.get("instances", document.get("inputs")), list
    ):
        raise BadRequest('The request must be a JSON object with an "instances" list.')
    job = kserve_job(
        request.request_id,
        request.body,
        list(request.headers),
        envelope=KSERVE_V1,
        explain=verb == "explain",
    )
    return _reply(await run_job(target, job, None))


# -- v2 -------------------------------------------------------------------------------------


@_answering_errors
async def v2_server_metadata(state: ServerState, request: Request) -> Response:
    return json_response(server_metadata())


@_answering_errors
async def v2_live(state: ServerState, request: Request) -> Response:
    return json_response({"live": True})


@_answering_errors
async def v2_ready(state: ServerState, request: Request) -> Response:
    ready = server_ready(state)
    return json_response({"ready": ready}, 200 if ready else 503)


@_answering_errors
async def v2_model_metadata(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    return json_response(model_metadata(state, model, version))


@_answering_errors
async def v2_model_ready(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    ready = model_ready(state, state.registry.resolve(model, version))
    return json_response({"name": model, "ready": ready}, 200 if ready else 503)


@_answering_errors
async def v2_infer(
    state: ServerState,
    request: Request,
    model: str,
    version: str | None = None,
    explain: bool = False,
) -> Response:
    target = state.registry.resolve(model, version)
    document = oip.check_infer_request(oip.parse_json(request.body))
    job = kserve_job(
        request.request_id,
        request.body,
        list(request.headers),
        envelope=KSERVE_V2,
        explain=explain,
    )
    result = await run_job(target, job, version)
    wanted = document.get("outputs")
    if wanted and result.status in (0, 200):
        filtered = requested_outputs(result.body, [o["name"] for o in wanted])
        return _reply(result, filtered)
    return _reply(result)


async def v2_explain(
    state: ServerState, request: Request, model: str, version: str | None = None
) -> Response:
    return await v2_infer(state, request, model, version, explain=True)


def requested_outputs(body: bytes, names: list[str]) -> bytes | None:
    """The v2 reply keeping only the outputs the request asked for (the reply as it is when it
    is not a v2 document)."""
    try:
        reply = oip.parse_json(body, "reply")
    except oip.TensorError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("outputs"), list):
        return None
    reply["outputs"] = [
        o for o in reply["outputs"] if isinstance(o, dict) and o.get("name") in names
    ]
    return dump_json(reply)


# -- model repository extension -------------------------------------------------------------


@_answering_errors
async def v2_repository_index(state: ServerState, request: Request) -> Response:
    """Every model version with its state; ``{"ready": true}`` in the body keeps only the
    ready ones."""
    only_ready = False
    if request.body.strip():
        document = oip.parse_json(request.body)
        if not isinstance(document, dict):
            raise BadRequest("The index request must be a JSON object.")
        only_ready = document.get("ready") is True
    index = []
    for target in state.registry.all_versions():
        ready = model_ready(state, target)
        if only_ready and not ready:
            continue
        entry = {"name": target.name, "version": target.version}
        entry["state"] = "READY" if ready else "UNAVAILABLE"
        if not ready:
            entry["reason"] = "no worker is ready" if not state.draining else "draining"
        index.append(entry)
    return json_response(index)


async def repository_load(state: ServerState, name: str) -> None:
    """Load model ``name`` from the model store (``{name}.mar``, ``{name}.tar.gz`` or a
    directory ``{name}``) with one worker at least, waiting until it is ready. Gated like
    registration (``enable_model_api``).

    Raises:
        ServeError: as registration raises it (unknown archive 404, already loaded 409, …).
    """
    _require_model_api(state)
    url = store_entry(Path(state.config.model_store or "."), name)
    workers = max(state.config.default_workers_per_model, 1)
    params = RegisterParams(url=url, model_name=name, initial_workers=workers, synchronous=True)
    await management.register_version(state, params)


def _require_model_api(state: ServerState) -> None:
    if not state.config.enable_model_api:
        raise MethodNotAllowed("Model API disabled")


def store_entry(model_store: Path, name: str) -> str:
    """The model store entry a repository load of ``name`` means: ``{name}.mar``,
    ``{name}.tar.gz`` or ``{name}.model``, else a directory ``{name}``.

    Raises:
        ModelNotFound: none of them is there.
    """
    if name and "/" not in name and not name.startswith("."):
        for candidate in (f"{name}.mar", f"{name}.tar.gz", f"{name}.model", name):
            if (model_store / candidate).exists():
                return candidate
    raise ModelNotFound(f"Model not found in model store: {name}")


async def repository_unload(state: ServerState, name: str) -> None:
    """Unload every version of ``name`` (the default last, so the registry's rule that a
    default goes last holds)."""
    _require_model_api(state)
    entry = state.registry.models.get(name)
    if entry is None:
        state.registry.resolve(name)  # raises the not-found error
        return
    for version in sorted(entry.versions, key=lambda v: v == entry.default):
        await management.unregister_version(state, name, version)


@_answering_errors
async def v2_repository_load(state: ServerState, request: Request, model: str) -> Response:
    await repository_load(state, model)
    return json_response({"name": model, "load": True})


@_answering_errors
async def v2_repository_unload(state: ServerState, request: Request, model: str) -> Response:
    await repository_unload(state, model)
    return json_response({"name": model, "unload": True})


async def management_v1_readiness(state: ServerState, request: Request, model: str) -> Response:
    """``GET /v1/models/{m}`` on the management port (contract §2.1): 200 with ``ready``."""
    target = state.registry.resolve(model)
    return json_response({"name": model, "ready": model_ready(state, target)})
