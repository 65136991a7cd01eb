"""Config keys that change what a running server does."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import make_config
from tests.support.models import INSPECT_HANDLER, handler_archive, write_archive


async def _register(server: Any, url: str) -> None:
    params = {"url": url, "initial_workers": "1", "synchronous": "true"}
    response = await server.management.post("/models", params=params)
    assert response.status_code == 200, response.text


async def test_decode_input_request_false_passes_bytes(
    server_factory: Any, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    server = await server_factory(make_config(model_store, decode_input_request=False))
    await _register(server, "inspect.mar")
    as_json = await server.inference.post("/predictions/inspect", json={"a": 1})
    assert as_json.json()["types"] == {"body": "bytearray"}
    as_text = await server.inference.post(
        "/predictions/inspect", content="t", headers={"content-type": "text/plain"}
    )
    assert as_text.json()["types"] == {"body": "bytearray"}


async def test_cors_headers_on_every_response(server_factory: Any, model_store: Path) -> None:
    config = make_config(
        model_store,
        cors_allowed_origin="https://example.test",
        cors_allowed_methods="GET, POST",
        cors_allowed_headers="X-Custom",
    )
    server = await server_factory(config)
    for response in (
        await server.inference.get("/ping"),
        await server.management.get("/models"),
    ):
        assert response.headers["access-control-allow-origin"] == "https://example.test"
        assert response.headers["access-control-allow-methods"] == "GET, POST"
        assert response.headers["access-control-allow-headers"] == "X-Custom"
    plain = await server_factory(make_config(model_store))
    assert "access-control-allow-origin" not in (await plain.inference.get("/ping")).headers


async def test_default_service_handler_serves_manifestless_archive(
    server_factory: Any, model_store: Path
) -> None:
    # An archive with no MANIFEST.json: the name comes from the register call and the
    # handler from default_service_handler.
    write_archive(model_store, "bare.mar", {"shout.py": textwrap.dedent(SHOUT_HANDLER)}, fmt="mar")
    server = await server_factory(make_config(model_store, default_service_handler="shout"))
    params = {
        "url": "bare.mar",
        "model_name": "bare",
        "initial_workers": "1",
        "synchronous": "true",
    }
    response = await server.management.post("/models", params=params)
    assert response.status_code == 200, response.text
    reply = await server.inference.post("/predictions/bare", content=b"quiet")
    assert reply.content == b"QUIET"
    described = (await server.management.get("/models/bare")).json()[0]
    assert described["modelVersion"] == "1.0"


SHOUT_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [bytes(row["body"]).upper() for row in data]
"""


async def test_max_request_size_applies_to_predictions(
    server_factory: Any, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    server = await server_factory(make_config(model_store, max_request_size=1000))
    await _register(server, "inspect.mar")
    small = await server.inference.post("/predictions/inspect", content=b"x" * 1000)
    assert small.status_code == 200
    big = await server.inference.post("/predictions/inspect", content=b"x" * 1001)
    assert big.status_code == 413
    assert big.content == b""
