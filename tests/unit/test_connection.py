"""The connection loop over in-memory streams, with a real h11 client on the other end.

Each test runs under a hard deadline (``fail_after``) so a hang fails instead of stalling; the
timeout tests use trio's ``autojump_clock``, so no real time passes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.lowlevel
import trio.testing

from trioserve.errors import ModelNotFound, ResourceNotFound
from trioserve.http.connection import (
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_HEAD_BYTES,
    WRITE_TIMEOUT_S,
    Drain,
    Limits,
    serve_connection,
)
from trioserve.http.request import Request
from trioserve.http.response import Response, StreamingResponse

LIMIT = 1000
LIMITS = Limits(max_request_size=LIMIT)
HARD_STOP_S = 10.0  # real seconds before a test fails
VIRTUAL_STOP_S = 10 * BODY_TIMEOUT_S  # virtual seconds, for tests under autojump_clock
COMMON = {
    "pragma": "no-cache",
    "cache-control": "no-cache; no-store, must-revalidate, private",
    "expires": "Thu, 01 Jan 1970 00:00:00 UTC",
}
INVALID_HTTP = {"code": 400, "type": "BadRequestException", "message": "Invalid HTTP message."}


@dataclass
class Reply:
    status: int
    reason: bytes
    headers: dict[str, str]  # lower-cased names; a repeated name would show up in ``raw``
    raw: list[tuple[str, str]]
    body: bytes
    informational: list[int]


class FakeHandler:
    """Answers by path; records every request it is called with."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.stream_closed = False
        self.chunks_sent = 0
        self.release = trio.Event()
        self.routes: dict[str, Callable[[Request], Awaitable[Response | StreamingResponse]]] = {
            "/ok": self._ok,
            "/echo": self._echo,
            "/missing": self._missing,
            "/no-route": self._no_route,
            "/boom": self._boom,
            "/no-type": self._no_type,
            "/stream": self._stream,
            "/stream-fails": self._stream_fails,
            "/stream-gated": self._stream_gated,
            "/no-content": self._no_content,
            "/framing": self._framing,
            "/bad-header": self._bad_header,
            "/bad-reason": self._bad_reason,
            "/custom-reason": self._custom_reason,
            "/gated": self._gated,
        }
        self.entered = trio.Event()
        self.gated_cancelled = False

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        self.requests.append(request)
        return await self.routes[request.path](request)

    async def _ok(self, request: Request) -> Response:
        return Response(200, b"hello", "text/plain")

    async def _echo(self, request: Request) -> Response:
        return Response(200, request.body, "application/octet-stream")

    async def _missing(self, request: Request) -> Response:
        raise ModelNotFound("Model not found: x")

    async def _no_route(self, request: Request) -> Response:
        raise ResourceNotFound()

    async def _boom(self, request: Request) -> Response:
        raise RuntimeError("handler bug")

    async def _gated(self, request: Request) -> Response:
        self.entered.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.gated_cancelled = True
            raise
        return Response(200, b"late")

    async def _no_type(self, request: Request) -> Response:
        return Response(200, b"raw")

    async def _chunks(self, parts: Sequence[bytes], fail: bool = False) -> AsyncIterator[bytes]:
        try:
            for chunk in parts:
                await trio.lowlevel.checkpoint()
                self.chunks_sent += 1
                yield chunk
            if fail:
                raise RuntimeError("stream broke")
        finally:
            self.stream_closed = True

    async def _stream(self, request: Request) -> StreamingResponse:
        return StreamingResponse(200, self._chunks([b"hel", b"", b"lo"]), "text/plain")

    async def _stream_fails(self, request: Request) -> StreamingResponse:
        return StreamingResponse(200, self._chunks([b"part"], fail=True))

    async def _gated_chunks(self) -> AsyncIterator[bytes]:
        try:
            self.chunks_sent += 1
            yield b"first"
            await self.release.wait()
            for _ in range(100):
                self.chunks_sent += 1
                yield b"more"
        finally:
            self.stream_closed = True

    async def _stream_gated(self, request: Request) -> StreamingResponse:
        return StreamingResponse(200, self._gated_chunks())

    async def _no_content(self, request: Request) -> Response:
        return Response(204, b"must not be sent")

    async def _framing(self, request: Request) -> Response:
        headers = [
            ("Content-Length", "999"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("X-Kept", "yes"),
        ]
        return Response(200, b"abc", headers=headers)

    async def _bad_header(self, request: Request) -> Response:
        return Response(200, b"x", headers=[("X-Bad", "a\r\nInjected: 1")])

    async def _bad_reason(self, request: Request) -> Response:
        return Response(200, b"x", reason="OK\r\nInjected: 1")

    async def _custom_reason(self, request: Request) -> Response:
        return Response(201, b"x", reason="Custom")


@dataclass
class Client:
    """A real h11 client driving the server end of a memory stream."""

    stream: trio.abc.Stream
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)

    async def request(
        self,
        target: str = "/ok",
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> None:
        all_headers = [("Host", "test"), *headers]
        if body is not None:
            all_headers.append(("Content-Length", str(len(body))))
        await self.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    def pretend_sent(self, method: str = "GET") -> None:
        """Advance our h11 state as if a request went out (its bytes were sent raw instead)."""
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        self.conn.send(h11.EndOfMessage())

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            assert isinstance(event, h11.Event)
            return event

    async def response(self) -> Reply:
        informational: list[int] = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), event
            head = event
            break
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            assert isinstance(event, h11.Data), event
            body += event.data
        raw = [(k.decode(), v.decode()) for k, v in head.headers.raw_items()]
        return Reply(
            head.status_code,
            head.reason,
            {k.lower(): v for k, v in raw},
            raw,
            bytes(body),
            informational,
        )

    async def assert_closed_by_server(self) -> None:
        """The server ended the stream and sent nothing more."""
        assert self.conn.trailing_data[0] == b""
        assert await self.stream.receive_some(65536) == b""


