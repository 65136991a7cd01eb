"""A Job: one request travelling from a connection to a worker and back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from backend.wire import pb
from trioserve.errors import ServeError
from trioserve.http.request import Input

# What a job's reply channel carries: a streamed chunk, the final response, or an error.
Outcome = tuple[str, pb.Response | ServeError]  # ("chunk" | "final" | "error", value)


@dataclass(eq=False)
class Job:
    request_id: str
    inputs: list[Input]
    headers: list[tuple[str, str]]
    command: int = pb.PREDICT
    enqueued_at: float = 0.0
    cancelled: bool = False
    _send: trio.MemorySendChannel[Outcome] = field(init=False, repr=False)
    _recv: trio.MemoryReceiveChannel[Outcome] = field(init=False, repr=False)
    done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # Unbounded: a job gets at most one final outcome plus the chunks its handler streams,
        # and the connection task reads them as they come.
        self._send, self._recv = trio.open_memory_channel(math.inf)

    @property
    def settled(self) -> bool:
        """Answered already (say, failed while it waited) or abandoned by its client: nobody
        needs it run any more."""
        return self.done or self.cancelled

    def to_wire(self) -> pb.Request:
        return pb.Request(
            request_id=self.request_id,
            headers=[pb.Header(name=k, value=v) for k, v in self.headers],
            inputs=[
                pb.Input(name=i.name, content_type=i.content_type, value=i.value)
                for i in self.inputs
            ],
        )

    def chunk(self, response: pb.Response) -> None:
        if not self.done:
            self._send.send_nowait(("chunk", response))

    def finish(self, response: pb.Response) -> None:
        if not self.done:
            self.done = True
            self._send.send_nowait(("final", response))

    def fail(self, error: ServeError) -> None:
        if not self.done:
            self.done = True
            self._send.send_nowait(("error", error))

    async def next_outcome(self) -> Outcome:
        return await self._recv.receive()
