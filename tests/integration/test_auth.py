"""Token authorization against the real server (contract §0.6): the key file it writes, which
port takes which key, the /token API, the check from the request head, and gRPC metadata."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest
import trio
from google.protobuf import empty_pb2

from tests.conftest import LOCAL, Server, make_config
from tests.integration.test_grpc import call, pb, rpc_error
from tests.support.models import ECHO_HANDLER, handler_archive
from trioserve.auth import AUTH_FAILED, KEY_FILE, TOKEN_API_FAILED
from trioserve.config import Address, Config
from trioserve.server import Running, serve

__all__ = ["pb"]  # the grpcio stubs fixture, shared with test_grpc

HARD_STOP_S = 60.0
ServerFactory = Callable[..., Awaitable[Server]]


def auth_config(model_store: Path, **overrides: Any) -> Config:
    return make_config(model_store, disable_token_authorization=False, **overrides)


@pytest.fixture
async def auth_server(
    server_factory: ServerFactory,
    model_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Server:
    monkeypatch.chdir(tmp_path)  # the key file goes to the server's working directory
    return await server_factory(auth_config(model_store))


def keys(directory: Path) -> dict[str, str]:
    doc = json.loads((directory / KEY_FILE).read_text())
    return {kind: entry["key"] for kind, entry in doc.items()}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, message: str = AUTH_FAILED) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 400, "type": "InvalidKeyException", "message": message}
    assert response.headers["connection"] == "close"


async def test_server_writes_a_private_key_file_in_its_working_directory(
    auth_server: Server, tmp_path: Path
) -> None:
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc) == {"management", "inference", "API"}
    assert set(doc["inference"]) == {"key", "expiration time"}
    assert all(len(entry["key"]) >= 22 for entry in doc.values())


async def test_inference_port_needs_the_inference_key_on_every_route(
    auth_server: Server, tmp_path: Path
) -> None:
    k = keys(tmp_path)
    client = auth_server.inference
    assert_refused(await client.get("/ping"))
    assert_refused(await client.get("/ping", headers=bearer("wrong")))
    assert_refused(await client.get("/ping", headers=bearer(k["management"])))
    assert_refused(await client.get("/ping", headers={"Authorization": k["inference"]}))
    assert_refused(await client.post("/predictions/nope", content=b"x"))
    assert_refused(await client.get("/no/such/route"))
    ok = await client.get("/ping", headers=bearer(k["inference"]))
    assert (ok.status_code, ok.json()) == (200, {"status": "Healthy"})
    missing = await client.post("/predictions/nope", content=b"x", headers=bearer(k["inference"]))
    assert missing.json()["type"] == "ModelNotFoundException"
    # No key for the API descriptions (contract §0.6).
    assert (await client.options("/")).status_code == 200
    assert (await client.get("/api-description")).status_code == 200


async def test_management_port_needs_the_management_key_and_metrics_none(
    auth_server: Server, tmp_path: Path
) -> None:
    k = keys(tmp_path)
    client = auth_server.management
    assert_refused(await client.get("/models"))
    assert_refused(await client.get("/models", headers=bearer(k["inference"])))
    assert_refused(await client.post("/models", params={"url": "x.mar"}))
    listed = await client.get("/models", headers=bearer(k["management"]))
    assert (listed.status_code, listed.json()) == (200, {"models": []})
    assert (await client.options("/")).status_code == 200
    port = auth_server.running.ports["metrics"]
    async with httpx.AsyncClient(base_url=f"http://{LOCAL}:{port}") as metrics:
        assert (await metrics.get("/metrics")).status_code == 200


async def test_token_api_regenerates_a_key_with_the_api_key(
    auth_server: Server, tmp_path: Path
) -> None:
    before = keys(tmp_path)
    client = auth_server.management
    api = bearer(before["API"])
    assert_refused(await client.get("/token", params={"type": "inference"}), TOKEN_API_FAILED)
    wrong_key = bearer(before["management"])
    refused = await client.get("/token", params={"type": "inference"}, headers=wrong_key)
    assert_refused(refused, TOKEN_API_FAILED)
    bad_type = await client.get("/token", params={"type": "API"}, headers=api)
    assert_refused(bad_type, TOKEN_API_FAILED)
    refreshed = await client.put("/token", params={"type": "inference"}, headers=api)
    assert (refreshed.status_code, refreshed.content) == (200, b"\n")
    after = keys(tmp_path)
    assert after["inference"] != before["inference"]
    assert after["management"] == before["management"]
    assert after["API"] == before["API"]
    inference = auth_server.inference
    assert_refused(await inference.get("/ping", headers=bearer(before["inference"])))
    assert (await inference.get("/ping", headers=bearer(after["inference"]))).status_code == 200
    # The route is /token exactly (0.12 matches any path containing it).
    assert_refused(await client.get("/models/tokenizer", headers=api))


async def test_missing_key_is_refused_from_the_head_before_the_body(
    auth_server: Server, tmp_path: Path
) -> None:
    head = b"POST /predictions/m HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n"
    with trio.fail_after(HARD_STOP_S):
        async with await trio.open_tcp_stream(LOCAL, auth_server.running.ports["inference"]) as s:
            await s.send_all(head)  # and none of the body
            data = bytearray()
            while chunk := await s.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(bytes(data).partition(b"\r\n\r\n")[2])["message"] == AUTH_FAILED


async def test_prediction_with_the_inference_key(
    auth_server: Server, tmp_path: Path, model_store: Path
) -> None:
    k = keys(tmp_path)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    query = {"url": "echo.mar", "initial_workers": "1", "synchronous": "true"}
    registered = await auth_server.management.post(
        "/models", params=query, headers=bearer(k["management"])
    )
    assert registered.status_code == 200, registered.text
    inference = auth_server.inference
    assert_refused(await inference.post("/predictions/echo", content=b"hi"))
    key = bearer(k["inference"])
    answer = await inference.post("/predictions/echo", content=b"hi", headers=key)
    assert (answer.status_code, answer.content) == (200, b"hi")


async def test_shared_listener_takes_each_apis_own_key(
    server_factory: ServerFactory,
    model_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        shared = Address("http", LOCAL, int(probe.getsockname()[1]))
    server = await server_factory(
        auth_config(model_store, inference_address=shared, management_address=shared)
    )
    k = keys(tmp_path)
    client = server.inference
    assert (await client.get("/ping", headers=bearer(k["inference"]))).status_code == 200
    assert_refused(await client.get("/ping", headers=bearer(k["management"])))
    assert (await client.get("/models", headers=bearer(k["management"]))).status_code == 200
    assert_refused(await client.get("/models", headers=bearer(k["inference"])))
    # A path neither API has: either key gets its 404.
    for kind in ("inference", "management"):
        assert (await client.get("/nope", headers=bearer(k[kind]))).status_code == 404
    assert_refused(await client.get("/nope"))


async def test_key_file_is_removed_when_the_server_stops(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = auth_config(model_store)
    with trio.fail_after(HARD_STOP_S):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(
                lambda task_status: serve(config, handle_signals=False, task_status=task_status)
            )
            assert (tmp_path / KEY_FILE).is_file()
            running.shutdown()
    assert not (tmp_path / KEY_FILE).exists()


async def test_grpc_calls_need_their_servers_key_in_metadata(
    auth_server: Server, tmp_path: Path, pb: SimpleNamespace
) -> None:
    k = keys(tmp_path)
    ports = auth_server.running.ports
    inference_channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc_inference']}")
    management_channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc_management']}")
    try:
        inference = pb.inference_pb2_grpc.InferenceAPIsServiceStub(inference_channel)
        management = pb.management_pb2_grpc.ManagementAPIsServiceStub(management_channel)
        list_models = pb.management_pb2.ListModelsRequest()
        for metadata in [(), (("authorization", f"Bearer {k['management']}"),)]:
            error = await rpc_error(inference.Ping, empty_pb2.Empty(), metadata=metadata)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == AUTH_FAILED
        good = (("authorization", f"Bearer {k['inference']}"),)
        health = await call(inference.Ping, empty_pb2.Empty(), metadata=good)
        assert json.loads(health.health) == {"status": "Healthy"}
        error = await rpc_error(management.ListModels, list_models, metadata=good)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        allowed = (("authorization", f"Bearer {k['management']}"),)
        listed = await call(management.ListModels, list_models, metadata=allowed)
        assert json.loads(listed.msg) == {"models": []}
    finally:
        inference_channel.close()
        management_channel.close()
