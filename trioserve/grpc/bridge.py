"""Between grpclib (asyncio, on the trio-asyncio loop) and trioserve (trio).

The services are asyncio code: grpclib calls them and they do the call's I/O. Everything that
touches models runs in trio through :meth:`Bridge.run`, under the client's deadline as a trio
cancel scope, so a job sees a deadline or a cancelled call exactly as it sees an HTTP client
that went away (a queued job is dropped, no worker is restarted).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from trioserve.errors import ServeError
from trioserve.http.response import dump_json

logger = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC's length-prefixed message: a compressed flag byte, then a 4-byte big-endian length.
_PREFIX = struct.Struct(">?I")


def json_text(value: object) -> str:
    """The REST JSON text without its final newline, as TorchServe's gRPC replies carry it."""
    return dump_json(value).decode("utf-8").removesuffix("\n")


class Calls:
    """The calls in flight, so a shutdown can wait for them before grpclib's ``close()``
    (which cancels whatever still runs); once draining, new calls are refused UNAVAILABLE."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        if self.draining:
            raise GRPCError(Status.UNAVAILABLE, "The server is shutting down.")
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Refuse new calls and wait until the running ones have finished (asyncio side; the
        caller bounds the wait)."""
        self.draining = True
        await self._idle.wait()


async def _under_deadline(
    remaining: float | None, fn: Callable[..., Awaitable[T]], *args: Any
) -> T:
    with trio.move_on_after(math.inf if remaining is None else remaining):
        return await fn(*args)
    raise GRPCError(Status.DEADLINE_EXCEEDED, "Deadline exceeded")


class Bridge:
    """What every service shares: the loop, the message limits and the calls in flight."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, max_request_size: int, max_response_size: int
    ) -> None:
        self.loop = loop
        self.max_request_size = max_request_size
        self.max_response_size = max_response_size
        self.calls = Calls()

    async def run(self, stream: Stream[Any, Any], fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the trio function ``fn(*args)`` for this call (asyncio side) under the client's
        deadline; the call's cancellation (client gone, deadline, shutdown) cancels it.

        Raises:
            ServeError: as ``fn`` raises it, for the service to map to a status.
            GRPCError: DEADLINE_EXCEEDED when the client's deadline passes first; INTERNAL for
                an unexpected exception (logged).
        """
        deadline = stream.deadline
        remaining = None if deadline is None else max(deadline.time_remaining(), 0.0)
        runner = trio_asyncio.trio_as_aio(_under_deadline, loop=self.loop)
        try:
            result: T = await runner(remaining, fn, *args)
        except (GRPCError, ServeError):
            raise
        except Exception:
            # A bug, not an expected error: logged with its traceback, INTERNAL to the client
            # (REST answers 500 InternalServerException).
            logger.exception("gRPC call %s failed", stream._method_name)
            raise GRPCError(Status.INTERNAL, "Internal Server Error") from None
        return result

    def sender(self, stream: Stream[Any, T]) -> Callable[[T], Awaitable[None]]:
        """A trio-side ``send(message)`` for streaming replies from inside :meth:`run`."""
        send: Callable[[T], Awaitable[None]] = trio_asyncio.aio_as_trio(
            partial(self.send, stream), loop=self.loop
        )
        return send

    async def recv(self, stream: Stream[T, Any]) -> T | None:
        """The next request message, or None at the end of the client's stream.

        grpclib's ``recv_message`` buffers whatever length the client declares; this reads the
        prefix first and refuses a message over ``max_request_size`` before buffering it.

        Raises:
            GRPCError: RESOURCE_EXHAUSTED for an oversized message, UNIMPLEMENTED for a
                compressed one.
        """
        h2_stream = stream._stream
        prefix = await h2_stream.recv_data(_PREFIX.size)
        if not prefix:
            return None
        if len(prefix) < _PREFIX.size:
            raise GRPCError(Status.INTERNAL, "Truncated gRPC message prefix.")
        compressed, length = _PREFIX.unpack(prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "Compressed messages are not supported.")
        if length > self.max_request_size:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"gRPC message exceeds maximum size {self.max_request_size}: {length}",
            )
        data = await h2_stream.recv_data(length)
        if len(data) != length:
            raise GRPCError(Status.INTERNAL, "Truncated gRPC message.")
        message: T = stream._codec.decode(data, stream._recv_type)
        # What grpclib's Stream.recv_message does after decoding (events, keepalive counters).
        (message,) = await stream._dispatch.recv_message(message)
        stream._messages_received += 1
        h2_stream.connection.messages_received += 1
        h2_stream.connection.last_message_received = time.monotonic()
        return message

    async def recv_one(self, stream: Stream[T, Any]) -> T:
        """The request of a unary call."""
        message = await self.recv(stream)
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "No request message.")
        return message

    async def send(self, stream: Stream[Any, T], message: T) -> None:
        """Send a reply, refusing one over ``max_response_size`` (RESOURCE_EXHAUSTED)."""
        size = message.ByteSize()  # type: ignore[attr-defined]
        if size > self.max_response_size:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Response of {size} bytes exceeds max_response_size {self.max_response_size}.",
            )
        await stream.send_message(message)
