"""The Batcher driven directly: memory channels in, batches out, fake time (contract §8.3)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from backend.wire import pb
from trioserve.errors import ServiceUnavailable
from trioserve.models.batching import Asker, Batcher, batch_complete
from trioserve.models.job import Job

# Every test runs under trio's autojump clock: a wait that nobody ends jumps time forward, so
# a hang shows up as a huge virtual time rather than a stuck test, and this bounds it.
HANG_LIMIT_S = 3600


def job(request_id: str, command: int = pb.PREDICT, *, cancelled: bool = False) -> Job:
    made = Job(request_id, [], [], command)
    made.cancelled = cancelled
    return made


def ids(batch: list[Job]) -> list[str]:
    return [j.request_id for j in batch]


@dataclass
class FakeWorker:
    """An asker whose waiting a test sets: True for an idle worker, False once it has died,
    retired or gone busy since it asked."""

    waiting_for_work: bool = True


IDLE = FakeWorker()


@dataclass
class Harness:
    batcher: Batcher
    jobs: trio.MemorySendChannel[Job]
    batches: trio.MemoryReceiveChannel[list[Job]]
    wants_work: trio.MemorySendChannel[Asker]
    nursery: trio.Nursery

    def enqueue(self, *jobs: Job) -> None:
        for item in jobs:
            self.jobs.send_nowait(item)

    async def take(self) -> list[Job]:
        """Ask for work as an idle worker does, then wait for the batch."""
        self.wants_work.send_nowait(IDLE)
        with trio.fail_after(HANG_LIMIT_S):
            return await self.batches.receive()


@asynccontextmanager
async def running_batcher(
    batch_size: int, max_batch_delay_ms: int, queue_size: int = 64
) -> AsyncIterator[Harness]:
    jobs_send, jobs_recv = trio.open_memory_channel[Job](queue_size)
    batches_send, batches_recv = trio.open_memory_channel[list[Job]](0)
    wants_send, wants_recv = trio.open_memory_channel[Asker](math.inf)
    batcher = Batcher(jobs_recv, batches_send, wants_recv, batch_size, max_batch_delay_ms)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        yield Harness(batcher, jobs_send, batches_recv, wants_send, nursery)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("size", "batch_size", "command", "complete"),
    [
        (1, 1, pb.PREDICT, True),
        (3, 4, pb.PREDICT, False),
        (4, 4, pb.PREDICT, True),
        (2, 4, pb.EXPLAIN, False),
        (1, 4, pb.DESCRIBE, True),
    ],
)
def test_batch_complete_on_size_or_describe(
    size: int, batch_size: int, command: int, complete: bool
) -> None:
    assert batch_complete(size, batch_size, command) is complete


async def test_full_batch_goes_without_waiting_for_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=3, max_batch_delay_ms=10_000) as h:
        h.enqueue(job("a"), job("b"), job("c"), job("d"))
        start = trio.current_time()
        assert ids(await h.take()) == ["a", "b", "c"]
        assert trio.current_time() == start
        assert ids(await h.take()) == ["d"]
        assert trio.current_time() == pytest.approx(start + 10.0)


async def test_partial_batch_goes_when_delay_since_first_job_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        start = trio.current_time()

        async def producer() -> None:
            await trio.sleep(1.0)
            h.enqueue(job("a"))  # the delay is counted from here, not from the ask
            await trio.sleep(0.05)
            h.enqueue(job("b"))
            await trio.sleep(0.15)
            h.enqueue(job("c"))

        h.nursery.start_soon(producer)
        assert ids(await h.take()) == ["a", "b"]
        assert trio.current_time() == pytest.approx(start + 1.1)
        assert ids(await h.take()) == ["c"]
        assert trio.current_time() == pytest.approx(start + 1.3)


async def test_no_batch_is_formed_until_a_worker_asks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=10) as h:
        h.enqueue(job("a"), job("b"), job("c"))
        await trio.sleep(60)  # virtual time: the batcher is idle, not slow
        assert h.jobs.statistics().current_buffer_used == 3
        assert h.batcher.pending() == []
        assert ids(await h.take()) == ["a", "b"]
        assert h.jobs.statistics().current_buffer_used == 1


async def test_describe_job_goes_alone(autojump_clock: trio.testing.MockClock) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        h.enqueue(job("d", pb.DESCRIBE), job("p1"), job("p2"))
        start = trio.current_time()
        assert ids(await h.take()) == ["d"]
        assert trio.current_time() == start
        assert ids(await h.take()) == ["p1", "p2"]


async def test_mixed_commands_end_the_batch_and_carry_over_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        h.enqueue(
            job("p1"),
            job("d1", pb.DESCRIBE),
            job("e1", pb.EXPLAIN),
            job("e2", pb.EXPLAIN),
            job("p2"),
            job("p3"),
        )
        start = trio.current_time()
        batches = [await h.take() for _ in range(4)]
        assert [ids(b) for b in batches] == [["p1"], ["d1"], ["e1", "e2"], ["p2", "p3"]]
        for batch in batches:
            assert len({j.command for j in batch}) == 1
        # Each batch but the last ended on a change of command, not on the delay.
        assert trio.current_time() == pytest.approx(start + 0.1)


async def test_carried_job_waits_for_the_next_batch_while_it_is_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        describe = job("d", pb.DESCRIBE)
        h.enqueue(job("p1"), describe)
        assert ids(await h.take()) == ["p1"]
        await trio.testing.wait_all_tasks_blocked()
        assert h.batcher.pending() == [describe]
        assert ids(await h.take()) == ["d"]
        await trio.testing.wait_all_tasks_blocked()
        assert h.batcher.pending() == []


async def test_cancelled_jobs_are_skipped_and_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=100) as h:
        h.enqueue(
            job("gone0", cancelled=True),
            job("a"),
            job("gone1", cancelled=True),
            job("b"),
            job("c"),
        )
        assert ids(await h.take()) == ["a", "b"]
        assert ids(await h.take()) == ["c"]


async def test_cancelled_carried_job_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        describe = job("d", pb.DESCRIBE)
        h.enqueue(job("p1"), describe)
        assert ids(await h.take()) == ["p1"]
        describe.cancelled = True  # its client went away while it was carried
        h.enqueue(job("p2"))
        assert ids(await h.take()) == ["p2"]


async def test_batch_being_gathered_is_pending_and_survives_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A model version that stops mid-gather must still reach those jobs to fail them."""
    async with running_batcher(batch_size=4, max_batch_delay_ms=1_000) as h:
        a, b = job("a"), job("b")
        h.wants_work.send_nowait(IDLE)
        h.enqueue(a, b)
        await trio.sleep(0.5)  # virtual: inside the batch window
        assert h.batcher.pending() == [a, b]
        h.nursery.cancel_scope.cancel()
    assert h.batcher.pending() == [a, b]


