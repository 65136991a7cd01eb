"""http/limits.py and the limits the connection loop takes from it, over memory streams with
trio's autojump clock (no real time passes)."""

from __future__ import annotations

import json

import h11
import pytest
import trio
import trio.testing

from tests.unit.test_connection import VIRTUAL_STOP_S, connected
from trioserve.config import default_config
from trioserve.http import limits as limits_mod
from trioserve.http.connection import serve_connection
from trioserve.http.limits import (
    MIN_BODY_RATE,
    TOO_MANY_CONNECTIONS,
    WRITE_SLICE,
    ConnectionGate,
    Limits,
    refuse_connection,
)
from trioserve.http.request import Request
from trioserve.http.response import Response


def test_config_defaults_are_the_loops_defaults() -> None:
    config = default_config()
    assert Limits.from_config(config) == Limits(max_request_size=config.max_request_size)
    assert config.http_header_timeout <= 30
    assert config.http_body_timeout <= 30
    assert config.http_keepalive_timeout <= 30


def test_gate_admits_up_to_its_limit() -> None:
    gate = ConnectionGate(2)
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()
    assert gate.open == 2
    gate.leave()
    assert gate.try_enter()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def test_refused_connection_gets_a_whole_503_then_eof(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse_connection, server)
            data = await read_all(client)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    head = conn.next_event()
    assert isinstance(head, h11.Response)
    assert (head.status_code, head.reason) == (503, b"Service Unavailable")
    headers = dict(head.headers.raw_items())
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    body = conn.next_event()
    assert isinstance(body, h11.Data)
    assert json.loads(body.data) == {
        "code": 503,
        "type": "ServiceUnavailableException",
        "message": TOO_MANY_CONNECTIONS,
    }


async def test_refusal_of_a_client_that_never_reads_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.lockstep_stream_pair()
    start = trio.current_time()
    with trio.fail_after(VIRTUAL_STOP_S):
        await refuse_connection(server)
    assert trio.current_time() - start <= limits_mod.REFUSE_TIMEOUT_S + 0.1
    await client.aclose()


async def test_serve_connection_refuses_past_the_gate_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = ConnectionGate(1)
    gate.try_enter()  # the one slot is taken
    client, server = trio.testing.memory_stream_pair()

    async def never(request: Request) -> Response:
        raise AssertionError("a refused connection reached the handler")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, never, Limits(1000), "", None, None, gate)
            data = await read_all(client)
    assert data.startswith(b"HTTP/1.1 503 ")
    assert gate.open == 1  # the refused one never counted
    gate.leave()
    client, server = trio.testing.memory_stream_pair()

    async def ok(request: Request) -> Response:
        assert gate.open == 1
        return Response(200, b"ok")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, ok, Limits(1000), "", None, None, gate)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert (await read_all(client)).startswith(b"HTTP/1.1 200 ")
    assert gate.open == 0


async def test_last_allowed_request_says_close() -> None:
    async with connected(Limits(1000, max_requests_per_connection=2)) as s:
        await s.client.request("/ok")
        assert (await s.client.response()).headers["connection"] == "keep-alive"
        s.client.conn.start_next_cycle()
        await s.client.request("/ok")
        assert (await s.client.response()).headers["connection"] == "close"
        await s.client.assert_closed_by_server()
        assert len(s.handler.requests) == 2


@pytest.mark.parametrize(("rate", "served"), [(2 * MIN_BODY_RATE, True), (1024, False)])
async def test_body_deadline_is_pushed_back_by_data_only(
    autojump_clock: trio.testing.MockClock, rate: int, served: bool
) -> None:
    """A body arriving steadily faster than MIN_BODY_RATE is read however long it takes; a
    slower one is cut soon after ``body_timeout``."""
    size = 8 * MIN_BODY_RATE  # 8 s at the minimum rate, against a 1 s body_timeout
    limits = Limits(10 * size, body_timeout=1.0)
    async with connected(limits, hard_stop_s=VIRTUAL_STOP_S) as s:
        headers = [("Host", "t"), ("Content-Length", str(size))]
        await s.client.send(h11.Request(method="POST", target="/echo", headers=headers))
        start = trio.current_time()
        step = 1024

        async def upload() -> None:
            try:
                for _ in range(size // step):
                    await trio.sleep(step / rate)
                    await s.client.send(h11.Data(data=b"b" * step))
                await s.client.send(h11.EndOfMessage())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            if served:
                reply = await s.client.response()
                assert (reply.status, len(reply.body)) == (200, size)
                assert trio.current_time() - start >= 3.9  # 4x body_timeout, read whole
            else:
                await s.client.assert_closed_by_server()
                assert trio.current_time() - start < 1.5
                assert s.handler.requests == []
            nursery.cancel_scope.cancel()


async def test_slow_but_steady_reader_gets_a_large_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The write deadline is per slice: a reader taking each slice within it gets everything,
    however long the whole response takes."""
    size = 20 * WRITE_SLICE
    limits = Limits(size, write_timeout=1.0)
    async with connected(limits, lockstep=True, hard_stop_s=VIRTUAL_STOP_S) as s:
        await s.client.request("/echo", "POST", body=b"r" * size)
        start = trio.current_time()
        received = 0
        while True:
            await trio.sleep(0.5)  # under the deadline per slice, 10 s in all
            event = await s.client.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                received += len(event.data)
        assert received == size
        assert trio.current_time() - start > 1.0
