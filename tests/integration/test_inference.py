"""Inference API against a running server with real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from openapi_spec_validator import validate

from tests.conftest import Server
from tests.support.models import (
    ECHO_HANDLER,
    INSPECT_HANDLER,
    eager_archive,
    expected_probs,
    handler_archive,
    torchscript_archive,
)


async def register(server: Server, url: str, **params: str) -> httpx.Response:
    query = {"url": url, "initial_workers": "1", "synchronous": "true", **params}
    return await server.management.post("/models", params=query)


async def test_ping_is_healthy_with_contract_headers(server: Server) -> None:
    response = await server.inference.get("/ping")
    assert response.status_code == 200
    assert response.text == '{\n  "status": "Healthy"\n}\n'
    assert response.headers["content-type"] == "application/json"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["cache-control"] == "no-cache; no-store, must-revalidate, private"
    assert response.headers["expires"] == "Thu, 01 Jan 1970 00:00:00 UTC"
    assert response.headers["connection"] == "keep-alive"
    assert len(response.headers["x-request-id"]) == 36


async def test_raw_body_prediction_round_trips(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    response = await server.inference.post("/predictions/echo", content=b"\x00\x01binary")
    assert response.status_code == 200
    assert response.content == b"\x00\x01binary"
    assert "content-type" not in response.headers


async def test_decode_input_request_types(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    assert (await register(server, "inspect.mar")).status_code == 200
    as_json = await server.inference.post("/predictions/inspect", json={"a": 1})
    assert as_json.json()["types"] == {"body": "dict"}
    as_text = await server.inference.post(
        "/predictions/inspect",
        content="héllo",
        headers={"content-type": "text/plain; charset=utf-8"},
    )
    assert as_text.json()["types"] == {"body": "str"}
    assert as_text.json()["values"] == {"body": "héllo"}
    raw = await server.inference.post("/predictions/inspect", content=b"xyz")
    assert raw.json()["types"] == {"body": "bytearray"}


async def test_multipart_parts_become_inputs(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    assert (await register(server, "inspect.mar")).status_code == 200
    response = await server.inference.post(
        "/predictions/inspect",
        data={"field": "plain"},
        files={
            "data": ("a.json", b'{"k": 2}', "application/json"),
            "img": ("x.bin", b"\x89PNG", "image/png"),
        },
    )
    body = response.json()
    assert body["types"] == {"field": "bytearray", "data": "dict", "img": "bytearray"}
    assert body["values"]["data"] == {"k": 2}
    assert body["values"]["field"] == "plain"


async def test_repeated_multipart_name_keeps_last(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    files = [
        ("data", ("a", b"first", "application/octet-stream")),
        ("data", ("b", b"second", "application/octet-stream")),
    ]
    response = await server.inference.post("/predictions/echo", files=files)
    assert response.content == b"second"


async def test_handler_sets_content_type_status_and_sees_headers(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    assert (await register(server, "inspect.mar")).status_code == 200
    response = await server.inference.post(
        "/predictions/inspect/1.0/v1/completions",
        content=b"x",
        headers={
            "x-response-type": "application/x-custom",
            "x-response-status": "201",
            "X-Custom-Case": "kept",
        },
    )
    assert response.status_code == 201
    assert response.reason_phrase == "Custom"
    assert response.headers["content-type"] == "application/x-custom"
    body = json.loads(response.content)
    assert body["headers"]["X-Custom-Case"] == "kept"  # the client's case is kept
    assert body["headers"]["explain"] == "False"
    assert body["headers"]["url_path"] == "v1/completions"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_versioned_predictions_and_default(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, version="1.0", filename="echo1.mar")
    handler_archive(model_store, "echo", INSPECT_HANDLER, version="2.0", filename="echo2.mar")
    assert (await register(server, "echo1.mar")).status_code == 200
    assert (await register(server, "echo2.mar")).status_code == 200
    assert (await server.inference.post("/predictions/echo", content=b"hi")).content == b"hi"
    v2 = await server.inference.post("/predictions/echo/2.0", content=b"hi")
    assert v2.json()["values"] == {"body": "hi"}
    missing = await server.inference.post("/predictions/echo/9.9", content=b"hi")
    assert missing.status_code == 404
    assert missing.json() == {
        "code": 404,
        "type": "ModelVersionNotFoundException",
        "message": "Model version: 9.9 does not exist for model: echo",
    }
    assert missing.headers["connection"] == "close"


async def test_torchscript_model_with_base_handler(server: Server, model_store: Path) -> None:
    torchscript_archive(model_store, "tiny")
    assert (await register(server, "tiny.mar")).status_code == 200
    response = await server.inference.post("/predictions/tiny", json=[0.5, -1.0, 2.0, 0.0])
    assert response.status_code == 200
    assert response.json() == pytest.approx(expected_probs([0.5, -1.0, 2.0, 0.0]), abs=1e-6)


async def test_eager_model_with_state_dict(server: Server, model_store: Path) -> None:
    eager_archive(model_store, "eager", seed=3)
    assert (await register(server, "eager.mar")).status_code == 200
    response = await server.inference.post("/predictions/eager", json=[1.0, 2.0, 3.0, 4.0])
    assert response.json() == pytest.approx(expected_probs([1.0, 2.0, 3.0, 4.0], seed=3), abs=1e-6)


async def test_batching_gathers_concurrent_requests(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    response = await register(server, "inspect.mar", batch_size="4", max_batch_delay="2000")
    assert response.status_code == 200
    sizes: list[int] = []

    async def one(i: int) -> None:
        r = await server.inference.post("/predictions/inspect", content=str(i).encode())
        sizes.append(r.json()["batch_size"])

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    assert sizes == [4, 4, 4, 4]


async def test_batch_delay_sends_partial_batch(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    response = await register(server, "inspect.mar", batch_size="8", max_batch_delay="50")
    assert response.status_code == 200
    r = await server.inference.post("/predictions/inspect", content=b"alone")
    assert r.json()["batch_size"] == 1


async def test_unknown_model_and_paths(server: Server) -> None:
    r = await server.inference.post("/predictions/nope", content=b"x")
    assert r.status_code == 404
    assert r.json() == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": "Model not found: nope",
    }
    r = await server.inference.get("/predictions")
    assert r.json()["type"] == "ResourceNotFoundException"
    assert r.json()["message"] == "Requested resource is not found, please refer to API document."
    r = await server.inference.get("/")
    assert r.status_code == 405
    assert r.json()["message"] == "Requested method is not allowed, please refer to API document."


async def test_options_root_is_openapi(server: Server) -> None:
    r = await server.inference.options("/")
    assert r.status_code == 200
    assert r.json()["openapi"] == "3.0.1"
    assert "/predictions/{model_name}" in r.json()["paths"]
    validate(r.json())


async def test_ping_reports_draining_once_shutdown_begins(server: Server) -> None:
    server.state.draining = True  # what SIGTERM sets before the listeners close
    response = await server.inference.get("/ping")
    assert response.status_code == 503
    assert response.json() == {"status": "Draining"}
