"""Sans-IO routing: (APIs served on a listener, method, path segments) -> a route.

Routes are a table; the first pattern that matches the path decides. A matched path with a
method the route does not take is a 405; no matching path is a 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trioserve.errors import MethodNotAllowed, ResourceNotFound

INFERENCE, MANAGEMENT, METRICS = "inference", "management", "metrics"
ANY = frozenset({"*"})


@dataclass(frozen=True)
class Route:
    name: str
    params: dict[str, str]
    api: str = field(default="", compare=False)  # the API the route belongs to


# (api, pattern, methods, route name). Pattern items: literal, "{name}" (one segment),
# "{name...}" (one or more trailing segments joined by "/").
_TABLE: tuple[tuple[str, tuple[str, ...], frozenset[str], str], ...] = (
    (INFERENCE, (), frozenset({"OPTIONS"}), "api_description"),
    (INFERENCE, ("api-description",), ANY, "api_description"),
    (INFERENCE, ("ping",), ANY, "ping"),
    (INFERENCE, ("predictions", "{model}"), frozenset({"OPTIONS"}), "model_api_description"),
    (INFERENCE, ("predictions", "{model}"), ANY, "predict"),
    (INFERENCE, ("predictions", "{model}", "{version}"), ANY, "predict"),
    (INFERENCE, ("predictions", "{model}", "{version}", "{rest...}"), ANY, "predict"),
    (INFERENCE, ("explanations", "{model}"), ANY, "explain"),
    (INFERENCE, ("explanations", "{model}", "{version}"), ANY, "explain"),
    (MANAGEMENT, (), frozenset({"OPTIONS"}), "management_api_description"),
    (MANAGEMENT, ("api-description",), ANY, "management_api_description"),
    (MANAGEMENT, ("models",), frozenset({"GET"}), "list_models"),
    (MANAGEMENT, ("models",), frozenset({"POST"}), "register_model"),
    (
        MANAGEMENT,
        ("models", "{model}", "{version}", "set-default"),
        frozenset({"PUT"}),
        "set_default",
    ),
    (MANAGEMENT, ("models", "{model}"), frozenset({"GET"}), "describe_model"),
    (MANAGEMENT, ("models", "{model}"), frozenset({"PUT"}), "scale_workers"),
    (MANAGEMENT, ("models", "{model}"), frozenset({"DELETE"}), "unregister_model"),
    (MANAGEMENT, ("models", "{model}"), frozenset({"OPTIONS"}), "model_management_description"),
    (MANAGEMENT, ("models", "{model}", "{version}"), frozenset({"GET"}), "describe_model"),
    (MANAGEMENT, ("models", "{model}", "{version}"), frozenset({"PUT"}), "scale_workers"),
    (MANAGEMENT, ("models", "{model}", "{version}"), frozenset({"DELETE"}), "unregister_model"),
    (
        MANAGEMENT,
        ("models", "{model}", "{version}"),
        frozenset({"OPTIONS"}),
        "model_management_description",
    ),
    (METRICS, ("metrics",), ANY, "metrics"),
    (METRICS, ("metrics", "{rest...}"), ANY, "metrics"),
)


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, item in enumerate(pattern):
        if item.endswith("...}"):
            if len(segments) <= i:
                return None
            params[item[1:-4]] = "/".join(segments[i:])
            return params
        if i >= len(segments):
            return None
        if item.startswith("{"):
            params[item[1:-1]] = segments[i]
        elif item != segments[i]:
            return None
    return params if len(segments) == len(pattern) else None


def route(apis: frozenset[str], method: str, segments: tuple[str, ...]) -> Route:
    """Raises ResourceNotFound (no path matches) or MethodNotAllowed (path matches, method not)."""
    path_matched = False
    for api, pattern, methods, name in _TABLE:
        if api not in apis:
            continue
        params = _match(pattern, segments)
        if params is None:
            continue
        if methods is ANY or method in methods:
            return Route(name, params, api)
        path_matched = True
    if path_matched:
        raise MethodNotAllowed()
    raise ResourceNotFound()
