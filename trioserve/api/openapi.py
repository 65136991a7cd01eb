"""OpenAPI 3.0.1 descriptions of the inference, management and metrics APIs.

Every public function returns a fresh, JSON-serialisable ``dict``; the HTTP layer serves it
for ``OPTIONS /``, ``/api-description`` and the per-model ``OPTIONS`` routes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from urllib.parse import quote

SERVER_VERSION: str = "0.12.0"

JSON = dict[str, object]

_STR: JSON = {"type": "string"}
_INT: JSON = {"type": "integer"}
_BOOL: JSON = {"type": "boolean"}
_BINARY: JSON = {"type": "string", "format": "binary"}

_ERROR_TEXT: dict[int, str] = {
    400: "Bad request",
    403: "Operation forbidden",
    404: "Model, version or resource not found",
    405: "Method not allowed (e.g. model API disabled)",
    408: "Request timed out",
    409: "Conflict: model version already registered",
    500: "Internal server error",
    503: "No worker available to serve the request",
    507: "Out of resources",
}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: JSON) -> JSON:
    return {"type": "array", "items": items}


def _object(props: dict[str, JSON], required: Sequence[str] = ()) -> JSON:
    schema: JSON = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _typed(base: JSON, default: object = None, **extra: object) -> JSON:
    schema: JSON = {**base, **extra}
    if default is not None:
        schema["default"] = default
    return schema


_KINDS: dict[str, JSON] = {"s": _STR, "i": _INT, "b": _BOOL}


def _fields(spec: str) -> dict[str, JSON]:
    """``"name:s count:i flag:b"`` -> properties of type string / integer / boolean."""
    return {name: _KINDS[kind] for name, _, kind in (f.partition(":") for f in spec.split())}


_DESCRIPTION_FIELDS = (
    "modelName:s modelVersion:s modelUrl:s runtime:s minWorkers:i maxWorkers:i batchSize:i"
    " maxBatchDelay:i responseTimeout:i startupTimeout:i maxRetryTimeoutInSec:i"
    " clientTimeoutInMills:i parallelType:s parallelLevel:i deviceType:s"
)
_DESCRIPTION_TAIL = (
    "continuousBatching:b useJobTicket:b useVenv:b stateful:b sequenceMaxIdleMSec:i"
    " sequenceTimeoutMSec:i maxNumSequence:i maxSequenceJobQueueSize:i loadedAtStartup:b"
)
_SCHEMAS: dict[str, JSON] = {
    "Error": _object(_fields("code:i type:s message:s"), ["code", "type"]),
    "Status": _object(_fields("status:s"), ["status"]),
    "Worker": _object(_fields("id:s startTime:s status:s memoryUsage:i pid:i gpu:b gpuUsage:s")),
    "JobQueueStatus": _object(_fields("remainingCapacity:i pendingRequests:i")),
    "ModelDescription": _object(
        {
            **_fields(_DESCRIPTION_FIELDS),
            "deviceIds": _array(_INT),
            **_fields(_DESCRIPTION_TAIL),
            "workers": _array(_ref("Worker")),
            "jobQueueStatus": _ref("JobQueueStatus"),
            "customizedMetadata": {"type": "object", "additionalProperties": True},
        },
        ["modelName", "modelVersion"],
    ),
    "ModelListEntry": _object(_fields("modelName:s modelUrl:s"), ["modelName"]),
    "ModelList": _object(
        {"nextPageToken": _STR, "models": _array(_ref("ModelListEntry"))}, ["models"]
    ),
}


def _param(name: str, where: str, schema: JSON, text: str, required: bool = False) -> JSON:
    required = required or where == "path"
    return {"name": name, "in": where, "description": text, "required": required, "schema": schema}


def _query(name: str, schema: JSON, text: str, required: bool = False) -> JSON:
    return _param(name, "query", schema, text, required)


def _model_path_params(versioned: bool) -> list[JSON]:
    params = [_param("model_name", "path", _STR, "Name of the model")]
    if versioned:
        params.append(_param("model_version", "path", _STR, "Version of the model"))
    return params


def _response(text: str, schema: JSON, media: str = "application/json") -> JSON:
    return {"description": text, "content": {media: {"schema": schema}}}


def _status(text: str) -> JSON:
    return _response(text, _ref("Status"))


def _operation(
    op_id: str,
    summary: str,
    ok: JSON,
    errors: Iterable[int],
    *,
    params: Sequence[JSON] = (),
    body: JSON | None = None,
    extra: dict[str, JSON] | None = None,
) -> JSON:
    responses: dict[str, JSON] = {"200": ok, **(extra or {})}
    for code in errors:
        responses[str(code)] = _response(_ERROR_TEXT[code], _ref("Error"))
    op: JSON = {"operationId": op_id, "summary": summary}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    return op


_ASYNC: dict[str, JSON] = {
    "202": _status("Accepted; workers are being started in the background"),
    "206": _status("Partial; workers scaling still in progress"),
}


def _describe_api(op_id: str) -> JSON:
    ok = _response("The OpenAPI 3.0.1 description of this API", {"type": "object"})
    return _operation(op_id, "Get the OpenAPI description of this API", ok, [500])


def _metrics_get() -> JSON:
    name = _query("name[]", _array(_STR), "Only return these metric families")
    name.update(style="form", explode=True)
    ok = _response("Metrics in Prometheus text format 0.0.4", _STR, "text/plain")
    return _operation("metrics", "Get metrics in Prometheus text format", ok, [500], params=[name])


def _document(paths: dict[str, JSON], description: str) -> JSON:
    """Wrap ``paths`` into a document holding exactly the component schemas it references."""
    used: set[str] = set()
    pending: list[object] = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            name = str(node.get("$ref", "")).rpartition("/")[2]
            if name and name not in used:
                used.add(name)
                pending.append(_SCHEMAS[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    doc: JSON = {
        "openapi": "3.0.1",
        "info": {"title": "TorchServe APIs", "description": description, "version": SERVER_VERSION},
        "paths": paths,
    }
    if used:
        doc["components"] = {"schemas": {k: _SCHEMAS[k] for k in sorted(used)}}
    return copy.deepcopy(doc)  # callers may mutate; never hand out shared module constants


_PREDICT_BODY: JSON = {
    "description": "Input data: raw bytes, multipart form parts, or a JSON document",
    "required": False,
    "content": {
        "application/octet-stream": {"schema": _BINARY},
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": _BINARY}},
        "application/json": {"schema": {}},
    },
}


def _predict(op_id: str, summary: str, params: Sequence[JSON]) -> JSON:
    ok = _response("Handler output; content type as set by the handler", _BINARY, "*/*")
    errors = [400, 404, 500, 503, 507]
    op = _operation(op_id, summary, ok, errors, params=params, body=_PREDICT_BODY)
    return {"post": op}


def _ping() -> JSON:
    ok = _status("Server is healthy")
    unhealthy = {"500": _status("Server is unhealthy")}
    return {"get": _operation("ping", "Get the server health status", ok, [], extra=unhealthy)}


# (path, operationId, summary, versioned)
_Route = tuple[str, str, str, bool]
_PREDICT_ROUTES: list[_Route] = [
    ("/v1/models/{model_name}:predict", "kserveV1Predict", "KServe v1 predict", False),
    ("/v2/models/{model_name}/infer", "kserveV2Infer", "KServe v2 inference", False),
    ("/predictions/{model_name}", "predictions", "Predict with the default version", False),
    ("/predictions/{model_name}/{model_version}", "versionPredictions", "Predict a version", True),
    ("/explanations/{model_name}", "explanations", "Explain with the default version", False),
]
_KSERVE_EXPLAIN_ROUTES: list[_Route] = [
    ("/v1/models/{model_name}:explain", "kserveV1Explain", "KServe v1 explain", False),
    ("/v2/models/{model_name}/explain", "kserveV2Explain", "KServe v2 explain", False),
]


def inference_api(*, kserve: bool = False) -> dict[str, object]:
    """Document for the inference port; ``kserve`` adds the KServe ``explain`` routes."""
    paths: dict[str, JSON] = {"/": {"options": _describe_api("apiDescription")}, "/ping": _ping()}
    routes = _PREDICT_ROUTES + (_KSERVE_EXPLAIN_ROUTES if kserve else [])
    for path, op_id, summary, versioned in routes:
        paths[path] = _predict(op_id, summary, _model_path_params(versioned))
    paths["/api-description"] = {"get": _describe_api("getApiDescription")}
    paths["/metrics"] = {"get": _metrics_get()}
    return _document(paths, "TorchServe-compatible inference API")


def _literal(*segments: str) -> str:
    return "/" + "/".join(quote(s, safe="") for s in segments)


def model_inference_api(model_name: str, model_version: str | None = None) -> dict[str, object]:
    """Per-model document served for ``OPTIONS /predictions/{model_name}``."""
    what = f"model {model_name}"
    paths = {_literal("predictions", model_name): _predict("predictions", f"Predict {what}", [])}
    if model_version is not None:
        paths[_literal("predictions", model_name, model_version)] = _predict(
            "versionPredictions", f"Predict {what} version {model_version}", []
        )
    return _document(paths, f"Inference API of {what}")


_REGISTER_FIELDS: list[tuple[str, JSON, str]] = [
    ("url", _STR, "Archive name in the model store, model directory, or http(s)/file URL"),
    ("model_name", _STR, "Model name; overrides the manifest"),
    ("handler", _STR, "Handler as module[.py][:function]; overrides the manifest"),
    ("runtime", _typed(_STR, enum=["python", "python3", "LSP"]), "Runtime of the model"),
    ("batch_size", _typed(_INT, 1), "Inference batch size"),
    ("max_batch_delay", _typed(_INT, 100), "Maximum batch delay in milliseconds"),
    ("response_timeout", _typed(_INT, 120), "Response timeout in seconds"),
    ("startup_timeout", _typed(_INT, 120), "Worker startup timeout in seconds"),
    ("initial_workers", _typed(_INT, 0), "Number of workers to start"),
    ("synchronous", _typed(_BOOL, True), "Wait for the workers to start"),
    ("s3_sse_kms", _typed(_BOOL, False), "Download from S3 with SSE-KMS"),
]

_SCALING: list[JSON] = [
    _query("min_worker", _typed(_INT, 1), "Minimum number of workers"),
    _query("max_worker", _INT, "Maximum number of workers (defaults to min_worker)"),
    _query("number_gpu", _INT, "Number of GPU workers (accepted, ignored)"),
    _query("synchronous", _typed(_BOOL, False), "Wait for the scaling to finish"),
    _query("timeout", _INT, "Scaling timeout in seconds (accepted, ignored)"),
]


def _register_model() -> JSON:
    params = [_query(n, s, t, n == "url") for n, s, t in _REGISTER_FIELDS]
    body_schema = _object({n: s for n, s, _ in _REGISTER_FIELDS}, ["url"])
    body: JSON = {
        "description": "The query parameters as a JSON object (alternative to the query string)",
        "required": False,
        "content": {"application/json": {"schema": body_schema}},
    }
    ok, errs, what = _status("Model registered"), [400, 404, 405, 409, 500], "Register a model"
    return _operation("registerModel", what, ok, errs, params=params, body=body, extra=_ASYNC)


def _list_models() -> JSON:
    params = [
        _query("limit", _typed(_INT, 100), "Page size (0-100)"),
        _query("next_page_token", _typed(_INT, 0), "Offset of the page"),
    ]
    ok = _response("One page of registered models", _ref("ModelList"))
    return _operation("listModels", "List registered models", ok, [500], params=params)


_DESCRIBED = _response("Model description", _array(_ref("ModelDescription")))
_CUSTOMIZED = [_query("customized", _typed(_BOOL, False), "Include handler-provided metadata")]
_SCALED, _UNREGISTERED = _status("Workers scaled"), _status("Model unregistered")
# method -> (operationId prefix, summary verb, 200 reply, error codes, extra params, extra replies)
_ModelOp = tuple[str, str, JSON, list[int], list[JSON], dict[str, JSON] | None]
_MODEL_OPS: dict[str, _ModelOp] = {
    "get": ("describeModel", "Describe", _DESCRIBED, [404, 500, 503], _CUSTOMIZED, None),
    "put": ("setAutoScale", "Scale workers of", _SCALED, [400, 404, 500], _SCALING, _ASYNC),
    "delete": ("unregisterModel", "Unregister", _UNREGISTERED, [403, 404, 405, 408, 500], [], None),
}


def _model_ops(suffix: str, target: str, params: list[JSON]) -> JSON:
    """describe/scale/unregister operations on ``target`` (e.g. "version 2.0 of model m")."""
    return {
        method: _operation(
            op_id + suffix, f"{verb} {target}", ok, errors, params=[*params, *more], extra=extra
        )
        for method, (op_id, verb, ok, errors, more, extra) in _MODEL_OPS.items()
    }


def _set_default(target: str, params: list[JSON]) -> JSON:
    ok = _status("Default version updated")
    summary = f"Make {target} the default version"
    op = _operation("setDefault", summary, ok, [404, 500], params=params)
    return {"put": op}


def management_api() -> dict[str, object]:
    """Document for the management port."""
    versioned = _model_path_params(True)
    base = "/models/{model_name}/{model_version}"
    paths: dict[str, JSON] = {
        "/": {"options": _describe_api("apiDescription")},
        "/models": {"get": _list_models(), "post": _register_model()},
        "/models/{model_name}": _model_ops("", "a model", _model_path_params(False)),
        base: _model_ops("Version", "a model version", versioned),
        f"{base}/set-default": _set_default("a model version", versioned),
        "/api-description": {"get": _describe_api("getApiDescription")},
        "/metrics": {"get": _metrics_get()},
    }
    return _document(paths, "TorchServe-compatible management API")


def model_management_api(model_name: str, model_version: str | None = None) -> dict[str, object]:
    """Per-model document served for ``OPTIONS /models/{model_name}[/{model_version}]``."""
    what = f"model {model_name}"
    paths = {_literal("models", model_name): _model_ops("", what, [])}
    if model_version is not None:
        target = f"version {model_version} of {what}"
        paths[_literal("models", model_name, model_version)] = _model_ops("Version", target, [])
        set_default = _literal("models", model_name, model_version, "set-default")
        paths[set_default] = _set_default(target, [])
    return _document(paths, f"Management API of {what}")


def metrics_api() -> dict[str, object]:
    """Document for the metrics port."""
    return _document({"/metrics": {"get": _metrics_get()}}, "TorchServe-compatible metrics API")
