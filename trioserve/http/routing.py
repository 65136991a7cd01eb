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
    (INFERENCE, ("wfpredict", "{workflow}"), ANY, "predict_workflow"),
    # KServe v1 ("{model}" may end in ":predict" / ":explain") and the Open Inference Protocol.
    (INFERENCE, ("v1", "models"), frozenset({"GET"}), "kserve_v1_list"),
    (INFERENCE, ("v1", "models", "{model}"), ANY, "kserve_v1_model"),
    (INFERENCE, ("v2",), frozenset({"GET"}), "kserve_v2_server_metadata"),
    (INFERENCE, ("v2", "health", "live"), frozenset({"GET"}), "kserve_v2_live"),
    (INFERENCE, ("v2", "health", "ready"), frozenset({"GET"}), "kserve_v2_ready"),
    (INFERENCE, ("v2", "models", "{model}"), frozenset({"GET"}), "kserve_v2_model_metadata"),
    (INFERENCE, ("v2", "models", "{model}", "ready"), frozenset({"GET"}), "kserve_v2_model_ready"),
    (INFERENCE, ("v2", "models", "{model}", "infer"), frozenset({"POST"}), "kserve_v2_infer"),
    (INFERENCE, ("v2", "models", "{model}", "explain"), frozenset({"POST"}), "kserve_v2_explain"),
    (
        INFERENCE,
        ("v2", "models", "{model}", "versions", "{version}"),
        frozenset({"GET"}),
        "kserve_v2_model_metadata",
    ),
    (
        INFERENCE,
        ("v2", "models", "{model}", "versions", "{version}", "ready"),
        frozenset({"GET"}),
        "kserve_v2_model_ready",
    ),
    (
        INFERENCE,
        ("v2", "models", "{model}", "versions", "{version}", "infer"),
        frozenset({"POST"}),
        "kserve_v2_infer",
    ),
    (
        INFERENCE,
        ("v2", "models", "{model}", "versions", "{version}", "explain"),
        frozenset({"POST"}),
        "kserve_v2_explain",
    ),
    (INFERENCE, ("v2", "repository", "index"), frozenset({"GET", "POST"}), "kserve_v2_index"),
    (
        INFERENCE,
        ("v2", "repository", "models", "{model}", "load"),
        frozenset({"POST"}),
        "kserve_v2_load",
    ),
    (
        INFERENCE,
        ("v2", "repository", "models", "{model}", "unload"),
        frozenset({"POST"}),
        "kserve_v2_unload",
    ),
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
    (MANAGEMENT, ("v1", "models", "{model}"), frozenset({"GET"}), "kserve_v1_readiness"),
    (MANAGEMENT, ("workflows",), frozenset({"GET"}), "list_workflows"),
    (MANAGEMENT, ("workflows",), frozenset({"POST"}), "register_workflow"),
    (MANAGEMENT, ("workflows", "{workflow}"), frozenset({"GET"}), "describe_workflow"),
    (MANAGEMENT, ("workflows", "{workflow}"), frozenset({"DELETE"}), "unregister_workflow"),
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
