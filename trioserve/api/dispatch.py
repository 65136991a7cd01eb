"""Connects routes to API functions: the handler an HTTP listener calls for each request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trioserve.api import inference, management, metrics
from trioserve.api.state import ServerState
from trioserve.errors import ServeError, ServiceUnavailable
from trioserve.http.request import Request
from trioserve.http.response import Response, StreamingResponse
from trioserve.http.routing import route
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
}


def make_handler(
    state: ServerState, apis: frozenset[str]
) -> Callable[[Request], Awaitable[Response | StreamingResponse]]:
    cors = _cors_headers(state)

    async def handle(request: Request) -> Response | StreamingResponse:
        found = route(apis, request.method, request.segments)
        kwargs: dict[str, Any] = dict(found.params)
        response = await _FUNCTIONS[found.name](state, request, **kwargs)
        if cors:
            present = {k.lower() for k, _ in response.headers}
            response.headers.extend((k, v) for k, v in cors if k.lower() not in present)
        return response

    return handle


def make_admission(
    state: ServerState, apis: frozenset[str]
) -> Callable[[Request], ServeError | None]:
    """Refuse a prediction from its head when its model could not queue it anyway (no worker,
    or the queue is full), so the client is not made to upload a body for nothing."""

    def admit(request: Request) -> ServeError | None:
        try:
            found = route(apis, request.method, request.segments)
        except ServeError:
            return None  # the handler answers routing errors after the body, as usual
        if found.name not in ("predict", "explain"):
            return None
        try:
            model = state.registry.resolve(found.params["model"], found.params.get("version"))
        except ServeError:
            return None  # unknown model: answered after the body, as TorchServe does
        if not model.live_workers() or model.statistics().remaining_capacity <= 0:
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
