"""Sans-IO routing: (APIs on a listener, method, path) -> route name and params, 404 vs 405."""

from __future__ import annotations

import dataclasses

import pytest

from trioserve.errors import MethodNotAllowed, ResourceNotFound
from trioserve.http.request import Request
from trioserve.http.routing import INFERENCE, MANAGEMENT, METRICS, Route, route

INF = frozenset({INFERENCE})
MGMT = frozenset({MANAGEMENT})
MET = frozenset({METRICS})
SHARED = frozenset({INFERENCE, MANAGEMENT})
ALL = frozenset({INFERENCE, MANAGEMENT, METRICS})


def segments(path: str) -> tuple[str, ...]:
    return Request("GET", path, []).segments


# (apis, method, path, route name, params)
ROUTES: list[tuple[frozenset[str], str, str, str, dict[str, str]]] = [
    # inference
    (INF, "OPTIONS", "/", "api_description", {}),
    (INF, "GET", "/api-description", "api_description", {}),
    (INF, "POST", "/api-description", "api_description", {}),
    (INF, "GET", "/ping", "ping", {}),
    (INF, "POST", "/ping", "ping", {}),
    (INF, "HEAD", "/ping/", "ping", {}),
    (INF, "POST", "/predictions/m", "predict", {"model": "m"}),
    (INF, "GET", "/predictions/m", "predict", {"model": "m"}),
    (INF, "PUT", "/predictions/m/", "predict", {"model": "m"}),
    (INF, "OPTIONS", "/predictions/m", "model_api_description", {"model": "m"}),
    (INF, "POST", "/predictions/m/1.0", "predict", {"model": "m", "version": "1.0"}),
    (
        INF,
        "POST",
        "/predictions/m/1.0/v1/completions/",
        "predict",
        {"model": "m", "version": "1.0", "rest": "v1/completions"},
    ),
    (INF, "POST", "/predictions/my%20model", "predict", {"model": "my model"}),
    (INF, "POST", "/explanations/m", "explain", {"model": "m"}),
    (INF, "POST", "/explanations/m/2.0", "explain", {"model": "m", "version": "2.0"}),
    # management
    (MGMT, "OPTIONS", "/", "management_api_description", {}),
    (MGMT, "GET", "/api-description", "management_api_description", {}),
    (MGMT, "GET", "/models", "list_models", {}),
    (MGMT, "GET", "/models/", "list_models", {}),
    (MGMT, "GET", "/models?limit=1", "list_models", {}),
    (MGMT, "POST", "/models", "register_model", {}),
    (MGMT, "POST", "/models/?url=x.mar", "register_model", {}),
    (MGMT, "GET", "/models/m", "describe_model", {"model": "m"}),
    (MGMT, "PUT", "/models/m", "scale_workers", {"model": "m"}),
    (MGMT, "DELETE", "/models/m", "unregister_model", {"model": "m"}),
    (MGMT, "OPTIONS", "/models/m", "model_management_description", {"model": "m"}),
    (MGMT, "GET", "/models/m/all", "describe_model", {"model": "m", "version": "all"}),
    (MGMT, "GET", "/models/m/1.0", "describe_model", {"model": "m", "version": "1.0"}),
    (MGMT, "PUT", "/models/m/1.0/", "scale_workers", {"model": "m", "version": "1.0"}),
    (MGMT, "DELETE", "/models/m/1.0", "unregister_model", {"model": "m", "version": "1.0"}),
    (
        MGMT,
        "OPTIONS",
        "/models/m/1.0",
        "model_management_description",
        {"model": "m", "version": "1.0"},
    ),
    (MGMT, "PUT", "/models/m/1.0/set-default", "set_default", {"model": "m", "version": "1.0"}),
    # metrics
    (MET, "GET", "/metrics", "metrics", {}),
    (MET, "GET", "/metrics?name[]=ts_inference_requests_total", "metrics", {}),
    (MET, "POST", "/metrics/extra/path", "metrics", {"rest": "extra/path"}),
    # one shared listener: both APIs; inference is tried first
    (SHARED, "OPTIONS", "/", "api_description", {}),
    (SHARED, "GET", "/ping", "ping", {}),
    (SHARED, "POST", "/predictions/m", "predict", {"model": "m"}),
    (SHARED, "GET", "/models", "list_models", {}),
    (SHARED, "POST", "/models", "register_model", {}),
    (SHARED, "GET", "/models/m/1.0", "describe_model", {"model": "m", "version": "1.0"}),
    (SHARED, "PUT", "/models/m/1.0/set-default", "set_default", {"model": "m", "version": "1.0"}),
    (ALL, "GET", "/metrics", "metrics", {}),
    (ALL, "GET", "/api-description", "api_description", {}),
    (ALL, "DELETE", "/models/m", "unregister_model", {"model": "m"}),
]


