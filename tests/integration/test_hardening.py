"""Each HTTP limit against the real server, over raw sockets: the hostile client gets its status
or its close within the limit, and a well-behaved client on the same server is unaffected.

Limits are set small through ``make_config`` so the slow clients cost a second or two each.
"""

from __future__ import annotations

import json
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from tests.conftest import LOCAL, Server, make_config

HARD_STOP_S = 30.0
# Real time a deadline may overrun by on a loaded CI machine.
SLACK_S = 2.0
ServerFactory = Callable[..., Awaitable[Server]]
PING = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"


async def connect(server: Server, api: str = "inference") -> trio.SocketStream:
    return await trio.open_tcp_stream(LOCAL, server.running.ports[api])


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes (EOF or reset)."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


# Bytes read past the response a call returned (the next pipelined answer's), by stream.
_AHEAD: weakref.WeakKeyDictionary[trio.abc.Stream, bytes] = weakref.WeakKeyDictionary()


async def read_response(stream: trio.abc.Stream) -> bytes:
    """One response with a Content-Length body (what trioserve sends for non-streaming); bytes
    read past it are kept for the next call, as pipelined answers may share a read."""
    data = bytearray(_AHEAD.pop(stream, b""))
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed mid-head: {bytes(data)!r}"
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed mid-body"
        body += chunk
    if len(body) > length:
        _AHEAD[stream] = body[length:]
    return head + b"\r\n\r\n" + body[:length]


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> object:
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def assert_well_behaved_client_is_served(server: Server) -> None:
    """A client that behaves gets its answer at once, on both listeners."""
    with trio.fail_after(5):
        ping = await server.inference.get("/ping")
        assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})
        listed = await server.management.get("/models")
        assert listed.status_code == 200


async def trickle(stream: trio.abc.Stream, data: bytes, interval_s: float) -> None:
    """Send ``data`` one byte per ``interval_s`` until done or the server hangs up."""
    for i in range(len(data)):
        try:
            await stream.send_all(data[i : i + 1])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(interval_s)


async def test_head_trickled_at_one_byte_per_second_is_cut_at_the_header_deadline(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_header_timeout=1.5))
    slow_head = b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream, trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(trickle, stream, slow_head, 1.0)  # would take > 60 s
            await assert_well_behaved_client_is_served(server)
            assert await read_until_closed(stream) == b""
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert 1.5 <= elapsed < 1.5 + SLACK_S
    await assert_well_behaved_client_is_served(server)


@pytest.mark.parametrize("whole", [True, False], ids=["complete-head", "incomplete-head"])
async def test_head_over_http_max_header_bytes_is_431(
    server_factory: ServerFactory, model_store: Path, whole: bool
) -> None:
    server = await server_factory(make_config(model_store, http_max_header_bytes=1024))
    head = b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 4096
    if whole:
        head += b"\r\n\r\n"  # arrives in one read: h11 alone would accept it
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            await stream.send_all(head)
            reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nconnection: close\r\n" in reply
    assert json_body(reply) == {
        "code": 431,
        "type": "BadRequestException",
        "message": "Request Header Fields Too Large",
    }
    # A head just under the limit is served.
    async with await connect(server) as stream:
        await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Ok: " + b"c" * 900 + b"\r\n\r\n")
        assert status_of(await read_response(stream)) == 200
    await assert_well_behaved_client_is_served(server)


async def test_body_trickle_is_cut_at_the_body_deadline(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_body_timeout=1.0))
    head = b"POST /predictions/any HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream, trio.open_nursery() as nursery:
            await stream.send_all(head)
            start = trio.current_time()
            nursery.start_soon(trickle, stream, b"x" * 1000, 0.1)  # would take 100 s
            await assert_well_behaved_client_is_served(server)
            assert await read_until_closed(stream) == b""
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert 1.0 <= elapsed < 1.0 + SLACK_S
    await assert_well_behaved_client_is_served(server)


