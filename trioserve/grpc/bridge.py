"""Between grpcio's asyncio server (its own loop, in its own thread) and trioserve (trio).

grpcio's C core does the HTTP/2; its handlers are asyncio coroutines on the gRPC thread's loop.
Everything that touches models runs in trio through :meth:`Bridge.run`, as a task of the gRPC
nursery, under the client's deadline as a trio cancel scope, so a job sees a deadline or a
cancelled call exactly as it sees an HTTP client that went away (a queued job is dropped, no
worker is restarted). The two loops only meet through their thread-safe entry points:
``TrioToken.run_sync_soon`` one way, ``loop.call_soon_threadsafe`` the other.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

import grpc
import trio
from google.protobuf.message import DecodeError, Message

from trioserve.errors import ServeError
from trioserve.grpc.loop import LoopThread
from trioserve.http.response import dump_json

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)
STATUS_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class CallError(Exception):
    """Ends the call with this status and description."""

    def __init__(self, code: grpc.StatusCode | int, details: str) -> None:
        super().__init__(details)
        self.code = code if isinstance(code, grpc.StatusCode) else STATUS_CODES[code]
        self.details = details


def json_text(value: object) -> str:
    """The REST JSON text without its final newline, as TorchServe's gRPC replies carry it."""
    return dump_json(value).decode("utf-8").removesuffix("\n")


class Context(Protocol):
    """What the services use of grpcio's ``ServicerContext``."""

    def time_remaining(self) -> float | None: ...

    async def write(self, message: Any) -> None: ...


class _Call(Generic[T]):
    """One trio run of a call: what to run and for how long, the asyncio future that gets its
    outcome, and the cancel scope the asyncio side cancels (through the trio token) when
    grpcio cancels the handler."""

    __slots__ = ("args", "fn", "future", "remaining", "scope")

    def __init__(
        self,
        future: asyncio.Future[T],
        remaining: float | None,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
    ) -> None:
        self.future = future
        self.remaining = remaining
        self.fn = fn
        self.args = args
        self.scope = trio.CancelScope()


def _settle(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if future.done():  # the handler was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]


class Bridge:
    """What every service shares: the gRPC thread's loop, the gRPC nursery (where the trio
    side of each call runs), the message limits."""

    def __init__(
        self,
        thread: LoopThread,
        nursery: trio.Nursery,
        *,
        max_request_size: int,
        max_response_size: int,
    ) -> None:
        self.loop = thread.loop
        self._thread = thread
        self.max_request_size = max_request_size
        self.max_response_size = max_response_size
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self.draining = False
        self._calls = 0
        self._idle = asyncio.Event()  # on the gRPC loop; set while no call runs
        self._idle.set()

    # asyncio side

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count a call while its handler runs; once draining, refuse it UNAVAILABLE (what a
        client retries elsewhere; grpcio itself would cancel calls that arrive once it stops).

        Raises:
            CallError: UNAVAILABLE while draining.
        """
        if self.draining:
            raise CallError(grpc.StatusCode.UNAVAILABLE, "The server is shutting down.")
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Refuse new calls and return once the running ones have ended (asyncio side; the
        caller bounds the wait)."""
        self.draining = True
        await self._idle.wait()

    async def run(self, context: Context, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the trio function ``fn(*args)`` for this call (asyncio side) under the client's
        deadline; the handler's cancellation (client gone, deadline, shutdown) cancels it.

        Raises:
            ServeError: as ``fn`` raises it, for the service to map to a status.
            CallError: as ``fn`` raises it; DEADLINE_EXCEEDED when the client's deadline passes
                first; INTERNAL for an unexpected exception (logged).
        """
        call: _Call[T] = _Call(self.loop.create_future(), context.time_remaining(), fn, args)
        self._token.run_sync_soon(self._spawn, call)
        try:
            return await call.future
        except asyncio.CancelledError:
            self._token.run_sync_soon(call.scope.cancel)
            raise

    def decode(self, data: bytes, kind: type[M]) -> M:
        """A request message, refused over ``max_request_size`` with the text TorchServe's
        gRPC server gives (grpcio itself only stops messages far over it: server.py)."""
        if len(data) > self.max_request_size:
            raise CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"gRPC message exceeds maximum size {self.max_request_size}: {len(data)}",
            )
        try:
            return kind.FromString(data)
        except DecodeError:
            raise CallError(grpc.StatusCode.INTERNAL, "Invalid protobuf byte sequence") from None

    def encode(self, message: Message) -> bytes:
        """A reply's bytes, refused over ``max_response_size`` (RESOURCE_EXHAUSTED)."""
        data = message.SerializeToString()
        if len(data) > self.max_response_size:
            raise CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Response of {len(data)} bytes exceeds max_response_size "
                f"{self.max_response_size}.",
            )
        return data

    async def requests(self, raw: AsyncIterator[bytes], kind: type[M]) -> AsyncIterator[M]:
        """The request messages of a client stream, each checked as :meth:`decode` does."""
        async for data in raw:
            yield self.decode(data, kind)

    # trio side

    def _spawn(self, call: _Call[T]) -> None:
        # Runs as a trio run_sync_soon callback, where an exception would end the trio run.
        try:
            self._nursery.start_soon(self._in_trio, call)
        except RuntimeError:  # the gRPC nursery has closed: shutting down
            error = CallError(grpc.StatusCode.UNAVAILABLE, "The server is shutting down.")
            self._resolve(call, None, error)

    def _resolve(self, call: _Call[T], value: T | None, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, call.future, value, error)
        except RuntimeError:  # the loop has closed: nobody waits for the outcome
            pass

    async def _in_trio(self, call: _Call[T]) -> None:
        remaining = call.remaining
        value: T | None = None
        error: BaseException | None = None
        with call.scope:
            try:
                with trio.move_on_after(math.inf if remaining is None else remaining) as timer:
                    value = await call.fn(*call.args)
                if timer.cancelled_caught:
                    raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded")
            except (CallError, ServeError) as exc:
                error = exc
            except Exception:
                # A bug, not an expected error: logged with its traceback, INTERNAL to the
                # client (REST answers 500 InternalServerException).
                logger.exception("gRPC call %s failed", getattr(call.fn, "__qualname__", call.fn))
                error = CallError(grpc.StatusCode.INTERNAL, "Internal Server Error")
        if not call.scope.cancelled_caught:  # else the handler is gone: nobody waits
            self._resolve(call, value, error)

    def sender(self, context: Context) -> Callable[[Message], Awaitable[None]]:
        """A trio-side ``send(message)`` for streaming replies from inside :meth:`run`: it
        returns once grpcio has taken the message, so a slow client slows the stream."""

        async def send(message: Message) -> None:
            await self._thread.run(context.write(self.encode(message)))

        return send
