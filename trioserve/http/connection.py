"""The HTTP/1.1 connection loop: h11 as the protocol machine, two tasks per connection.

This module owns the stream; h11 never sees it. The loop parses, dispatches and sends; a reader
task is the only one receiving, for the connection's whole life (it fills the connection's
buffer, wakes the loop, and doubles as the disconnect watcher while a handler runs). A plain
request (http/fastpath.py) is parsed from that buffer and answered without h11; any other is
handed to h11 from its first byte. Deadlines bound each wait on the peer: the request head, the
body, the idle gap between keep-alive requests and each slice of a send (their values, and the
other limits, come in ``Limits``: see http/limits.py). Every one of them ends the connection
when it passes, so they share one cancel scope around the connection's loop, whose deadline is
moved before each wait (and back to infinity while the handler runs): entering and leaving a
scope per wait cost more than the rest of a small request's bookkeeping.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

import h11
import trio

from trioserve import fastio
from trioserve.errors import BadRequest, ServeError
from trioserve.http import fastpath
from trioserve.http.fastpath import PlainHead
from trioserve.http.framing import (
    CONTINUE,
    HEAD_TOO_LARGE,
    NO_BODY_STATUSES,
    checked_head,
    head_bytes,
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
        # The connection's one deadline scope (see the module docstring); entered by serve().
        self._deadline = trio.CancelScope()
        # The reader task and the loop meet here (see _reader).
        self._unparsed = 0  # bytes received since the loop last ran out of data
        self._eof = False  # the peer closed its end (or the stream broke)
        self._broken = False  # ... and it was a reset or a closed stream, not a clean EOF
        self._buffer = bytearray()  # received, not yet parsed nor handed to h11
        self._eof_fed = False  # h11 has been told of the EOF
        self._plain_done = False  # a response written without h11 ended the connection
        self._data = trio.Event()  # set by the reader when it has received more
        self._fresh = False  # received since the loop last looked
        self._room = trio.Event()  # set by the loop when the reader may read past the bound
        self._dispatching = False  # the handler is running: an EOF now ends the connection

    async def _reader(self) -> None:
        """The one task that receives from the stream, for the connection's whole life.

        It feeds h11 and wakes the loop; while the handler runs it is also the disconnect
        watcher: an EOF then cancels the handler (a queued job is dropped, a worker is never
        restarted for it). Bytes the client sends ahead (a pipelined request) are fed to h11 up
        to ``max_header_bytes`` past what the loop has parsed; then it stops reading until the
        loop catches up. One long-lived task is far cheaper than a watcher spawned and
        cancelled around every request.
        """
        while True:
            while self._unparsed >= self.limits.max_header_bytes:
                self._room = trio.Event()
                await self._room.wait()
            try:
                data = await self.stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                data = b""
            if not data:
                self._eof = True
                if self._dispatching:
                    # The peer left before its answer: cancel the handler and the connection
                    # with it (nothing is left to send), as _dispatch_watching says.
                    self._deadline.cancel()
                self._data.set()
                return
            self._unparsed += len(data)
            self._buffer += data
            self._fresh = True
            self._data.set()

    async def _read_more(self) -> None:
        """Wait until the reader has fed h11 more bytes (or the end of the stream); called when
        h11 needs data, so what it buffers is less than one event."""
        if self._broken:
            raise _ClientGone()
        if self._eof or self._fresh:
            return  # h11 has something new: its next event says what (or how the stream ended)
        self._unparsed = 0
        self._room.set()
        self._data = trio.Event()
        await self._data.wait()
        if self._broken:
            raise _ClientGone()

    def _next_buffered(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """h11's next event from what has been received (no waiting)."""
        self._fresh = False
        if self._buffer:
            self.conn.receive_data(bytes(self._buffer))
            self._buffer.clear()
        if self._eof and not self._eof_fed:
            self._eof_fed = True
            self.conn.receive_data(b"")
        return self.conn.next_event()

    def _plain_next(self) -> bool:
        """Whether the next request may be parsed without h11 (http/fastpath.py): h11 is between
        requests and holds none of the bytes received."""
        return (
            self.conn.our_state is h11.IDLE
            and self.conn.their_state is h11.IDLE
            and not self.conn.trailing_data[0]
        )

    async def _send(self, event: h11.Event, outer: float = math.inf) -> None:
        await self._send_parts(self.conn.send_with_data_passthrough(event) or [], outer)

    async def _send_parts(self, parts: list[bytes], outer: float = math.inf) -> None:
        """Send what h11 produced for one or more events: joined into one write when small (one
        syscall for a whole small response), else part by part without copying a large body.
        Each WRITE_SLICE bytes must go within ``write_timeout``: a client that stops reading is
        dropped once the socket buffers are full, however large the response. ``outer`` is a
        deadline the send happens within (a 100 Continue's: the head's or body's), restored
        after it; otherwise none is left armed."""
        if not parts:
            return
        if len(parts) > 1 and sum(len(p) for p in parts) <= WRITE_SLICE:
            parts = [b"".join(parts)]
        try:
            for part in parts:
                view = memoryview(part)
                # What the kernel takes at once needs neither a deadline nor a scheduler pass.
                sent = fastio.send_now(self.stream, view[:WRITE_SLICE])
                for start in range(sent, len(view), WRITE_SLICE):
                    self._deadline.deadline = min(
                        outer, trio.current_time() + self.limits.write_timeout
                    )
                    await self.stream.send_all(view[start : start + WRITE_SLICE])
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.conn.send_failed()
            raise _ClientGone() from exc
        except trio.Cancelled:
            self.conn.send_failed()  # the write deadline passed, or the server is stopping
            raise
        self._deadline.deadline = outer

    async def _next_event(self, deadline: float) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading as needed until ``deadline`` (trio time).

        The deadline is only armed when there is something to wait for, and left armed on
        return: the caller disarms it once, before the handler runs (each move of a scope's
        deadline costs a few microseconds, and a whole request usually arrives in one read).
        """
        event = self._next_buffered()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        self._deadline.deadline = deadline
        while True:
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(CONTINUE, deadline)
            await self._read_more()
            event = self._next_buffered()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]

    async def serve(self) -> None:
        """Serve requests until the peer leaves, a response closes the connection or a deadline
        passes.

        Error handling: a ``ServeError`` from the handler becomes its error response; anything
        else raised while serving is a bug: it is logged and this connection closed, never
        propagated (it would take every other connection down with the listener's nursery).
        """
        try:
            # A deadline passing cancels this scope: the connection ends, as it should.
            with self._deadline:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    try:
                        await self._serve_all()
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            await self._close()

    async def _serve_all(self) -> None:
        try:
            while True:
                if not await self._serve_one():
                    break  # after `http_max_requests_per_connection` too: it said close
                if self.conn.our_state is h11.DONE:  # h11 served it (else it never saw it)
                    self.conn.start_next_cycle()
        except _ClientGone:
            pass
        except Exception:
            logger.exception("bug while serving a connection from %s; closing it", self.remote)

    async def _close(self) -> None:
        """Send EOF after a final response, then read (and drop) what the peer still sends for a
        bounded time: closing with unread data makes the kernel send a reset, which can destroy
        the response (a 413 sent before the body arrived) before the client reads it."""
        try:
            done = (
                self._plain_done
                or self.conn.our_state is h11.MUST_CLOSE
                or self.conn.our_state is h11.DONE
            )
            # Once the peer's EOF has been read nothing is left unread, so the close itself
            # sends our FIN and no reset: the slot is free a few scheduler passes sooner.
            if done and not self._eof and isinstance(self.stream, trio.abc.HalfCloseableStream):
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
        arrived = False  # this request's first bytes are here already
        if self._plain_next():
            head = await self._plain_head()
            if head is None:
                return False  # draining: no new request is read
            if isinstance(head, PlainHead):
                return await self._serve_plain(head, request_id)
            arrived = True  # anything else is h11's, from the first byte of this request
        try:
            event = self._next_buffered()
            if event is not h11.NEED_DATA:
                if not arrived:
                    # Pipelined: let the loop poll I/O first, so the answer just written
                    # reaches its reader (and other connections run) before this one is served.
                    await trio.lowlevel.checkpoint()
            else:
                if not arrived and not await self._wait_idle():
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
        refusal = self._refusal(request, int(declared) if declared and declared.isdigit() else None)
        if refusal is not None:
            # Before any of the body (or a 100 Continue) is sent.
            self._log(request, await self._send_simple(refusal, request_id), start)
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
        # The handler has its own deadlines; what is left of the head's or body's is not its.
        self._deadline.deadline = math.inf
        response = await self._dispatch_watching(request)
        status = await self._respond(response, request_id, head_only=request.method == "HEAD")
        self._log(request, status, start)
        return (
            self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and status < 400
        )

    async def _wait_idle(self) -> bool:
        """Wait, between requests, for the next one's first bytes; False (nothing waited for)
        when the server is draining. A drain, or the keep-alive timeout, cancels the
        connection's scope meanwhile, and so closes it."""
        if self.drain.draining:
            return False
        self._deadline.deadline = trio.current_time() + self.limits.keepalive_timeout
        self.drain._idle.add(self._deadline)
        try:
            self._fresh = False
            await self._read_more()
        finally:
            self.drain._idle.discard(self._deadline)
        return True

    def _refusal(self, request: Request, length: int | None) -> Response | None:
        """The answer a request gets from its head alone (its body, of declared ``length``,
        then never read; the connection closes after it): 413 over ``max_request_size``, or
        the admission's refusal (a key missing, a full queue)."""
        if length is not None and length > self.limits.max_request_size:
            return Response(413)
        refusal = self.admit(request) if self.admit is not None else None
        return error_response(refusal) if refusal is not None else None

    async def _send_chunks(
        self,
        response: StreamingResponse,
        write: Callable[[bytes], Awaitable[None]],
        no_body: bool,
    ) -> None:
        """Each chunk of a streamed body through ``write`` (read, not sent, when ``no_body``).
        The head is out already: a stream that fails can only end the connection without the
        last chunk, which is how the client learns the body is incomplete."""
        try:
            async for chunk in response.chunks:
                if chunk and not no_body:
                    await write(chunk)
        except _ClientGone:
            raise
        except Exception as exc:
            logger.exception("streamed response failed after its head was sent")
            raise _ClientGone() from exc

    async def _plain_head(self) -> PlainHead | bool | None:
        """Wait for the next request's first bytes as ``_serve_one`` does for h11; its head if
        plain (http/fastpath.py), True when h11 must take it, None when the connection ends."""
        if self._buffer:
            await trio.lowlevel.checkpoint()  # pipelined: as in _serve_one
        elif not self._eof and not await self._wait_idle():
            return None
        self._fresh = False
        head = fastpath.parse_head(self._buffer, self.limits.max_header_bytes)
        return True if head is None else head

    async def _serve_plain(self, head: PlainHead, request_id: str) -> bool:
        """``_serve_one`` for a plain request, h11 left out: same limits, same answers."""
        self.requests += 1
        start = time.perf_counter()
        request = Request(
            head.method, head.target, head.headers, request_id=request_id, remote=self.remote
        )
        refusal = self._refusal(request, head.content_length)
        if refusal is not None:
            self._log(request, await self._send_plain(refusal, request_id, keep=False), start)
            return False
        request.body = await self._read_plain_body(head)
        self._deadline.deadline = math.inf
        response = await self._dispatch_watching(request)
        keep = self._keep()
        if isinstance(response, Response):
            status = await self._send_plain(response, request_id, keep=keep)
        else:
            status = await self._stream_plain(response, request_id, keep=keep)
        self._log(request, status, start)
        return keep and status < 400 and not self._plain_done

    async def _read_plain_body(self, head: PlainHead) -> bytes:
        """The body of a plain request: Content-Length bytes after its head, read within the
        same deadline as ``_read_body``."""
        end = head.size + head.content_length
        deadline = trio.current_time() + self.limits.body_timeout
        while len(self._buffer) < end:
            if self._eof:
                raise _ClientGone()
            received = len(self._buffer) - head.size
            self._deadline.deadline = deadline + max(received, 0) / MIN_BODY_RATE
            self._fresh = False
            await self._read_more()
        body = bytes(self._buffer[head.size : end])
        del self._buffer[:end]
        return body

    async def _send_plain(self, response: Response, request_id: str, *, keep: bool) -> int:
        """``_send_simple`` for a plain request: head and body in one write."""
        try:
            head = head_bytes(response, request_id, len(response.body), keep)
        except ValueError:
            logger.exception("a response (status %s) is not valid HTTP", response.status)
            response = internal_error()
            head = head_bytes(response, request_id, len(response.body), False)
        keep = keep and response.status < 400
        body = response.body if response.status not in NO_BODY_STATUSES else b""
        await self._send_parts([head, body] if body else [head])
        self._plain_done = not keep
        return response.status

    async def _stream_plain(
        self, response: StreamingResponse, request_id: str, *, keep: bool
    ) -> int:
        """``_respond`` for a streamed answer to a plain request, chunked as h11 does it."""
        try:
            try:
                head = head_bytes(response, request_id, None, keep)
            except ValueError:
                logger.exception("a response (status %s) is not valid HTTP", response.status)
                return await self._send_plain(internal_error(), request_id, keep=False)
            self._plain_done = not (keep and response.status < 400)
            await self._send_parts([head])
            no_body = response.status in NO_BODY_STATUSES

            async def write(chunk: bytes) -> None:
                await self._send_parts([b"%x\r\n" % len(chunk), chunk, b"\r\n"])

            await self._send_chunks(response, write, no_body)
            if not no_body:
                await self._send_parts([b"0\r\n\r\n"])
            return response.status
        finally:
            await _aclose_chunks(response)

    async def _read_body(self) -> bytes:
        """The whole body, within one deadline that only data can push back: ``body_timeout``
        plus 1/MIN_BODY_RATE s per byte received (a per-read deadline lets a client trickle a
        byte at a time forever; a fixed one cuts off large bodies on slow links)."""
        chunks: list[bytes | bytearray] = []  # joined once at the end, not grown per read
        size = 0
        limit = self.limits.max_request_size
        deadline = trio.current_time() + self.limits.body_timeout
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                chunks.append(event.data)
                size += len(event.data)
                if size > limit:
                    raise _BodyTooLarge()
                deadline += len(event.data) / MIN_BODY_RATE
            elif isinstance(event, h11.EndOfMessage):
                return bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            else:
                raise _ClientGone()

    async def _dispatch_watching(self, request: Request) -> Response | StreamingResponse:
        """Run the handler while the reader watches the peer: if the client closes its end
        before the answer is ready, the handler is cancelled and the connection ends.

        Bytes the client sends meanwhile (a pipelined request) go to h11's buffer, up to
        ``max_header_bytes``; past that the reader stops until the response is out.
        """
        if self._eof:
            raise _ClientGone()  # the peer left right after its request
        # No scope of its own: an EOF cancels the connection's scope, which ends the handler
        # and the connection together (closing is all that is left to do then).
        self._dispatching = True
        try:
            response = await self._dispatch(request)
        finally:
            self._dispatching = False
        if self._eof:
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
        # Head, body and end in one write: h11 hands the body through without copying it.
        parts = self.conn.send_with_data_passthrough(head) or []
        if response.body and not head_only and response.status not in NO_BODY_STATUSES:
            parts += self.conn.send_with_data_passthrough(h11.Data(data=response.body)) or []
        parts += self.conn.send_with_data_passthrough(h11.EndOfMessage()) or []
        await self._send_parts(parts)
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

            async def write(chunk: bytes) -> None:
                await self._send(h11.Data(data=chunk))

            await self._send_chunks(response, write, no_body)
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
