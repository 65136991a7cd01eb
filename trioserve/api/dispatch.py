"""Connects routes to API functions: the handler an HTTP listener calls for each request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trioserve.api import inference, kserve, management, metrics, workflows
from trioserve.api.state import ServerState
from trioserve.auth import InvalidKey, TokenAuth
from trioserve.errors import ServeError, ServiceUnavailable
from trioserve.http.request import Request
from trioserve.http.response import JSON, Response, StreamingResponse
from trioserve.http.routing import INFERENCE, MANAGEMENT, route
from trioserve.models.model import no_worker_message

_FUNCTIONS: dict[str, Callable[..., Awaitable[Response | StreamingResponse]]] = {
    "api_description": inference.api_description,
    "ping": inference.ping,
    "model_api_description": inference.model_api_description,
    "predict": inference.predict,
    "explain": inference.explain,
    "management_api_description": management.management_api_description,
    "list_models": management.list_models,
    "register_model": management.register_model,
    "describe_model": management.describe_model,
    "scale_workers": management.scale_workers,
    "unregister_model": management.unregister_model,
    "set_default": management.set_default,
    "model_management_description": management.model_management_description,
    "metrics": metrics.metrics,
    "register_workflow": workflows.register_workflow,
    "list_workflows": workflows.list_workflows,
    "describe_workflow": workflows.describe_workflow,
    "unregister_workflow": workflows.unregister_workflow,
    "predict_workflow": workflows.predict_workflow,
    "kserve_v1_list": kserve.v1_list,
    "kserve_v1_model": kserve.v1_model,
    "kserve_v1_readiness": kserve.management_v1_readiness,
    "kserve_v2_server_metadata": kserve.v2_server_metadata,
    "kserve_v2_live": kserve.v2_live,
    "kserve_v2_ready": kserve.v2_ready,
    "kserve_v2_model_metadata": kserve.v2_model_metadata,
    "kserve_v2_model_ready": kserve.v2_model_ready,
    "kserve_v2_infer": kserve.v2_infer,
    "kserve_v2_explain": kserve.v2_explain,
    "kserve_v2_index": kserve.v2_repository_index,
    "kserve_v2_load": kserve.v2_repository_load,
    "kserve_v2_unload": kserve.v2_repository_unload,
}


# Routes that need no key on any port when token authorization is on (contract §0.6).
_PUBLIC_ROUTES = frozenset({"api_description", "management_api_description", "metrics"})
_MANAGEMENT_ACTIONS = frozenset({"kserve_v2_load", "kserve_v2_unload"})


def make_handler(
    state: ServerState, apis: frozenset[str], auth: TokenAuth | None = None
) -> Callable[[Request], Awaitable[Response | StreamingResponse]]:
    cors = _cors_headers(state)

    async def handle(request: Request) -> Response | StreamingResponse:
        if auth is not None:
            if _is_token_api(apis, request):
                auth.refresh(request.param("type"), request.header("authorization"))
                return Response(200, b"\n", JSON)
            _authorize(auth, apis, request)
        found = request.routed or route(apis, request.method, request.segments)
        request.model = found.params.get("model", "")  # for the access log
        kwargs: dict[str, Any] = dict(found.params)
        response = await _FUNCTIONS[found.name](state, request, **kwargs)
        if cors:
            present = {k.lower() for k, _ in response.headers}
            response.headers.extend((k, v) for k, v in cors if k.lower() not in present)
        return response

    return _counted(state, handle)


def _counted(
    state: ServerState, handle: Callable[[Request], Awaitable[Response | StreamingResponse]]
) -> Callable[[Request], Awaitable[Response | StreamingResponse]]:
    """Count every answer by status class (Requests2XX/4XX/5XX): a response by its status, a
    ServeError by its code (the connection renders it), any other exception as the 500 it
    becomes. A cancelled request (its client left) gets no answer and is not counted."""

    async def counted(request: Request) -> Response | StreamingResponse:
        try:
            response = await handle(request)
        except ServeError as exc:
            state.metrics.http_response(exc.code)
            raise
        except Exception:
            state.metrics.http_response(500)
            raise
        state.metrics.http_response(response.status)
        return response

    return counted


def _is_token_api(apis: frozenset[str], request: Request) -> bool:
    return MANAGEMENT in apis and request.segments == ("token",)


def _authorize(auth: TokenAuth, apis: frozenset[str], request: Request) -> None:
    """Raise InvalidKey unless the request carries the key its route's API needs: a route's own
    API decides, so a listener shared by both APIs takes each key for its routes (0.12 asks for
    both, contract §10.1). A path no route matches needs a key of the listener's APIs."""
    try:
        found = route(apis, request.method, request.segments)
    except ServeError:
        kinds = [api for api in (INFERENCE, MANAGEMENT) if api in apis]
    else:
        if found.name in _PUBLIC_ROUTES or found.api not in (INFERENCE, MANAGEMENT):
            return
        # The repository extension loads and unloads models: a management action, whichever
        # port serves it.
        kinds = [MANAGEMENT if found.name in _MANAGEMENT_ACTIONS else found.api]
    if kinds:
        auth.check(kinds, request.header("authorization"))


def make_admission(
    state: ServerState, apis: frozenset[str], auth: TokenAuth | None = None
) -> Callable[[Request], ServeError | None]:
    """Refuse a request from its head when it lacks its key, or a prediction when its model
    could not queue it anyway (no worker, or the queue is full), so the client is not made to
    upload a body for nothing."""

    def admit(request: Request) -> ServeError | None:
        if auth is not None and not _is_token_api(apis, request):
            try:
                _authorize(auth, apis, request)
            except InvalidKey as exc:
                state.metrics.http_response(exc.code)
                return exc
        try:
            found = request.routed = route(apis, request.method, request.segments)
        except ServeError:
            return None  # the handler answers routing errors after the body, as usual
        if found.name not in ("predict", "explain"):
            return None
        try:
            model = state.registry.resolve(found.params["model"], found.params.get("version"))
        except ServeError:
            return None  # unknown model: answered after the body, as TorchServe does
        if not model.live_workers() or model.queue_full():
            request.model = model.name  # for the access log
            state.metrics.http_response(ServiceUnavailable.http_status)
            return ServiceUnavailable(no_worker_message(model.name, found.params.get("version")))
        return None

    return admit


def _cors_headers(state: ServerState) -> list[tuple[str, str]]:
    config = state.config
    out = []
    if config.cors_allowed_origin:
        out.append(("Access-Control-Allow-Origin", config.cors_allowed_origin))
    if config.cors_allowed_methods:
        out.append(("Access-Control-Allow-Methods", config.cors_allowed_methods))
    if config.cors_allowed_headers:
        out.append(("Access-Control-Allow-Headers", config.cors_allowed_headers))
    return out
