"""The batcher: one task per model version turning queued jobs into batches.

It waits until a worker asks for work, takes the first job (waiting as long as needed), then keeps
taking jobs until ``batch_size`` is reached or ``max_batch_delay`` has passed since the first one.
The batch is handed over on an unbuffered channel, so it only ever goes to a worker that is
alive and waiting; a worker that dies after asking simply never receives it.
"""

from __future__ import annotations

import trio

from backend.wire import pb
from trioserve.models.job import Job


def batch_complete(size: int, batch_size: int, first_command: int) -> bool:
    """Whether a batch under construction is done before its delay runs out."""
    return size >= batch_size or first_command == pb.DESCRIBE


class Batcher:
    def __init__(
        self,
        jobs: trio.MemoryReceiveChannel[Job],
        batches: trio.MemorySendChannel[list[Job]],
        wants_work: trio.MemoryReceiveChannel[None],
        batch_size: int,
        max_batch_delay_ms: int,
    ) -> None:
        self.jobs = jobs
        self.batches = batches
        self.wants_work = wants_work
        self.batch_size = batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000
        self._carry: Job | None = None
        self.held: list[Job] = []  # a formed batch waiting for a worker

    def pending(self) -> list[Job]:
        """Jobs taken from the queue but not yet handed to a worker."""
        carry = [self._carry] if self._carry is not None else []
        return [*self.held, *carry]

    async def _first_job(self) -> Job:
        while True:
            if self._carry is not None:
                job, self._carry = self._carry, None
            else:
                job = await self.jobs.receive()
            if not job.cancelled:
                return job

    async def next_batch(self) -> list[Job]:
        first = await self._first_job()
        batch = [first]
        deadline = trio.current_time() + self.max_batch_delay
        while not batch_complete(len(batch), self.batch_size, first.command):
            job: Job | None = None
            try:
                job = self.jobs.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_at(deadline):
                    job = await self.jobs.receive()
            if job is None:
                break
            if job.cancelled:
                continue
            if job.command != first.command:
                # Describe and explain jobs never share a batch with predictions.
                self._carry = job
                break
            batch.append(job)
        return batch

    async def run(self) -> None:
        async with self.batches:
            while True:
                await self.wants_work.receive()
                self.held = await self.next_batch()
                try:
                    await self.batches.send(self.held)
                finally:
                    # Cancelled while holding a batch (model stopping): its jobs go back to
                    # the caller through ``held``, which the model version fails or drains.
                    pass
                self.held = []
