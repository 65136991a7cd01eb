"""A Job: one request travelling from a connection to a worker and back."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from backend.wire import pb
from trioserve.errors import InternalServerError, ServeError, ServiceUnavailable
from trioserve.http.request import Input

# A job that no worker has taken after this long is answered 503 (clientTimeoutInMills in
# model-config.yaml sets it per model). Without it a request could wait forever behind workers
# that keep failing to start.
DEFAULT_QUEUE_TIMEOUT_S = 120.0
# Once a worker holds the job, the worker's own response_timeout scope answers it; this is the
# margin on top of that before the connection gives up on a worker that never answered.
ANSWER_GRACE_S = 10.0

# What a job's reply channel carries: a streamed chunk, the final response, or an error.
Outcome = tuple[str, pb.Response | ServeError]  # ("chunk" | "final" | "error", value)


@dataclass(eq=False)
class Job:
    request_id: str
    inputs: list[Input]
    headers: list[tuple[str, str]]
    command: int = pb.PREDICT
    enqueued_at: float = 0.0
    url_version: str | None = None  # the version the request named, for its metrics' labels
    envelope: str = ""  # the KServe envelope its route implies; "" = the model's own
    cancelled: bool = False
    # Unbounded: a job gets at most one final outcome plus the chunks its handler streams,
    # and the connection task reads them as they come. A deque and an event, not a memory
    # channel: one reader, one writer, and a channel pair costs several objects per request.
    _outcomes: deque[Outcome] = field(default_factory=deque, init=False, repr=False)
    _arrived: trio.Event | None = field(default=None, init=False, repr=False)
    done: bool = field(default=False, init=False)
    dispatched: bool = field(default=False, init=False)  # handed to a worker

    def _put(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        if self._arrived is not None:
            self._arrived.set()

    @property
    def settled(self) -> bool:
        """Answered already (say, failed while it waited) or abandoned by its client: nobody
        needs it run any more."""
        return self.done or self.cancelled

    def write_to(self, request: pb.Request) -> None:
        """Fill ``request`` (a new element of a batch's ``requests``) with this job. Filled in
        place: building messages to copy into the batch costs twice as much."""
        request.request_id = self.request_id
        request.envelope = self.envelope
        add_header = request.headers.add
        for name, value in self.headers:
            add_header(name=name, value=value)
        add_input = request.inputs.add
        for item in self.inputs:
            add_input(name=item.name, content_type=item.content_type, value=item.value)

    def chunk(self, response: pb.Response) -> None:
        if not self.done:
            self._put(("chunk", response))

    def finish(self, response: pb.Response) -> None:
        if not self.done:
            self.done = True
            self._put(("final", response))

    def fail(self, error: ServeError) -> None:
        if not self.done:
            self.done = True
            self._put(("error", error))

    async def next_outcome(self) -> Outcome:
        if not self._outcomes:
            self._arrived = trio.Event()
            try:
                await self._arrived.wait()
            finally:
                self._arrived = None
        else:
            await trio.lowlevel.checkpoint()  # an await is always a checkpoint
        return self._outcomes.popleft()

    async def first_outcome(
        self, model_name: str, *, queue_timeout: float, response_timeout: float
    ) -> Outcome:
        """The job's first outcome, with deadlines: ``queue_timeout`` to reach a worker, then
        ``response_timeout`` (plus a margin) for the worker to answer.

        A client that goes away (this task cancelled) drops the job: a queued job is skipped,
        a dispatched one is answered into the void, and no worker is restarted for it.

        Raises:
            ServiceUnavailable: no worker took the job within ``queue_timeout``.
            InternalServerError: a worker took it but nothing answered in time (a bug guard:
                the worker's own timeout should always answer first).
        """
        try:
            with trio.move_on_after(queue_timeout):
                return await self.next_outcome()
            if not self.dispatched:
                self.cancelled = True
                raise ServiceUnavailable(
                    f'Model "{model_name}" did not get a worker for this request within '
                    f"{queue_timeout:g} s."
                )
            with trio.move_on_after(response_timeout + ANSWER_GRACE_S):
                return await self.next_outcome()
            self.cancelled = True
            raise InternalServerError(f'Model "{model_name}" did not answer in time.')
        except trio.Cancelled:
            self.cancelled = True
            raise
