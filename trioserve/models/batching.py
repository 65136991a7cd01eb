"""The batcher: one task per model version turning queued jobs into batches.

It waits until a worker asks for work, takes the first job (waiting as long as needed), then keeps
taking jobs until ``batch_size`` is reached or ``max_batch_delay`` has passed since the first one.
The batch is handed over on an unbuffered channel, so it only ever goes to a worker that is
alive and waiting; a worker that dies after asking simply never receives it.

An ask is the worker itself (an ``Asker``). Asks queue up, so by the time one is taken its worker
may have died idle, been retired, or been served already; such an ask is skipped rather than
forming a batch that no worker is waiting for while every live one is busy.

Jobs taken from the queue but not batched yet (one that ended a batch by changing command, or a
batch a worker handed back because its process died before the batch reached it) wait in a
carried list that is served before the queue, so they keep their place in line.
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

import trio

from backend.wire import pb
from trioserve.models.job import Job


def batch_complete(size: int, batch_size: int, first_command: int) -> bool:
    """Whether a batch under construction is done before its delay runs out."""
    return size >= batch_size or first_command == pb.DESCRIBE


class Asker(Protocol):
    """What a worker sends on ``wants_work``: itself (a ``WorkerSupervisor``)."""

    @property
    def waiting_for_work(self) -> bool:
        """True while the worker that asked is still idle, waiting for that batch."""
        ...


class Batcher:
    def __init__(
        self,
        jobs: trio.MemoryReceiveChannel[Job],
        batches: trio.MemorySendChannel[list[Job]],
        wants_work: trio.MemoryReceiveChannel[Asker],
        batch_size: int,
        max_batch_delay_ms: int,
    ) -> None:
        self.jobs = jobs
        self.batches = batches
        self.wants_work = wants_work
        self.batch_size = batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000
        self._carried: collections.deque[Job] = collections.deque()
        self._wake = trio.CancelScope()  # around the current wait for the queue
        self.held: list[Job] = []  # the batch being gathered, or formed and waiting for a worker
        self._awaiting_ask = False  # idle: nothing gathered, waiting for a worker to ask

    def pending(self) -> list[Job]:
        """Jobs taken from the queue, not yet handed to a worker and still unanswered."""
        return [j for j in (*self.held, *self._carried) if not j.done]

    def has_waiting(self) -> bool:
        """Whether jobs are queued or carried, not yet in any batch (a busy worker then takes
        its next batch early: see models/worker.py)."""
        return bool(self._carried) or self.jobs.statistics().current_buffer_used > 0

    def batch_nowait(self) -> list[Job] | None:
        """A whole batch for a worker that has just become idle, taken at once, or None (the
        worker then asks as usual).

        Only when the batcher is idle, no other worker is waiting in line before this one, and
        the jobs for a complete batch are already there: the batch is then exactly the one the
        batcher would form for this worker's ask, minus two task switches and a channel
        handoff per batch (a fifth of the frontend's work for a small request). Jobs taken but
        too few for a complete batch go back to the head of the line.
        """
        if not self._awaiting_ask or self.wants_work.statistics().current_buffer_used:
            return None
        batch: list[Job] = []
        while True:
            job = self._take_nowait()
            if job is None:
                self._carried.extendleft(reversed(batch))
                return None
            if job.settled:
                continue
            if batch and job.command != batch[0].command:
                self._carried.appendleft(job)  # as next_batch: never mixed with predictions
                break
            batch.append(job)
            if batch_complete(len(batch), self.batch_size, batch[0].command):
                break
        for job in batch:
            job.dispatched = True
        return batch

    def requeue(self, jobs: list[Job]) -> None:
        """Put jobs that never reached a worker process back at the head of the line, in order.

        Called by a worker supervisor whose process died before it could receive its batch.
        """
        self._carried.extendleft(reversed([j for j in jobs if not j.settled]))
        self._wake.cancel()

    def _take_nowait(self) -> Job | None:
        if self._carried:
            return self._carried.popleft()
        try:
            return self.jobs.receive_nowait()
        except trio.WouldBlock:
            return None

    async def _take(self, deadline: float) -> Job | None:
        """The next job, or None when ``deadline`` passes or ``requeue`` interrupts the wait
        (the caller looks again)."""
        job = self._take_nowait()
        if job is not None:
            return job
        with trio.move_on_at(deadline) as self._wake:
            return await self.jobs.receive()
        return None

    async def _first_job(self) -> Job:
        while True:
            job = await self._take(math.inf)
            if job is not None and not job.settled:
                return job

    async def next_batch(self) -> list[Job]:
        """Gather one batch. The batch under construction lives in ``held`` from its first job
        on, so a cancellation mid-gather leaves every job reachable through ``pending()``."""
        first = await self._first_job()
        self.held = batch = [first]
        deadline = trio.current_time() + self.max_batch_delay
        while not batch_complete(len(batch), self.batch_size, first.command):
            job = await self._take(deadline)
            if job is None:
                if trio.current_time() >= deadline:
                    break
                continue
            if job.settled:
                continue
            if job.command != first.command:
                # Describe and explain jobs never share a batch with predictions.
                self._carried.appendleft(job)
                break
            batch.append(job)
        return batch

    async def run(self) -> None:
        async with self.batches:
            while True:
                self._awaiting_ask = True
                try:
                    asker = await self.wants_work.receive()
                finally:
                    self._awaiting_ask = False
                if not asker.waiting_for_work:
                    continue  # stale: that worker died, retired or is busy since it asked
                # If cancelled (the model version is stopping) while gathering or while
                # waiting for a worker to take the batch, its jobs stay in ``held``; the model
                # version fails them through ``pending()``.
                while True:
                    batch = await self.next_batch()
                    # Jobs answered while gathered (the last worker went away) or abandoned
                    # by their clients are dropped; an emptied batch is gathered again.
                    batch[:] = [j for j in batch if not j.settled]
                    if batch:
                        break
                await self.batches.send(batch)
                for job in batch:
                    job.dispatched = True
                self.held = []