@dataclass
class Session:
    client: Client
    handler: FakeHandler
    server_done: trio.Event


@asynccontextmanager
async def connected(
    limits: Limits = LIMITS,
    *,
    lockstep: bool = False,
    hard_stop_s: float = HARD_STOP_S,
    drain: Drain | None = None,
) -> AsyncIterator[Session]:
    """A served connection; on exit the client closes its end and the server task must end."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = pair()
    handler = FakeHandler()
    done = trio.Event()

    async def run_server() -> None:
        try:
            await serve_connection(server_stream, handler, limits, "/127.0.0.1:1", drain)
        finally:
            done.set()

    with trio.fail_after(hard_stop_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            yield Session(Client(client_stream), handler, done)
            await client_stream.aclose()
            await done.wait()


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async with connected() as s:
        await s.client.request("/ok")
        first = await s.client.response()
        assert (first.status, first.body) == (200, b"hello")
        assert first.headers["connection"] == "keep-alive"
        s.client.conn.start_next_cycle()
        await s.client.request("/echo", "POST", body=b"second")
        second = await s.client.response()
        assert (second.status, second.body) == (200, b"second")
        assert not s.server_done.is_set()
        assert [r.path for r in s.handler.requests] == ["/ok", "/echo"]
        assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("target", "status", "type_name"),
    [
        ("/missing", 404, "ModelNotFoundException"),
        ("/no-route", 404, "ResourceNotFoundException"),
    ],
)
async def test_error_response_says_close_and_closes_the_stream(
    target: str, status: int, type_name: str
) -> None:
    async with connected() as s:
        await s.client.request(target, headers=[("Connection", "keep-alive")])
        reply = await s.client.response()
        assert reply.status == status
        assert reply.headers["connection"] == "close"
        assert reply.headers["content-type"] == "application/json"
        assert json.loads(reply.body)["type"] == type_name
        assert reply.body.endswith(b"}\n")
        assert reply.headers["content-length"] == str(len(reply.body))
        await s.client.assert_closed_by_server()


@pytest.mark.parametrize("expect", [False, True])
async def test_declared_length_over_limit_is_413_before_the_body_is_sent(expect: bool) -> None:
    async with connected() as s:
        headers = [("Host", "test"), ("Content-Length", "100000000")]
        if expect:
            headers.append(("Expect", "100-continue"))
        # Only the head goes out: a server that waited for the body would hang here.
        await s.client.send(h11.Request(method="POST", target="/echo", headers=headers))
        reply = await s.client.response()
        assert reply.status == 413
        assert reply.reason == b"Request Entity Too Large"
        assert reply.body == b""
        assert reply.headers["content-length"] == "0"
        assert reply.headers["connection"] == "close"
        assert reply.informational == []  # no 100 Continue for a body that will be refused
        assert s.handler.requests == []
        await s.client.assert_closed_by_server()


async def test_declared_length_at_limit_is_served() -> None:
    async with connected() as s:
        await s.client.request("/echo", "POST", body=b"x" * LIMIT)
        reply = await s.client.response()
        assert (reply.status, len(reply.body)) == (200, LIMIT)


async def test_chunked_body_is_joined() -> None:
    async with connected() as s:
        head = h11.Request(
            method="POST",
            target="/echo",
            headers=[("Host", "test"), ("Transfer-Encoding", "chunked")],
        )
        await s.client.send(head, h11.Data(data=b"ab"), h11.Data(data=b"cd"), h11.EndOfMessage())
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"abcd")


async def test_chunked_body_growing_past_limit_is_413() -> None:
    async with connected() as s:
        head = h11.Request(
            method="POST",
            target="/echo",
            headers=[("Host", "test"), ("Transfer-Encoding", "chunked")],
        )
        await s.client.send(head)
        for _ in range(LIMIT // 100):
            await s.client.send(h11.Data(data=b"y" * 100))
        await s.client.send(h11.Data(data=b"y"))  # one byte over; the message never ends
        reply = await s.client.response()
        assert reply.status == 413
        assert reply.body == b""
        assert reply.headers["content-length"] == "0"
        assert reply.headers["connection"] == "close"
        assert s.handler.requests == []
        await s.client.assert_closed_by_server()


async def test_expect_100_continue_gets_100_then_the_response() -> None:
    async with connected() as s:
        headers = [("Host", "test"), ("Content-Length", "5"), ("Expect", "100-continue")]
        await s.client.send(h11.Request(method="POST", target="/echo", headers=headers))
        event = await s.client.next_event()
        assert isinstance(event, h11.InformationalResponse)
        assert (event.status_code, event.reason) == (100, b"Continue")
        await s.client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"hello")


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
    ],
    ids=["request line", "header line", "content-length", "two lengths", "no host"],
)
async def test_malformed_request_is_400_invalid_http_message(raw: bytes) -> None:
    async with connected() as s:
        s.client.pretend_sent()
        await s.client.stream.send_all(raw)
        reply = await s.client.response()
        assert reply.status == 400
        assert json.loads(reply.body) == INVALID_HTTP
        assert reply.headers["connection"] == "close"
        assert reply.headers["content-type"] == "application/json"
        assert s.handler.requests == []
        await s.client.assert_closed_by_server()


async def test_head_over_the_limit_is_431() -> None:
    """A huge head is 431 with the JSON error body (not 400: the client should shrink it)."""
    async with connected() as s:
        s.client.pretend_sent()
        await s.client.stream.send_all(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ")
        await s.client.stream.send_all(b"a" * (MAX_HEAD_BYTES + 1))
        reply = await s.client.response()
        assert (reply.status, reply.reason) == (431, b"Request Header Fields Too Large")
        assert json.loads(reply.body) == {
            "code": 431,
            "type": "BadRequestException",
            "message": "Request Header Fields Too Large",
        }
        assert reply.headers["connection"] == "close"
        assert s.handler.requests == []
        await s.client.assert_closed_by_server()


async def test_malformed_chunked_body_is_400() -> None:
    async with connected() as s:
        s.client.pretend_sent("POST")
        raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        await s.client.stream.send_all(raw)
        reply = await s.client.response()
        assert (reply.status, json.loads(reply.body)) == (400, INVALID_HTTP)
        assert s.handler.requests == []


async def test_common_headers_on_every_response() -> None:
    async with connected() as s:
        await s.client.request("/ok", headers=[("X-Request-Id", "client-chosen")])
        reply = await s.client.response()
        for name, value in COMMON.items():
            assert reply.headers[name] == value
        request_id = reply.headers["x-request-id"]
        assert request_id != "client-chosen"
        assert uuid.UUID(request_id).version == 4
        assert s.handler.requests[0].request_id == request_id
        assert reply.headers["content-length"] == "5"
        assert reply.headers["content-type"] == "text/plain"
        assert reply.headers["connection"] == "keep-alive"
        assert reply.reason == b"OK"
        assert len(reply.raw) == len(reply.headers)  # no header sent twice


async def test_common_headers_on_error_and_413_responses() -> None:
    async with connected() as s:
        await s.client.send(
            h11.Request(
                method="POST",
                target="/echo",
                headers=[("Host", "t"), ("Content-Length", str(LIMIT + 1))],
            )
        )
        reply = await s.client.response()
        assert reply.status == 413
        for name, value in COMMON.items():
            assert reply.headers[name] == value
        assert uuid.UUID(reply.headers["x-request-id"]).version == 4


async def test_content_type_only_when_the_handler_sets_one() -> None:
    async with connected() as s:
        await s.client.request("/no-type")
        reply = await s.client.response()
        assert reply.body == b"raw"
        assert "content-type" not in reply.headers


async def test_handler_exception_is_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="trioserve.http.connection")
    async with connected() as s:
        await s.client.request("/boom")
        reply = await s.client.response()
        assert reply.status == 500
        body = json.loads(reply.body)
        assert body["code"] == 500
        assert body["type"] == "InternalServerException"
        assert "handler bug" not in reply.body.decode()  # internals stay in the log
        assert reply.headers["connection"] == "close"
        await s.client.assert_closed_by_server()
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert "/boom" in logged[0].getMessage()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with connected() as s:
        raw = (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none"
            b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nthree\r\n0\r\n\r\n"
        )
        await s.client.stream.send_all(raw)
        bodies = []
        for method in ("POST", "GET", "POST"):
            s.client.pretend_sent(method)
            reply = await s.client.response()
            assert reply.status == 200
            bodies.append(reply.body)
            s.client.conn.start_next_cycle()
        assert bodies == [b"one", b"hello", b"three"]
        assert [r.path for r in s.handler.requests] == ["/echo", "/ok", "/echo"]


async def test_a_head_split_across_reads_goes_to_h11_and_the_next_plain_one_does_not() -> None:
    async with connected() as s:
        await s.client.stream.send_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-")
        await trio.testing.wait_all_tasks_blocked()  # the server has read the first part alone
        await s.client.stream.send_all(b"Length: 3\r\n\r\none")
        s.client.pretend_sent("POST")
        assert (await s.client.response()).body == b"one"
        s.client.conn.start_next_cycle()
        await s.client.stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\ntwo"
        )
        s.client.pretend_sent("POST")
        assert (await s.client.response()).body == b"two"


async def test_a_plain_body_split_across_reads_is_joined() -> None:
    async with connected() as s:
        await s.client.stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nabc"
        )
        await trio.testing.wait_all_tasks_blocked()  # head parsed, waiting for the body's rest
        await s.client.stream.send_all(b"def")
        await trio.testing.wait_all_tasks_blocked()
        await s.client.stream.send_all(b"ghiGET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        s.client.pretend_sent("POST")
        assert (await s.client.response()).body == b"abcdefghi"
        s.client.conn.start_next_cycle()
        s.client.pretend_sent("GET")
        assert (await s.client.response()).body == b"hello"
        assert [r.path for r in s.handler.requests] == ["/echo", "/ok"]


async def test_head_request_gets_length_but_no_body_and_keeps_the_connection() -> None:
    async with connected() as s:
        await s.client.request("/ok", "HEAD")
        reply = await s.client.response()
        assert reply.status == 200
        assert reply.body == b""
        assert reply.headers["content-length"] == "5"
        s.client.conn.start_next_cycle()
        await s.client.request("/ok")
        assert (await s.client.response()).body == b"hello"


async def test_head_request_to_a_streaming_response_sends_no_chunks() -> None:
    async with connected() as s:
        await s.client.request("/stream", "HEAD")
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"")
        s.client.conn.start_next_cycle()
        await s.client.request("/ok")
        assert (await s.client.response()).body == b"hello"


async def test_204_sends_no_body_and_no_length() -> None:
    async with connected() as s:
        await s.client.request("/no-content")
        reply = await s.client.response()
        assert (reply.status, reply.body) == (204, b"")
        assert "content-length" not in reply.headers
        s.client.conn.start_next_cycle()
        await s.client.request("/ok")
        assert (await s.client.response()).body == b"hello"


async def test_handler_cannot_override_framing_headers() -> None:
    async with connected() as s:
        await s.client.request("/framing")
        reply = await s.client.response()
        assert reply.body == b"abc"
        assert reply.headers["content-length"] == "3"
        assert reply.headers["connection"] == "keep-alive"
        assert "transfer-encoding" not in reply.headers
        assert reply.headers["x-kept"] == "yes"
        assert len(reply.raw) == len(reply.headers)


async def test_header_value_with_crlf_becomes_500_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="trioserve.http.connection")
    async with connected() as s:
        await s.client.request("/bad-header")
        reply = await s.client.response()
        assert reply.status == 500
        assert "injected" not in reply.headers
        assert json.loads(reply.body)["type"] == "InternalServerException"
    assert any(r.exc_info for r in caplog.records)


async def test_reason_with_crlf_falls_back_to_standard_phrase() -> None:
    async with connected() as s:
        await s.client.request("/bad-reason")
        reply = await s.client.response()
        assert (reply.status, reply.reason) == (200, b"OK")
        assert "injected" not in reply.headers
        s.client.conn.start_next_cycle()
        await s.client.request("/custom-reason")
        reply = await s.client.response()
        assert (reply.status, reply.reason) == (201, b"Custom")


async def test_streaming_response_is_chunked() -> None:
    async with connected() as s:
        await s.client.request("/stream")
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in reply.headers
        assert reply.headers["content-type"] == "text/plain"
        assert s.handler.stream_closed


async def test_stream_failing_after_head_truncates_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="trioserve.http.connection")
    async with connected() as s:
        await s.client.request("/stream-fails")
        event = await s.client.next_event()
        assert isinstance(event, h11.Response)
        assert event.status_code == 200
        data = await s.client.next_event()
        assert isinstance(data, h11.Data)
        assert data.data == b"part"
        # No terminating chunk: the client sees the body cut short.
        with pytest.raises(h11.RemoteProtocolError):
            await s.client.next_event()
        await s.server_done.wait()
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


async def test_client_gone_mid_stream_closes_the_body_iterator() -> None:
    async with connected() as s:
        await s.client.request("/stream-gated")
        assert isinstance(await s.client.next_event(), h11.Response)
        first = await s.client.next_event()
        assert isinstance(first, h11.Data)
        assert first.data == b"first"
        await s.client.stream.aclose()
        s.handler.release.set()
        await s.server_done.wait()
        assert s.handler.stream_closed
        assert s.handler.chunks_sent == 2  # the send of the second chunk failed; no more pulled


async def test_client_closing_mid_body_ends_quietly() -> None:
    async with connected() as s:
        headers = [("Host", "test"), ("Content-Length", "10")]
        await s.client.send(h11.Request(method="POST", target="/echo", headers=headers))
        await s.client.send(h11.Data(data=b"12345"))
        await s.client.stream.aclose()
        await s.server_done.wait()
        assert s.handler.requests == []


async def test_http10_request_is_answered_then_closed() -> None:
    async with connected() as s:
        s.client.pretend_sent()
        await s.client.stream.send_all(b"GET /ok HTTP/1.0\r\n\r\n")
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.headers["connection"] == "close"
        await s.client.assert_closed_by_server()


async def test_idle_connection_is_closed_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(hard_stop_s=VIRTUAL_STOP_S) as s:
        start = trio.current_time()
        await s.client.assert_closed_by_server()
        assert IDLE_TIMEOUT_S <= trio.current_time() - start < IDLE_TIMEOUT_S + 1
        assert s.handler.requests == []


async def test_keep_alive_connection_is_closed_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(hard_stop_s=VIRTUAL_STOP_S) as s:
        await s.client.request("/ok")
        assert (await s.client.response()).status == 200
        start = trio.current_time()
        await s.client.assert_closed_by_server()
        assert IDLE_TIMEOUT_S <= trio.current_time() - start < IDLE_TIMEOUT_S + 1


async def test_incomplete_head_is_dropped_after_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert HEAD_TIMEOUT_S < IDLE_TIMEOUT_S
    async with connected(hard_stop_s=VIRTUAL_STOP_S) as s:
        await s.client.stream.send_all(b"GET /ok HTTP/1.1\r\nHost: test\r\n")
        start = trio.current_time()
        await s.client.assert_closed_by_server()
        assert HEAD_TIMEOUT_S <= trio.current_time() - start < HEAD_TIMEOUT_S + 1
        assert s.handler.requests == []


async def test_body_deadline_covers_the_whole_body_not_each_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(hard_stop_s=VIRTUAL_STOP_S) as s:
        headers = [("Host", "test"), ("Content-Length", "10")]
        await s.client.send(h11.Request(method="POST", target="/echo", headers=headers))
        start = trio.current_time()

        async def trickle() -> None:
            # A byte well inside the deadline each time, never the whole body.
            for _ in range(9):
                await trio.sleep(BODY_TIMEOUT_S / 4)
                try:
                    await s.client.stream.send_all(b"z")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await s.client.assert_closed_by_server()
            elapsed = trio.current_time() - start
        assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 1
        assert s.handler.requests == []


async def test_client_that_never_reads_is_dropped_after_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(lockstep=True, hard_stop_s=VIRTUAL_STOP_S) as s:
        await s.client.request("/ok")
        start = trio.current_time()
        await s.server_done.wait()
        assert WRITE_TIMEOUT_S <= trio.current_time() - start < WRITE_TIMEOUT_S + 1


async def test_drain_closes_an_idle_keep_alive_connection_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    async with connected(hard_stop_s=VIRTUAL_STOP_S, drain=drain) as s:
        await s.client.request("/ok")
        assert (await s.client.response()).headers["connection"] == "keep-alive"
        start = trio.current_time()
        drain.begin()
        await s.client.assert_closed_by_server()
        assert trio.current_time() - start < 1


async def test_drain_lets_the_request_in_hand_finish_then_closes() -> None:
    drain = Drain()
    async with connected(drain=drain) as s:
        await s.client.request("/gated")
        await s.handler.entered.wait()
        drain.begin()
        s.handler.release.set()
        reply = await s.client.response()
        assert (reply.status, reply.body) == (200, b"late")
        assert reply.headers["connection"] == "close"
        await s.client.assert_closed_by_server()


async def test_client_closing_while_the_handler_works_cancels_the_handler() -> None:
    async with connected() as s:
        await s.client.request("/gated")
        await s.handler.entered.wait()
        await s.client.stream.aclose()
        await s.server_done.wait()
        assert s.handler.gated_cancelled


async def test_pipelined_bytes_during_a_slow_response_are_kept() -> None:
    async with connected() as s:
        await s.client.request("/gated")
        await s.handler.entered.wait()
        raw = b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n"
        await s.client.stream.send_all(raw)
        await trio.testing.wait_all_tasks_blocked()
        s.handler.release.set()
        first = await s.client.response()
        assert first.body == b"late"
        s.client.conn.start_next_cycle()
        s.client.pretend_sent()
        second = await s.client.response()
        assert second.body == b"hello"
