"""The HTTP layer against the real server: raw sockets, curl, and listener sharing (contract §0)."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio

from tests.conftest import LOCAL, Server, make_config
from tests.support.models import ECHO_HANDLER, handler_archive
from trioserve.config import Address

HARD_STOP_S = 30.0
ServerFactory = Callable[..., Awaitable[Server]]


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int]
    closed: bool  # the server closed the connection after the response


async def exchange(
    port: int, head: bytes, *, host: str = LOCAL, method: str = "GET", expect_close: bool = True
) -> RawReply:
    """Send ``head`` (and nothing more) on a fresh TCP connection; read one response."""
    with trio.fail_after(HARD_STOP_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(head)
            client = h11.Connection(h11.CLIENT)
            # Only our h11 state moves: the request bytes went out raw above.
            client.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
            informational: list[int] = []
            body = bytearray()
            response: h11.Response | None = None
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert response is not None
            closed = False
            if expect_close:
                closed = await stream.receive_some(65536) == b""
            headers = {k.decode().lower(): v.decode() for k, v in response.headers.raw_items()}
            return RawReply(response.status_code, headers, bytes(body), informational, closed)


def port_of(server: Server, api: str) -> int:
    return server.running.ports[api]


@pytest.mark.parametrize("api", ["inference", "management"])
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
async def test_oversized_declared_body_is_413_without_sending_it(
    server: Server, api: str, expect: bool
) -> None:
    head = (
        b"POST /predictions/any HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n"
        + (b"Expect: 100-continue\r\n" if expect else b"")
        + b"\r\n"
    )
    reply = await exchange(port_of(server, api), head, method="POST")
    assert reply.status == 413
    assert reply.body == b""
    assert reply.headers["content-length"] == "0"
    assert reply.headers["connection"] == "close"
    assert reply.headers["pragma"] == "no-cache"
    assert reply.informational == []
    assert reply.closed


async def test_oversized_chunked_body_is_413(server: Server) -> None:
    limit = server.config.max_request_size
    with trio.fail_after(HARD_STOP_S):
        stream = await trio.open_tcp_stream(LOCAL, port_of(server, "inference"))
        async with stream:
            client = h11.Connection(h11.CLIENT)
            head = h11.Request(
                method="POST",
                target="/predictions/any",
                headers=[("Host", "t"), ("Transfer-Encoding", "chunked")],
            )
            await stream.send_all(client.send(head) or b"")
            chunk = b"x" * 65536
            sent = 0
            while sent <= limit:
                await stream.send_all(client.send(h11.Data(data=chunk)) or b"")
                sent += len(chunk)
            data = bytearray()
            while not data.endswith(b"\r\n\r\n"):
                more = await stream.receive_some(65536)
                assert more, f"closed without a response: {bytes(data)!r}"
                data += more
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"content-length: 0\r\n" in data
    assert b"connection: close\r\n" in data


async def test_models_with_and_without_trailing_slash_route_the_same(server: Server) -> None:
    plain = await server.management.get("/models")
    slashed = await server.management.get("/models/")
    assert plain.status_code == slashed.status_code == 200
    assert plain.json() == slashed.json() == {"models": []}
    ping = await server.inference.get("/ping/")
    assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})


async def test_head_request_does_not_break_the_server(server: Server) -> None:
    port = port_of(server, "inference")
    reply = await exchange(
        port, b"HEAD /ping HTTP/1.1\r\nHost: t\r\n\r\n", method="HEAD", expect_close=False
    )
    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.headers["content-length"]) > 0
    after = await server.inference.get("/ping")
    assert after.status_code == 200


async def test_malformed_request_is_400_and_closed(server: Server) -> None:
    reply = await exchange(port_of(server, "inference"), b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.status == 400
    assert json.loads(reply.body) == {
        "code": 400,
        "type": "BadRequestException",
        "message": "Invalid HTTP message.",
    }
    assert reply.headers["connection"] == "close"
    assert reply.closed


async def test_curl_expect_100_continue_gets_the_prediction(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    query = {"url": "echo.mar", "initial_workers": "1", "synchronous": "true"}
    registered = await server.management.post("/models", params=query)
    assert registered.status_code == 200, registered.text
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"curl-body-" * 1000)
    url = f"http://{LOCAL}:{port_of(server, 'inference')}/predictions/echo"
    with trio.fail_after(120):
        done = await trio.run_process(
            [
                "curl",
                "-sS",
                "-v",
                "--max-time",
                "60",
                "--expect100-timeout",
                "30",  # long enough that the body waits for our 100, not curl's own timer
                "-H",
                "Expect: 100-continue",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                f"@{payload}",
                url,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    trace = done.stderr.decode(errors="replace")
    assert done.returncode == 0, trace
    assert "< HTTP/1.1 100 Continue" in trace
    assert "< HTTP/1.1 200 OK" in trace
    assert done.stdout == payload.read_bytes()


async def test_shared_address_serves_inference_management_and_metrics(
    server_factory: ServerFactory, model_store: Path
) -> None:
    # A concrete port: two port-0 addresses mean two listeners ("any free port" each).
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        free = int(probe.getsockname()[1])
    shared = Address("http", LOCAL, free)
    server = await server_factory(
        make_config(
            model_store,
            inference_address=shared,
            management_address=shared,
            metrics_address=shared,
            enable_metrics_api=True,
        )
    )
    port = port_of(server, "inference")
    assert port_of(server, "management") == port_of(server, "metrics") == port
    handler_archive(model_store, "echo", ECHO_HANDLER)
    query = {"url": "echo.mar", "initial_workers": "1", "synchronous": "true"}
    registered = await server.inference.post("/models", params=query)  # the inference client
    assert registered.status_code == 200, registered.text
    listed = await server.inference.get("/models")
    assert [m["modelName"] for m in listed.json()["models"]] == ["echo"]
    predicted = await server.inference.post("/predictions/echo", content=b"same port")
    assert (predicted.status_code, predicted.content) == (200, b"same port")
    assert (await server.inference.get("/ping")).json() == {"status": "Healthy"}
    described = await server.inference.get("/models/echo")
    assert described.json()[0]["modelName"] == "echo"
    # Inference routes are tried first: OPTIONS / is the inference API description.
    api = await server.inference.options("/")
    assert api.json()["info"]["title"] == "TorchServe APIs"
    assert "/predictions/{model_name}" in api.json()["paths"]
    scraped = await server.inference.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")


def _can_bind(host: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_bind("127.0.0.2"), reason="needs 127.0.0.2 (Linux loopback /8)")
async def test_separate_addresses_keep_the_apis_apart(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(
        make_config(
            model_store,
            inference_address=Address("http", LOCAL, 0),
            management_address=Address("http", "127.0.0.2", 0),
            metrics_address=Address("http", "127.0.0.3", 0),
        )
    )
    inference = port_of(server, "inference")
    management = port_of(server, "management")
    metrics = port_of(server, "metrics")
    get = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
    on_inference = await exchange(inference, get % b"/models")
    assert on_inference.status == 404
    assert json.loads(on_inference.body)["type"] == "ResourceNotFoundException"
    on_management = await exchange(management, get % b"/ping", host="127.0.0.2")
    assert on_management.status == 404
    listed = await exchange(management, get % b"/models", host="127.0.0.2", expect_close=False)
    assert (listed.status, json.loads(listed.body)) == (200, {"models": []})
    scraped = await exchange(metrics, get % b"/metrics", host="127.0.0.3", expect_close=False)
    assert scraped.status == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert (await exchange(metrics, get % b"/ping", host="127.0.0.3")).status == 404
