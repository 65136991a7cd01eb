"""Tests for trioserve.api.openapi: every document is valid OpenAPI 3.0.1 and complete."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator, validate

from trioserve.api import openapi

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

INFERENCE_PATHS = {
    "/",
    "/ping",
    "/v1/models/{model_name}:predict",
    "/v2/models/{model_name}/infer",
    "/predictions/{model_name}",
    "/predictions/{model_name}/{model_version}",
    "/explanations/{model_name}",
    "/api-description",
    "/metrics",
}
KSERVE_EXTRA = {"/v1/models/{model_name}:explain", "/v2/models/{model_name}/explain"}
MANAGEMENT_PATHS = {
    "/",
    "/models",
    "/models/{model_name}",
    "/models/{model_name}/{model_version}",
    "/models/{model_name}/{model_version}/set-default",
    "/api-description",
    "/metrics",
}

DOCS: dict[str, Callable[[], dict[str, object]]] = {
    "inference": openapi.inference_api,
    "inference-kserve": lambda: openapi.inference_api(kserve=True),
    "management": openapi.management_api,
    "metrics": openapi.metrics_api,
    "model-inference": lambda: openapi.model_inference_api("mnist"),
    "model-inference-version": lambda: openapi.model_inference_api("mnist", "2.0"),
    "model-management": lambda: openapi.model_management_api("mnist"),
    "model-management-version": lambda: openapi.model_management_api("mnist", "2.0"),
}


@pytest.fixture(params=sorted(DOCS))
def doc(request: pytest.FixtureRequest) -> dict[str, Any]:
    return DOCS[request.param]()


def _walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in HTTP_METHODS
            yield path, method, op


def test_validates_as_openapi_301(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.0.1"
    validate(doc, cls=OpenAPIV30SpecValidator)
    validate(doc)


def test_json_round_trip(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc)) == doc


def test_info(doc: dict[str, Any]) -> None:
    assert doc["info"]["title"] == "TorchServe APIs"
    assert doc["info"]["version"] == openapi.SERVER_VERSION == "0.12.0"


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = [n["$ref"] for n in _walk(doc) if "$ref" in n]
    assert refs
    for ref in refs:
        assert ref.startswith("#/")
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        assert isinstance(target, dict)


def test_operation_ids_unique_and_operations_complete(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    for _, _, op in _operations(doc):
        assert op["summary"]
        assert "schema" in next(iter(op["responses"]["200"]["content"].values()))
        for param in op.get("parameters", []):
            assert "schema" in param


def test_errors_reference_error_schema(doc: dict[str, Any]) -> None:
    for path, _, op in _operations(doc):
        for code, response in op["responses"].items():
            if int(code) >= 400 and path != "/ping":  # ping answers 500 with a Status body
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}


def test_fresh_documents() -> None:
    first = openapi.management_api()
    first["paths"] = {}
    assert openapi.management_api()["paths"]


def test_inference_paths() -> None:
    doc: Any = openapi.inference_api()
    assert set(doc["paths"]) == INFERENCE_PATHS
    kserve: Any = openapi.inference_api(kserve=True)
    assert set(kserve["paths"]) == INFERENCE_PATHS | KSERVE_EXTRA
    assert set(doc["paths"]["/"]) == {"options"}
    assert set(doc["paths"]["/ping"]) == {"get"}
    body = doc["paths"]["/predictions/{model_name}"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/octet-stream", "multipart/form-data", "application/json"}
    assert body["multipart/form-data"]["schema"]["additionalProperties"]["format"] == "binary"
    versioned = doc["paths"]["/predictions/{model_name}/{model_version}"]["post"]
    assert {p["name"] for p in versioned["parameters"]} == {"model_name", "model_version"}


def test_management_paths_and_parameters() -> None:
    doc: Any = openapi.management_api()
    paths = doc["paths"]
    assert set(paths) == MANAGEMENT_PATHS
    assert set(paths["/models"]) == {"get", "post"}
    assert set(paths["/models/{model_name}"]) == {"get", "put", "delete"}
    assert set(paths["/models/{model_name}/{model_version}"]) == {"get", "put", "delete"}
    assert set(paths["/models/{model_name}/{model_version}/set-default"]) == {"put"}
    names = {p["name"]: p for p in paths["/models"]["post"]["parameters"]}
    assert set(names) == set(
        "url model_name handler runtime batch_size max_batch_delay response_timeout"
        " startup_timeout initial_workers synchronous s3_sse_kms".split()
    )
    assert names["url"]["required"] is True
    assert not any(p["required"] for n, p in names.items() if n != "url")
    listing = {p["name"] for p in paths["/models"]["get"]["parameters"]}
    assert listing == {"limit", "next_page_token"}
    scale = {p["name"] for p in paths["/models/{model_name}"]["put"]["parameters"]}
    assert scale == set("model_name min_worker max_worker number_gpu synchronous timeout".split())
    describe = {p["name"] for p in paths["/models/{model_name}"]["get"]["parameters"]}
    assert describe == {"model_name", "customized"}
    assert set(paths["/models"]["post"]["responses"]) >= {"200", "202", "400", "404", "409"}


def test_components() -> None:
    doc: Any = openapi.management_api()
    schemas = doc["components"]["schemas"]
    error = {"code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}}
    assert schemas["Error"]["properties"] == error
    assert schemas["Status"]["properties"] == {"status": {"type": "string"}}
    description = schemas["ModelDescription"]["properties"]
    assert set(description) >= set(
        "modelName modelVersion modelUrl runtime minWorkers maxWorkers batchSize maxBatchDelay"
        " responseTimeout startupTimeout loadedAtStartup workers jobQueueStatus"
        " customizedMetadata".split()
    )
    assert description["workers"]["items"] == {"$ref": "#/components/schemas/Worker"}
    worker = "id startTime status memoryUsage pid gpu gpuUsage".split()
    assert list(schemas["Worker"]["properties"]) == worker
    assert set(schemas["JobQueueStatus"]["properties"]) == {"remainingCapacity", "pendingRequests"}
    assert set(schemas["ModelList"]["properties"]) == {"nextPageToken", "models"}
    assert set(schemas["ModelListEntry"]["properties"]) == {"modelName", "modelUrl"}


def test_metrics_api() -> None:
    doc: Any = openapi.metrics_api()
    assert set(doc["paths"]) == {"/metrics"}
    op = doc["paths"]["/metrics"]["get"]
    (param,) = op["parameters"]
    assert param["name"] == "name[]"
    assert param["in"] == "query"
    assert param["schema"] == {"type": "array", "items": {"type": "string"}}
    assert "text/plain" in op["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [(None, {"/predictions/mnist"}), ("2.0", {"/predictions/mnist", "/predictions/mnist/2.0"})],
)
def test_model_inference_paths(version: str | None, expected: set[str]) -> None:
    doc: Any = openapi.model_inference_api("mnist", version)
    assert set(doc["paths"]) == expected
    assert all(path.startswith("/predictions/mnist") for path in doc["paths"])
    assert not any("{" in path for path in doc["paths"])  # literal, not templated
    assert all(p["in"] != "path" for n in _walk(doc) for p in n.get("parameters", []))
    assert all(set(item) == {"post"} for item in doc["paths"].values())


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, {"/models/mnist"}),
        ("2.0", {"/models/mnist", "/models/mnist/2.0", "/models/mnist/2.0/set-default"}),
    ],
)
def test_model_management_paths(version: str | None, expected: set[str]) -> None:
    doc: Any = openapi.model_management_api("mnist", version)
    assert set(doc["paths"]) == expected
    assert set(doc["paths"]["/models/mnist"]) == {"get", "put", "delete"}
    assert all(path.startswith("/models/mnist") for path in doc["paths"])
    assert not any("{" in path for path in doc["paths"])  # literal, not templated
    assert all(p["in"] != "path" for n in _walk(doc) for p in n.get("parameters", []))


def test_model_names_are_path_escaped() -> None:
    doc: Any = openapi.model_inference_api("a b", "1/0")
    assert set(doc["paths"]) == {"/predictions/a%20b", "/predictions/a%20b/1%2F0"}
    validate(doc)
