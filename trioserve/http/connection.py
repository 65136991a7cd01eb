"""The HTTP/1.1 connection loop: one task per connection, h11 as the protocol machine.

This function owns the stream; h11 never sees it. Deadlines are cancel scopes around each wait:
the request head, the body, the idle gap between keep-alive requests and each send.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from trioserve.errors import BadRequest, ServeError
from trioserve.http.request import Request
from trioserve.http.response import (
    COMMON_HEADERS,
    Response,
    StreamingResponse,
    error_response,
)

logger = logging.getLogger(__name__)
access_log = logging.getLogger("trioserve.access")

# Node and Tomcat both cap request heads at 8-16 KiB by default; 64 KiB allows large cookies
# and long model URLs in query strings while keeping one connection's head buffer small.
MAX_HEAD_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
# A client gets this long to send a complete request head once it has started one.
HEAD_TIMEOUT_S = 60.0
# An idle keep-alive connection is closed after this long (a long-lived client reconnects).
IDLE_TIMEOUT_S = 120.0
# A request body must arrive within this long; 6.5 MB at a slow 100 kB/s takes ~65 s.
BODY_TIMEOUT_S = 300.0
# A client that does not read its response for this long is dropped.
WRITE_TIMEOUT_S = 120.0
# After our EOF, wait this long for the peer's before closing anyway.
CLOSE_DRAIN_S = 2.0

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


@dataclass(frozen=True)
class Limits:
    max_request_size: int


class _ClientGone(Exception):
    """The peer closed or reset the connection, or missed a deadline; stop serving it."""


class HTTPConnection:
    def __init__(
        self, stream: trio.abc.Stream, handler: Handler, limits: Limits, remote: str
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.remote = remote
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def _read_more(self) -> None:
        try:
            data = await self.stream.receive_some(READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone() from exc
        self.conn.receive_data(bytes(data))

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data is None:
            return
        with trio.move_on_after(WRITE_TIMEOUT_S) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.conn.send_failed()
                raise _ClientGone() from exc
        if scope.cancelled_caught:
            self.conn.send_failed()
            raise _ClientGone()

    async def _next_event(self, seconds: float) -> h11.Event | type[h11.PAUSED]:
        with trio.move_on_after(seconds) as scope:
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]
                if self.conn.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                await self._read_more()
        assert scope.cancelled_caught
        raise _ClientGone()

    async def serve(self) -> None:
        try:
            while True:
                if not await self._serve_one():
                    break
                self.conn.start_next_cycle()
        except _ClientGone:
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.our_state is h11.DONE:
            with trio.move_on_after(CLOSE_DRAIN_S):
                try:
                    if isinstance(self.stream, trio.SocketStream):
                        await self.stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        await trio.aclose_forcefully(self.stream)

    async def _serve_one(self) -> bool:
        """Serve one request; return whether the connection may take another."""
        request_id = str(uuid.uuid4())
        try:
            first = self.conn.next_event()
            if first is h11.NEED_DATA:
                with trio.move_on_after(IDLE_TIMEOUT_S) as idle:
                    await self._read_more()
                if idle.cancelled_caught:
                    return False
            event = await self._next_event(HEAD_TIMEOUT_S) if first is h11.NEED_DATA else first
        except h11.RemoteProtocolError:
            await self._send_simple(error_response(BadRequest("Invalid HTTP message.")), request_id)
            return False
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            return False
        start = time.perf_counter()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
        request = Request(
            method=event.method.decode("ascii"),
            target=event.target.decode("latin-1"),
            headers=headers,
            request_id=request_id,
            remote=self.remote,
        )
        declared = request.header("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.limits.max_request_size
        ):
            await self._send_simple(Response(413), request_id)
            self._log(request, 413, start)
            return False
        try:
            request.body = await self._read_body()
        except h11.RemoteProtocolError:
            await self._send_simple(error_response(BadRequest("Invalid HTTP message.")), request_id)
            return False
        except _BodyTooLarge:
            await self._send_simple(Response(413), request_id)
            self._log(request, 413, start)
            return False
        response = await self._dispatch(request)
        status = await self._respond(response, request_id)
        self._log(request, status, start)
        return (
            self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and status < 400
        )

    async def _read_body(self) -> bytes:
        body = bytearray()
        limit = self.limits.max_request_size
        while True:
            event = await self._next_event(BODY_TIMEOUT_S)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _BodyTooLarge()
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _ClientGone()

    async def _dispatch(self, request: Request) -> Response | StreamingResponse:
        try:
            return await self.handler(request)
        except ServeError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error serving %s %s", request.method, request.target)
            from trioserve.errors import InternalServerError

            return error_response(InternalServerError("Internal server error."))

    def _head(
        self, response: Response | StreamingResponse, request_id: str, length: int | None
    ) -> h11.Response:
        headers: list[tuple[str, str]] = [("x-request-id", request_id), *COMMON_HEADERS]
        headers.extend(response.headers)
        if response.content_type:
            headers.append(("content-type", response.content_type))
        if length is not None:
            headers.append(("content-length", str(length)))
        keep = response.status < 400
        headers.append(("connection", "keep-alive" if keep else "close"))
        try:
            reason = response.reason if response.reason else HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        return h11.Response(
            status_code=response.status,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            reason=reason.encode("latin-1", "replace"),
        )

    async def _send_simple(self, response: Response, request_id: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self._send(self._head(response, request_id, len(response.body)))
        if response.body:
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())

    async def _respond(self, response: Response | StreamingResponse, request_id: str) -> int:
        if isinstance(response, Response):
            await self._send_simple(response, request_id)
            return response.status
        await self._send(self._head(response, request_id, None))
        async for chunk in response.chunks:
            if chunk:
                await self._send(h11.Data(data=chunk))
        await self._send(h11.EndOfMessage())
        return response.status

    def _log(self, request: Request, status: int, start: float) -> None:
        elapsed_ms = (time.perf_counter() - start) * 1000
        access_log.info(
            '%s "%s %s HTTP/1.1" %d %.3fms %s',
            request.remote,
            request.method,
            request.target,
            status,
            elapsed_ms,
            request.request_id,
        )


class _BodyTooLarge(Exception):
    pass


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: Limits, remote: str = ""
) -> None:
    await HTTPConnection(stream, handler, limits, remote).serve()