async def test_formed_batch_waiting_for_a_worker_is_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=100) as h:
        a, b = job("a"), job("b")
        h.enqueue(a, b)
        # A worker asked, then went away before taking the batch.
        h.wants_work.send_nowait(IDLE)
        await trio.sleep(10)
        assert h.batcher.pending() == [a, b]
        h.nursery.cancel_scope.cancel()
    assert h.batcher.pending() == [a, b]


async def test_batcher_stops_cleanly_and_closes_the_batch_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=100) as h:
        h.enqueue(job("a"))
        assert ids(await h.take()) == ["a"]
        h.nursery.cancel_scope.cancel()
    with pytest.raises(trio.EndOfChannel):
        h.batches.receive_nowait()


async def test_requeued_jobs_go_first_and_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=100) as h:
        h.enqueue(job("c"))
        h.batcher.requeue([job("a"), job("b")])
        assert ids(await h.take()) == ["a", "b"]
        assert ids(await h.take()) == ["c"]


async def test_requeue_wakes_a_batcher_waiting_for_its_first_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=1, max_batch_delay_ms=100) as h:
        h.wants_work.send_nowait(IDLE)
        await trio.testing.wait_all_tasks_blocked()  # parked on the empty queue
        start = trio.current_time()
        h.batcher.requeue([job("a")])
        with trio.fail_after(HANG_LIMIT_S):
            assert ids(await h.batches.receive()) == ["a"]
        assert trio.current_time() == start


