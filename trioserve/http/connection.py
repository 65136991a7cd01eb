"""The HTTP/1.1 connection loop: one task per connection, h11 as the protocol machine.

This function owns the stream; h11 never sees it. Deadlines are cancel scopes around each wait:
the request head, the body, the idle gap between keep-alive requests and each slice of a send
(their values, and the other limits, come in ``Limits``: see http/limits.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import h11
import trio

from trioserve.errors import BadRequest, ServeError
from trioserve.http.framing import (
    CONTINUE,
    HEAD_TOO_LARGE,
    NO_BODY_STATUSES,
    checked_head,
    head_error,
    head_size,
    internal_error,
    response_head,
)
from trioserve.http.limits import BODY_TIMEOUT_S as BODY_TIMEOUT_S
from trioserve.http.limits import (
    CLOSE_DRAIN_S,
    MIN_BODY_RATE,
    READ_CHUNK,
    WRITE_SLICE,
    refuse_connection,
)
from trioserve.http.limits import HEAD_TIMEOUT_S as HEAD_TIMEOUT_S
from trioserve.http.limits import IDLE_TIMEOUT_S as IDLE_TIMEOUT_S
from trioserve.http.limits import MAX_HEAD_BYTES as MAX_HEAD_BYTES
from trioserve.http.limits import WRITE_TIMEOUT_S as WRITE_TIMEOUT_S
from trioserve.http.limits import ConnectionGate as ConnectionGate
from trioserve.http.limits import Drain as Drain
from trioserve.http.limits import Limits as Limits
from trioserve.http.request import Request
from trioserve.http.response import Response, StreamingResponse, error_response

logger = logging.getLogger(__name__)
access_log = logging.getLogger("trioserve.access")

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
# Decides from the request head alone whether to refuse it (say, the model's queue is full), so
# a large body is never read just to be turned away.
Admit = Callable[[Request], ServeError | None]


class _ClientGone(Exception):
    """The peer closed or reset the connection, or missed a deadline; stop serving it."""


class _BodyTooLarge(Exception):
    """The body grew past ``max_request_size``; answer 413 and close."""


class HTTPConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: Limits,
        remote: str,
        drain: Drain | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.drain = drain if drain is not None else Drain()
        self.admit = admit
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.remote = remote
        self.requests = 0  # requests begun on this connection
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def _read_more(self) -> None:
        try:
            data = await self.stream.receive_some(READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone() from exc
        self.conn.receive_data(bytes(data))

    async def _send(self, event: h11.Event) -> None:
        """Send ``event``, a slice of at most WRITE_SLICE bytes at a time, each within
        ``write_timeout``: a client that stops reading is dropped once the socket buffers are
        full, however large the response."""
        data = self.conn.send(event)
        if data is None:
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_SLICE):
            with trio.move_on_after(self.limits.write_timeout) as scope:
                try:
                    await self.stream.send_all(view[start : start + WRITE_SLICE])
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.conn.send_failed()
                    raise _ClientGone() from exc
            if scope.cancelled_caught:
                self.conn.send_failed()
                raise _ClientGone()

    async def _next_event(self, deadline: float) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading as needed until ``deadline`` (trio time)."""
        with trio.move_on_at(deadline):
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]
                if self.conn.they_are_waiting_for_100_continue:
                    await self._send(CONTINUE)
                await self._read_more()
        raise _ClientGone()

    async def serve(self) -> None:
        """Serve requests until the peer leaves, a response closes the connection or a deadline
        passes.

        Error handling: a ``ServeError`` from the handler becomes its error response; anything
        else raised while serving is a bug: it is logged and this connection closed, never
        propagated (it would take every other connection down with the listener's nursery).
        """
        try:
            while True:
                if not await self._serve_one():
                    break  # after `http_max_requests_per_connection` too: it said close
                self.conn.start_next_cycle()
        except _ClientGone:
            pass
        except Exception:
            logger.exception("bug while serving a connection from %s; closing it", self.remote)
        finally:
            await self._close()

    async def _close(self) -> None:
        """Send EOF after a final response, then read (and drop) what the peer still sends for a
        bounded time: closing with unread data makes the kernel send a reset, which can destroy
        the response (a 413 sent before the body arrived) before the client reads it."""
        try:
            done = self.conn.our_state is h11.MUST_CLOSE or self.conn.our_state is h11.DONE
            if done and isinstance(self.stream, trio.abc.HalfCloseableStream):
                with trio.move_on_after(CLOSE_DRAIN_S):
                    await self.stream.send_eof()
                    while await self.stream.receive_some(READ_CHUNK):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _serve_one(self) -> bool:
        """Serve one request; return whether the connection may take another."""
        request_id = str(uuid.uuid4())
        try:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.drain.draining:
                    return False
                with trio.move_on_after(self.limits.keepalive_timeout) as idle:
                    self.drain._idle.add(idle)
                    try:
                        await self._read_more()
                    finally:
                        self.drain._idle.discard(idle)
                if idle.cancelled_caught:
                    return False
                # Absolute, from the head's first byte: a trickle cannot stretch it.
                deadline = trio.current_time() + self.limits.header_timeout
                event = await self._next_event(deadline)
        except h11.RemoteProtocolError as exc:
            too_large = exc.error_status_hint == HEAD_TOO_LARGE
            await self._send_simple(head_error(too_large), request_id)
            return False
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed: the peer is gone
        if head_size(event) > self.limits.max_header_bytes:
            # h11 bounds only a head still incomplete; one that arrived whole in a read that
            # took it past the limit is refused here, so the limit never depends on packets.
            await self._send_simple(head_error(True), request_id)
            return False
        self.requests += 1
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
            # Refused from the head alone, before any of the body (or a 100 Continue) is sent.
            await self._send_simple(Response(413), request_id)
            self._log(request, 413, start)
            return False
        refusal = self.admit(request) if self.admit is not None else None
        if refusal is not None:
            # Answered before the body: the connection closes (status >= 400), so the unread
            # body never needs reading.
            await self._send_simple(error_response(refusal), request_id)
            self._log(request, refusal.code, start)
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
        response = await self._dispatch_watching(request)
        status = await self._respond(response, request_id, head_only=request.method == "HEAD")
        self._log(request, status, start)
        return (
            self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and status < 400
        )

    async def _read_body(self) -> bytes:
        """The whole body, within one deadline that only data can push back: ``body_timeout``
        plus 1/MIN_BODY_RATE s per byte received (a per-read deadline lets a client trickle a
        byte at a time forever; a fixed one cuts off large bodies on slow links)."""
        body = bytearray()
        limit = self.limits.max_request_size
        deadline = trio.current_time() + self.limits.body_timeout
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _BodyTooLarge()
                deadline += len(event.data) / MIN_BODY_RATE
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _ClientGone()

    async def _dispatch_watching(self, request: Request) -> Response | StreamingResponse:
        """Run the handler while watching the peer: if the client closes its end before the
        answer is ready, the handler is cancelled (a queued job is dropped, a worker is never
        restarted for it) and the connection ends.

        Bytes the client sends meanwhile (a pipelined request) go to h11's buffer, up to
        ``max_header_bytes``; past that we stop reading until the response is out.
        """
        response: Response | StreamingResponse | None = None
        peer_gone = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal peer_gone
                # Counted here: h11's trailing_data copies its buffer, once is enough.
                buffered = len(self.conn.trailing_data[0])
                while buffered < self.limits.max_header_bytes:
                    try:
                        data = await self.stream.receive_some(READ_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        peer_gone = True
                        nursery.cancel_scope.cancel()
                        return
                    buffered += len(data)
                    self.conn.receive_data(bytes(data))

            nursery.start_soon(watch)
            response = await self._dispatch(request)
            nursery.cancel_scope.cancel()
        if peer_gone or response is None:
            raise _ClientGone()
        return response

    async def _dispatch(self, request: Request) -> Response | StreamingResponse:
        try:
            return await self.handler(request)
        except ServeError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error serving %s %s", request.method, request.target)
            return internal_error()

    def _keep(self) -> bool:
        """Whether a successful response leaves the connection open."""
        return not self.drain.draining and self.requests < self.limits.max_requests_per_connection

    async def _send_simple(
        self, response: Response, request_id: str, *, head_only: bool = False
    ) -> int:
        """Send a whole response; return the status actually sent."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return response.status
        head = checked_head(response, request_id, len(response.body), self._keep())
        if head is None:
            response = internal_error()
            head = response_head(response, request_id, len(response.body), False)
        await self._send(head)
        if response.body and not head_only and response.status not in NO_BODY_STATUSES:
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())
        return response.status

    async def _respond(
        self, response: Response | StreamingResponse, request_id: str, *, head_only: bool
    ) -> int:
        if isinstance(response, Response):
            return await self._send_simple(response, request_id, head_only=head_only)
        try:
            head = checked_head(response, request_id, None, self._keep())
            if head is None:
                return await self._send_simple(internal_error(), request_id)
            await self._send(head)
            no_body = head_only or response.status in NO_BODY_STATUSES
            try:
                async for chunk in response.chunks:
                    if chunk and not no_body:
                        await self._send(h11.Data(data=chunk))
            except _ClientGone:
                raise
            except Exception as exc:
                # The head is out: ending the connection without the last chunk is the only way
                # left to tell the client the body is incomplete.
                logger.exception("streamed response failed after its head was sent")
                raise _ClientGone() from exc
            await self._send(h11.EndOfMessage())
            return response.status
        finally:
            await _aclose_chunks(response)

    def _log(self, request: Request, status: int, start: float) -> None:
        elapsed_ms = (time.perf_counter() - start) * 1000
        access_log.info(
            '%s "%s %s HTTP/1.1" %d %.3fms %s %s',
            request.remote,
            request.method,
            request.target,
            status,
            elapsed_ms,
            request.request_id,
            request.model or "-",
        )


async def _aclose_chunks(response: StreamingResponse) -> None:
    """Finalize a streaming body we stopped reading, so its cleanup (dropping the job) runs now,
    not whenever the garbage collector gets to it."""
    aclose = getattr(response.chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_DRAIN_S):
            await aclose()


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    limits: Limits,
    remote: str = "",
    drain: Drain | None = None,
    admit: Admit | None = None,
    gate: ConnectionGate | None = None,
) -> None:
    """Serve HTTP/1.1 on ``stream`` until it ends; the stream is always closed on return.

    ``gate`` counts the listener's connections: past its limit the connection is answered 503
    and closed without reading a request.

    Resource handling: the caller's task owns the stream; this function closes it in every case.
    """
    if gate is not None and not gate.try_enter():
        logger.warning("connection from %s refused: %d connections open", remote, gate.open)
        await refuse_connection(stream)
        return
    try:
        await HTTPConnection(stream, handler, limits, remote, drain, admit).serve()
    finally:
        if gate is not None:
            gate.leave()