async def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_keepalive_timeout=1.0))
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            await stream.send_all(PING)
            reply = await read_response(stream)
            assert b"\r\nconnection: keep-alive\r\n" in reply
            start = trio.current_time()
            await assert_well_behaved_client_is_served(server)
            assert await read_until_closed(stream) == b""
            elapsed = trio.current_time() - start
    assert 0.9 <= elapsed < 1.0 + SLACK_S


async def test_client_that_stops_reading_is_dropped_at_the_write_deadline(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_write_timeout=1.0))
    # Pipelined requests whose answers (the API description, ~40 KiB each) the client never
    # reads: they fill both socket buffers, and the next slice waits past the deadline.
    count = 400
    request = b"OPTIONS / HTTP/1.1\r\nHost: t\r\n\r\n"
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            await stream.send_all(request * count)
            await trio.sleep(1.0 + SLACK_S)
            await assert_well_behaved_client_is_served(server)
            received = await read_until_closed(stream)
    answered = received.count(b"HTTP/1.1 200 OK\r\n")
    assert 0 < answered < count


async def test_connections_over_http_max_connections_get_503_and_are_closed(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_max_connections=2))
    held = [await connect(server), await connect(server)]
    with trio.fail_after(HARD_STOP_S):
        await trio.sleep(0.2)  # both accepted and counted
        async with await connect(server) as extra:
            await extra.send_all(PING)
            reply = await read_until_closed(extra)
        assert status_of(reply) == 503
        assert b"\r\nconnection: close\r\n" in reply
        assert json_body(reply) == {
            "code": 503,
            "type": "ServiceUnavailableException",
            "message": "Too many open connections; please retry later.",
        }
        # The cap is per listener: management is unaffected.
        assert (await server.management.get("/models")).status_code == 200
        # A slot freed is a slot for the next client.
        await held.pop().aclose()
        while True:
            async with await connect(server) as stream:
                await stream.send_all(PING)
                if status_of(await read_response(stream)) == 200:
                    break
            await trio.sleep(0.05)
    for stream in held:
        await stream.aclose()
    await assert_well_behaved_client_is_served(server)


async def test_connection_closes_after_http_max_requests_per_connection(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, http_max_requests_per_connection=3))
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            for _ in range(2):
                await stream.send_all(PING)
                reply = await read_response(stream)
                assert status_of(reply) == 200
                assert b"\r\nconnection: keep-alive\r\n" in reply
            await stream.send_all(PING)
            last = await read_until_closed(stream)
    assert status_of(last) == 200
    assert b"\r\nconnection: close\r\n" in last
    await assert_well_behaved_client_is_served(server)


async def test_plain_and_h11_requests_share_a_connection(server: Server) -> None:
    """Plain requests (parsed without h11) and the others (h11's) alternate on one keep-alive
    connection, one by one and pipelined, each answered in order."""
    chunked = b"3\r\nabc\r\n0\r\n\r\n"
    h11_only = [
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n\r\n",  # non-ASCII value
        b"POST /ping HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
    ]
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            for request in h11_only:
                await stream.send_all(PING)
                assert status_of(await read_response(stream)) == 200
                await stream.send_all(request)
                reply = await read_response(stream)
                assert status_of(reply) == 200
                assert json_body(reply) == {"status": "Healthy"}
            await stream.send_all(b"".join([PING, *h11_only, PING]))
            replies = [await read_response(stream) for _ in range(4)]
    assert [status_of(r) for r in replies] == [200, 200, 200, 200]
    await assert_well_behaved_client_is_served(server)


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    requests = PING + b"OPTIONS / HTTP/1.1\r\nHost: t\r\n\r\n" + PING
    with trio.fail_after(HARD_STOP_S):
        async with await connect(server) as stream:
            await stream.send_all(requests)
            replies = [await read_response(stream) for _ in range(3)]
    assert [status_of(r) for r in replies] == [200, 200, 200]
    assert json_body(replies[0]) == json_body(replies[2]) == {"status": "Healthy"}
    assert "openapi" in json_body(replies[1])  # type: ignore[operator]
    await assert_well_behaved_client_is_served(server)