async def test_requeue_during_gathering_joins_the_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=2, max_batch_delay_ms=1_000) as h:
        h.wants_work.send_nowait(IDLE)
        h.enqueue(job("a"))
        await trio.sleep(0.5)
        start = trio.current_time()
        h.batcher.requeue([job("b")])
        with trio.fail_after(HANG_LIMIT_S):
            assert ids(await h.batches.receive()) == ["a", "b"]
        assert trio.current_time() == start


async def test_requeue_skips_jobs_already_answered(autojump_clock: trio.testing.MockClock) -> None:
    async with running_batcher(batch_size=4, max_batch_delay_ms=100) as h:
        answered = job("answered")
        answered.fail(ServiceUnavailable("gone"))
        h.batcher.requeue([answered, job("a")])
        assert ids(h.batcher.pending()) == ["a"]
        assert ids(await h.take()) == ["a"]


async def test_jobs_answered_while_waiting_are_neither_pending_nor_batched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The model version fails waiting jobs when its last worker goes; they must not linger
    in the queue statistics nor reach the next worker."""
    async with running_batcher(batch_size=3, max_batch_delay_ms=1_000) as h:
        a, b, queued = job("a"), job("b"), job("queued")
        h.wants_work.send_nowait(IDLE)
        h.enqueue(a, b)
        await trio.sleep(0.5)  # virtual: a and b are being gathered
        for failed in h.batcher.pending():
            failed.fail(ServiceUnavailable("no worker"))
        assert h.batcher.pending() == []
        await trio.sleep(1)  # past the delay: the emptied batch was not handed on
        queued.fail(ServiceUnavailable("no worker"))
        h.enqueue(queued, job("c"))
        with trio.fail_after(HANG_LIMIT_S):
            # The same ask is still being served: only the job still wanted comes out.
            assert ids(await h.batches.receive()) == ["c"]


async def test_ask_of_a_worker_no_longer_waiting_forms_no_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker that died (or retired, or went busy) after asking leaves its ask in the queue:
    taking it must not gather a batch while no worker waits for one."""
    async with running_batcher(batch_size=2, max_batch_delay_ms=100) as h:
        died_idle = FakeWorker()
        h.wants_work.send_nowait(died_idle)
        died_idle.waiting_for_work = False
        h.enqueue(job("a"), job("b"), job("c"))
        await trio.sleep(60)  # virtual time: long past the batch delay
        assert h.batcher.pending() == []
        assert h.jobs.statistics().current_buffer_used == 3
        assert h.wants_work.statistics().current_buffer_used == 0  # the stale ask was used up
        # A live worker's ask is served at once, with a full batch.
        start = trio.current_time()
        assert ids(await h.take()) == ["a", "b"]
        assert trio.current_time() == start


async def test_stale_asks_are_skipped_in_order_until_a_waiting_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_batcher(batch_size=1, max_batch_delay_ms=100) as h:
        gone, retired, busy = FakeWorker(False), FakeWorker(False), FakeWorker(False)
        for asker in (gone, retired, busy):
            h.wants_work.send_nowait(asker)
        h.enqueue(job("a"), job("b"))
        await trio.testing.wait_all_tasks_blocked()
        assert h.batcher.pending() == []
        # Exactly one batch per ask of a waiting worker: the second job stays queued.
        h.wants_work.send_nowait(FakeWorker())
        with trio.fail_after(HANG_LIMIT_S):
            assert ids(await h.batches.receive()) == ["a"]
        await trio.sleep(60)
        assert h.batcher.pending() == []
        assert h.jobs.statistics().current_buffer_used == 1
