"""An asyncio event loop in a thread of its own, driven from trio: grpcio's asyncio server
runs there, so its C core's HTTP/2 work and trio's scheduling do not share one loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import TypeVar

import trio

T = TypeVar("T")
THREAD_NAME = "trioserve-grpc"


class LoopThread:
    """Start with :meth:`start`, await asyncio coroutines on it with :meth:`run`, end with
    :meth:`close` (which waits for the thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    async def run(self, coroutine: Awaitable[T]) -> T:
        """The coroutine's result, run on the loop; cancelling the trio side cancels it there."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine,  # type: ignore[arg-type]
            self.loop,
        )
        done = trio.Event()
        token = self._token
        assert token is not None, "LoopThread.run before start"

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    async def close(self) -> None:
        """Stop the loop and wait for its thread to end (the loop is closed then)."""
        if not self._thread.is_alive():
            self.loop.close()
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join)