@pytest.mark.parametrize(("apis", "method", "path", "name", "params"), ROUTES)
def test_route_table(
    apis: frozenset[str], method: str, path: str, name: str, params: dict[str, str]
) -> None:
    assert route(apis, method, segments(path)) == Route(name, params)


# (apis, method, path): no route's path matches -> 404 ResourceNotFound.
NOT_FOUND: list[tuple[frozenset[str], str, str]] = [
    (INF, "GET", "/nope"),
    (INF, "POST", "/predictions"),
    (INF, "POST", "/predictions/"),
    (INF, "POST", "/explanations"),
    (INF, "POST", "/explanations/m/1.0/extra"),
    (INF, "GET", "/models"),  # management route, not on an inference-only listener
    (INF, "GET", "/metrics"),  # metrics route, not on an inference-only listener
    (INF, "GET", "/Ping"),  # paths are case-sensitive
    (MGMT, "POST", "/predictions/m"),
    (MGMT, "GET", "/ping"),
    (MGMT, "GET", "/models/m/1.0/other"),
    (MGMT, "GET", "/models/m/1.0/set-default/x"),
    (MGMT, "GET", "/metrics"),
    (MET, "GET", "/"),
    (MET, "GET", "/ping"),
    (MET, "GET", "/models"),
    (MET, "OPTIONS", "/"),
    (SHARED, "GET", "/metrics"),  # metrics API not mounted on this listener
    (ALL, "GET", "/nope"),
]


@pytest.mark.parametrize(("apis", "method", "path"), NOT_FOUND)
def test_unknown_path_is_404(apis: frozenset[str], method: str, path: str) -> None:
    with pytest.raises(ResourceNotFound) as caught:
        route(apis, method, segments(path))
    assert caught.value.code == 404
    assert caught.value.message == "Requested resource is not found, please refer to API document."


# (apis, method, path): a route's path matches, none takes the method -> 405 MethodNotAllowed.
NOT_ALLOWED: list[tuple[frozenset[str], str, str]] = [
    (INF, "GET", "/"),
    (INF, "POST", "/"),
    (MGMT, "GET", "/"),
    (MGMT, "DELETE", "/models"),
    (MGMT, "PUT", "/models/"),
    (MGMT, "POST", "/models/m"),
    (MGMT, "PATCH", "/models/m/1.0"),
    (MGMT, "GET", "/models/m/1.0/set-default"),
    (MGMT, "get", "/models"),  # methods are case-sensitive
    (SHARED, "GET", "/"),
    (SHARED, "DELETE", "/models"),
    (ALL, "POST", "/models/m/1.0/set-default"),
]


@pytest.mark.parametrize(("apis", "method", "path"), NOT_ALLOWED)
def test_known_path_with_wrong_method_is_405(apis: frozenset[str], method: str, path: str) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        route(apis, method, segments(path))
    assert caught.value.code == 405
    assert caught.value.message == "Requested method is not allowed, please refer to API document."


def test_no_apis_means_every_path_is_404() -> None:
    with pytest.raises(ResourceNotFound):
        route(frozenset(), "OPTIONS", ())


def test_port_zero_addresses_get_separate_listeners() -> None:
    from trioserve.config import Address, default_config
    from trioserve.server import _listener_groups

    any_port = Address("http", "127.0.0.1", 0)
    fixed = Address("http", "127.0.0.1", 8999)
    base = default_config()
    separate = dataclasses.replace(
        base, inference_address=any_port, management_address=any_port, metrics_address=any_port
    )
    assert [apis for _, apis in _listener_groups(separate)] == [
        frozenset({"inference"}),
        frozenset({"management"}),
        frozenset({"metrics"}),
    ]
    shared = dataclasses.replace(
        base, inference_address=fixed, management_address=fixed, metrics_address=fixed
    )
    assert _listener_groups(shared) == [(fixed, frozenset({"inference", "management", "metrics"}))]
    no_metrics = dataclasses.replace(shared, enable_metrics_api=False)
    assert _listener_groups(no_metrics) == [(fixed, frozenset({"inference", "management"}))]
