"""One worker's supervisor: owns a backend process per incarnation (``models/process.py``), loads
the model over its channel, runs batches.

Lifecycle (one table, below): STARTING -> READY <-> BUSY; any failure -> RESTARTING (back-off)
-> STARTING, and a worker due for recycling (``models/recycling.py``) BUSY -> RESTARTING ->
STARTING at once; a failed load, or failing for longer than ``maxRetryTimeoutInSec``, -> FAILED;
retirement -> STOPPED. A batch in flight when the process dies, runs past ``response_timeout``
or answers with a body over ``max_response_size`` fails with "Worker died." (507 after a
SIGKILL, as for TorchServe's exit code 137); the process is killed and started again. A batch
the process never received (it was already dead, or we were cancelled before the frame was
written) goes back to the batcher for the next worker instead.

Pipelining: while a batch runs and jobs are waiting in the queue, the supervisor asks for the
next batch and writes it to the process's socket, so the process starts on it the moment it has
answered the current one (the frame round trip hides behind the handler's compute). The process
runs batches one at a time, in order, so a next batch whose predecessor never answered was never
started: when the incarnation fails it goes back to the batcher, exactly like a batch that never
reached the process. See docs/performance.md.
"""

from __future__ import annotations

import datetime
import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import trio

from backend.wire import FrameDecoder, FrameError, encode_frame, pb
from trioserve import fastio
from trioserve.errors import BackendError, ServeError, WorkerDied
from trioserve.models.job import Job
from trioserve.models.process import BackendProcess, backend_env, was_killed
from trioserve.models.recycling import recycle_reason

if TYPE_CHECKING:
    from trioserve.models.model import ModelVersion

logger = logging.getLogger(__name__)

# TorchServe's back-off between restarts of a failing worker, in seconds (contract §8.1).
BACKOFF_S = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597)
# Reads from a worker's channel: small by default, as most result frames are (a 1 MiB buffer
# per read costs an allocation larger than glibc keeps on its heap, ~20 µs, on every result);
# up to the large size while a big frame is known to be arriving.
READ_CHUNK = 64 * 1024
READ_CHUNK_LARGE = 1 << 20
# A busy worker takes its next batch early only when batches take at least this long: the
# channel round trip it hides is well under a millisecond, while asking early costs the frontend
# a task per batch, a loss where the handler itself takes no time (an echo).
PREFETCH_MIN_BATCH_S = 0.002
RESPONSE_TIMEOUT = "response timeout"


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    RESTARTING = "RESTARTING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset(
        {WorkerState.READY, WorkerState.RESTARTING, WorkerState.STOPPED, WorkerState.FAILED}
    ),
    WorkerState.READY: frozenset({WorkerState.BUSY, WorkerState.RESTARTING, WorkerState.STOPPED}),
    WorkerState.BUSY: frozenset({WorkerState.READY, WorkerState.RESTARTING, WorkerState.STOPPED}),
    WorkerState.RESTARTING: frozenset(
        {WorkerState.STARTING, WorkerState.STOPPED, WorkerState.FAILED}
    ),
    WorkerState.STOPPED: frozenset(),
    WorkerState.FAILED: frozenset({WorkerState.STOPPED}),
}


@dataclass
class _Next:
    """A batch taken while the current one runs: its live jobs, and whether its whole frame has
    been written to the process (which then runs it right after the current one)."""

    live: list[Job]
    delivered: bool = False


class _ProcessGone(Exception):
    """The worker's channel closed: the process exited or was killed."""


class _LoadFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerSupervisor:
    def __init__(self, model: ModelVersion, worker_id: int, gpu_id: int = -1) -> None:
        self.model = model
        self.id = worker_id
        self.gpu_id = gpu_id  # -1: CPU; kept across restarts, as the worker id is
        self.state = WorkerState.STARTING
        self.pid = -1
        self.start_time = time.time()
        self.retiring = False
        self._requeue_in_flight = False  # set by retire(grace): a killed batch is run again
        self.loaded = trio.Event()  # set once the first load settles (success or failure)
        self.stopped = trio.Event()  # set once run() has ended (the process is reaped)
        self.load_error: str | None = None
        self.cancel_scope = trio.CancelScope()
        self._batch_seq = 0
        self._decoder: FrameDecoder[pb.FromWorker] = self._new_decoder()
        self._stream: trio.SocketStream | None = None
        self._reader: fastio.FastReader | None = None
        self._failures = 0
        self._failing_since: float | None = None  # trio time of the first failure in a row
        self._waiting = False  # idle on the batch channel, having asked for work
        self._idle_scope = trio.CancelScope()
        self._process: BackendProcess | None = None  # this incarnation's process
        self._served = 0  # requests this incarnation has been sent
        self._prefetching = False  # asking for the next batch while one runs
        self._next: _Next | None = None  # the batch queued at the process behind the current one
        self._last_batch_s = 0.0  # how long the last batch took, send to final result

    @property
    def name(self) -> str:
        return f"W-{self.id}-{self.model.name}_{self.model.version}"

    def _set(self, state: WorkerState) -> None:
        if state is self.state:
            return
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(
                f"worker {self.name}: illegal transition {self.state.value} -> {state.value}"
            )
        self.state = state

    def retire(self, grace: float | None = None) -> None:
        """Stop after the batch in flight, or now if idle.

        ``grace`` (scale's ``timeout``): None waits for the batch however long it takes (within
        response_timeout); otherwise a batch still running after ``grace`` seconds is taken
        from this worker and queued again at the head of the line, and the process killed.
        """
        self.retiring = True
        if self.state is not WorkerState.BUSY:
            self.cancel_scope.cancel()
        elif grace is not None:
            self._requeue_in_flight = True
            self.cancel_scope.deadline = min(
                self.cancel_scope.deadline, trio.current_time() + max(grace, 0.0)
            )

    def ready_to_serve(self) -> bool:
        """Loaded and serving now (idle or busy), and not on its way out: what readiness
        probes count."""
        return self.state in (WorkerState.READY, WorkerState.BUSY) and not self.retiring

    @property
    def waiting_for_work(self) -> bool:
        """Whether this worker is idle right now, waiting for the batch it asked for.

        The batcher checks it for each ask it takes off ``wants_work``: an ask left behind by a
        worker that has since died, been retired or been served must not form a batch.
        """
        idle = self._waiting and self.state is WorkerState.READY
        prefetching = self._prefetching and self.state is WorkerState.BUSY
        return (idle or prefetching) and not self.retiring and not self._process_exited()

    # -- the supervising loop ---------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self.cancel_scope:
                try:
                    await self._supervise()
                finally:
                    if self.state is not WorkerState.FAILED:
                        self.state = WorkerState.STOPPED
                    self.loaded.set()
            self.model.worker_stopped(self)
        finally:
            self.stopped.set()

    async def _supervise(self) -> None:
        while not self.retiring:
            try:
                if (recycle := await self._incarnation()) is None or self.retiring:
                    return
                logger.info("%s: %s; replacing it with a fresh process", self.name, recycle)
                self.model.metrics.worker_restarted("recycle")
                self._set(WorkerState.STARTING)
                continue
            except _LoadFailed as exc:
                self.load_error = exc.args[0]
                logger.error("%s: model load failed (%d): %s", self.name, exc.code, exc.args[0])
                self._set(WorkerState.FAILED)
                self.loaded.set()
                return
            except (_ProcessGone, OSError, FrameError) as exc:
                logger.warning("%s: worker process ended: %s", self.name, exc)
                if not self.loaded.is_set():
                    # The first load never answered (the process died or hung while loading):
                    # a synchronous register or scale waiting on it gets its answer now; the
                    # worker carries on restarting with back-off.
                    self.load_error = str(exc)
                    self.loaded.set()
            if self.retiring:
                return
            self._set(WorkerState.RESTARTING)
            now = trio.current_time()
            if self._failing_since is None:
                self._failing_since = now
            retry_limit = self.model.settings.max_retry_timeout_sec
            if now - self._failing_since > retry_limit:
                logger.error(
                    "%s: failing for over %d s (maxRetryTimeoutInSec); not restarting it",
                    self.name,
                    retry_limit,
                )
                self._set(WorkerState.FAILED)
                return
            delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
            self._failures += 1
            logger.info("%s: restarting in %d s", self.name, delay)
            self.model.metrics.worker_restarted("failure")
            await trio.sleep(delay)
            self._set(WorkerState.STARTING)

    def _new_decoder(self) -> FrameDecoder[pb.FromWorker]:
        # Bounded by max_response_size: a length prefix over it is refused before its payload
        # is buffered (contract §5.2).
        return FrameDecoder(pb.FromWorker, max_frame_bytes=self.model.max_frame_bytes)

    def _on_process_exit(self) -> None:
        self._idle_scope.cancel()

    async def _incarnation(self) -> str | None:
        """One process, until it fails (raises), is retired (None) or is due for recycling."""
        failure: Exception | None = None
        recycle: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                # A fresh process object per incarnation: a death is explained by its own
                # process's output only.
                process = BackendProcess(
                    self.name,
                    logging.getLogger(f"trioserve.worker.{self.model.name}"),
                    self._on_process_exit,
                )
                env = backend_env(
                    self.model.model_dir, decode_input_request=self.model.decode_input_request
                )
                self._stream = await process.start(nursery, cwd=self.model.model_dir, env=env)
                self._reader = fastio.FastReader(self._stream)
                self._process = process
                self.pid = process.pid
                self.start_time = time.time()
                self._decoder = self._new_decoder()
                self._served = 0
                # Failures are caught inside the nursery and re-raised after it, so callers see
                # the exception itself rather than an ExceptionGroup.
                try:
                    await self._load()
                    self.model.metrics.worker_loaded(self.name, time.time() - self.start_time)
                    self._failures = 0
                    self._failing_since = None
                    self._set(WorkerState.READY)
                    self.loaded.set()
                    recycle = await self._serve_batches()
                except _ProcessGone as exc:
                    # Whatever the state was, this incarnation is over: describe and the
                    # statistics must not show a dead process as READY or BUSY meanwhile.
                    self._set(WorkerState.RESTARTING)
                    if exc.args and exc.args[0] == RESPONSE_TIMEOUT:
                        failure = _ProcessGone("killed after exceeding response_timeout")
                    else:
                        await process.wait_dead()
                        failure = _ProcessGone(process.death_message())
                except (OSError, FrameError) as exc:
                    # The channel is unusable (a frame over the limit, say): the process is
                    # killed below, as if the connection had dropped.
                    self._set(WorkerState.RESTARTING)
                    failure = exc
                except _LoadFailed as exc:
                    failure = exc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self._stream is not None:
                self._stream.socket.close()
            self._stream = None
            self._reader = None
        if failure is not None:
            raise failure
        return recycle

    async def _send(self, message: pb.ToWorker) -> None:
        assert self._stream is not None
        try:
            await fastio.send_all(self._stream, encode_frame(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ProcessGone("channel closed while sending") from exc

    async def _receive(self) -> pb.FromWorker:
        assert self._reader is not None
        while True:
            message = self._decoder.next_frame()
            if message is not None:
                return message
            try:
                missing = self._decoder.missing_bytes
                data = await self._reader.receive_some(
                    READ_CHUNK if missing <= READ_CHUNK else min(missing, READ_CHUNK_LARGE)
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ProcessGone("channel reset") from exc
            if not data:
                raise _ProcessGone("channel closed")
            self._decoder.receive_data(data)

    async def _load(self) -> None:
        await self._send(pb.ToWorker(load=self.model.load_message(self.gpu_id)))
        with trio.move_on_after(self.model.settings.startup_timeout) as scope:
            reply = await self._receive()
        if scope.cancelled_caught:
            raise _ProcessGone(
                f"model load exceeded startup_timeout ({self.model.settings.startup_timeout} s)"
            )
        if reply.WhichOneof("kind") != "loaded":
            raise _ProcessGone("worker answered the load with an unexpected frame")
        if reply.loaded.code != 200:
            raise _LoadFailed(reply.loaded.code, reply.loaded.message)

    async def _serve_batches(self) -> str | None:
        self._next = None
        while True:
            prefetched, self._next = self._next, None
            if prefetched is not None:
                self._served += await self._run_batch(prefetched.live, prefetched)
            else:
                if self.retiring:
                    return None
                batch = await self._wait_for_batch()
                self._set(WorkerState.BUSY)
                # Only a batch that ends normally makes the worker READY again (or, due for
                # recycling, RESTARTING); a failure leaves it to the incarnation to mark.
                self._served += await self._run_batch(batch)
            if self._next is not None:
                continue  # still BUSY: the next batch is already at the process
            recycle = recycle_reason(self.model.settings.recycling, self._served, self.pid)
            if recycle is not None:
                self._set(WorkerState.RESTARTING)
                return recycle
            self._set(WorkerState.READY)

    async def _wait_for_batch(self) -> list[Job]:
        """The next batch for this idle worker: taken at once when one is ready and nobody is
        before it in line (``Batcher.batch_nowait``), else asked for and waited on."""
        if not self._process_exited():
            batch = self.model.batcher.batch_nowait()
            if batch is not None:
                return batch
        received: list[Job] | None = None
        with trio.CancelScope() as self._idle_scope:
            # The ask names this worker: the batcher skips it if, by the time it is taken,
            # the worker is no longer waiting here (see ``waiting_for_work``).
            self._waiting = True
            try:
                self.model.wants_work.send_nowait(self)
                if self._process is not None and self._process.exited:
                    self._idle_scope.cancel()
                received = await self.model.batches.receive()
            finally:
                self._waiting = False
        if received is None:
            raise _ProcessGone("process exited while idle")
        return received

    def _batch_frame(self, live: list[Job]) -> pb.ToWorker:
        self._batch_seq += 1
        message = pb.ToWorker()
        batch = message.batch
        batch.batch_id = self._batch_seq
        batch.command = cast("pb.Command", live[0].command)
        add_request = batch.requests.add
        for job in live:
            job.write_to(add_request())
        now = trio.current_time()
        for job in live:
            self.model.observe_queue_wait(now - job.enqueued_at, job.url_version)
        return message

    def _may_prefetch(self) -> bool:
        """Take the next batch now only when batches take long enough for it to pay
        (PREFETCH_MIN_BATCH_S), when jobs are already waiting for one (no worker is idle then,
        so none is passed over), and never when this worker is about to stop or to be recycled
        (the next batch would hold it up)."""
        policy = self.model.settings.recycling
        return (
            self._last_batch_s >= PREFETCH_MIN_BATCH_S
            and not self.retiring
            and policy.max_requests <= 0
            and not policy.measures_rss
            and self.model.batcher.has_waiting()
        )

    async def _prefetch(self, scope: trio.CancelScope) -> None:
        """Ask for the next batch and write it to the process behind the current one.

        Cancelled (``scope``, made by the caller, so cancelling it works even before this task
        first runs) while still waiting for the batch, it takes nothing; once it has the batch
        it finishes writing it (bounded by the current batch's timeout). Never raises but
        Cancelled: a channel that breaks meanwhile is the current batch's failure to report.
        """
        if scope.cancel_called:
            return  # the current batch was answered before this task got to run
        batch: list[Job] | None = None
        with scope:
            self._prefetching = True
            try:
                self.model.wants_work.send_nowait(self)
                batch = await self.model.batches.receive()
            finally:
                self._prefetching = False
        if batch is None:
            return
        live = [j for j in batch if not j.settled]
        if not live:
            return
        self._next = taken = _Next(live)
        try:
            await self._send(self._batch_frame(live))
        except (_ProcessGone, FrameError):
            return
        taken.delivered = True

    async def _run_batch(self, jobs: list[Job], prefetched: _Next | None = None) -> int:
        """Run one batch (``prefetched``: one already taken, and maybe written, while the
        previous batch ran); returns how many requests it sent to the process."""
        if prefetched is not None:
            live = prefetched.live
            delivered = prefetched.delivered
        else:
            live = [j for j in jobs if not j.settled]
            delivered = False
        if not live:
            return 0
        by_id = {j.request_id: j for j in live}
        now = trio.current_time()
        # Until the whole frame is written the process cannot have started on the batch: if it
        # turns out dead by then (or we are cancelled), another worker can serve these jobs.
        finished = False
        try:
            # As trio.fail_after, minus a generator-based context manager per batch.
            with trio.move_on_after(self.model.settings.response_timeout):
                if not delivered:
                    if self._process_exited():
                        raise _ProcessGone("process exited before the batch was sent")
                    await self._send(self._batch_frame(live))
                    delivered = True
                if self._may_prefetch():
                    failure: Exception | None = None
                    prefetch = trio.CancelScope()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._prefetch, prefetch)
                        try:
                            await self._await_result(live, by_id, now)
                        except (_ProcessGone, OSError, FrameError) as exc:
                            failure = exc  # re-raised below, not as an ExceptionGroup
                        finally:
                            prefetch.cancel()
                    if failure is not None:
                        raise failure
                else:
                    await self._await_result(live, by_id, now)
                finished = True
                return len(live)
            raise trio.TooSlowError  # only the scope's deadline ends its body without a return
        except trio.TooSlowError:
            logger.error(
                "%s: batch exceeded response_timeout (%d s); killing the worker",
                self.name,
                self.model.settings.response_timeout,
            )
            self._fail_all(
                live,
                WorkerDied(
                    f"Worker died. (killed after exceeding response_timeout of "
                    f"{self.model.settings.response_timeout} s)"
                ),
            )
            raise _ProcessGone(RESPONSE_TIMEOUT) from None
        except _ProcessGone:
            if delivered:
                # The process died holding the batch. SIGKILL (the OOM killer's signal) is
                # answered with 507, as TorchServe does for exit code 137; the wait is bounded.
                killed = False
                message = "Worker died."
                if self._process is not None:
                    await self._process.wait_dead()
                    killed = was_killed(self._process.returncode)
                    message = self._process.client_message()
                self._fail_all(live, WorkerDied(message, code=507 if killed else 500))
            raise
        finally:
            # A next batch taken behind one that did not finish was never started by the
            # process (it runs batches in order): it goes back to the head of the line.
            waiting: list[Job] = []
            if not finished and self._next is not None:
                waiting, self._next = self._next.live, None
            if delivered and self._requeue_in_flight:
                # Retired past its scale-down grace: the process is killed, but the jobs did
                # nothing wrong; another worker runs them.
                self.model.requeue([j for j in live if not j.done] + waiting)
            elif delivered:
                # Timed out, or cancelled mid-batch (the model version or the server is
                # stopping): the process is killed, so nobody else will answer these jobs.
                self._fail_all(live, WorkerDied())
                if waiting:
                    self.model.requeue(waiting)
            else:
                self.model.requeue(live + waiting)

    async def _await_result(self, live: list[Job], by_id: dict[str, Job], started: float) -> None:
        """Read the process's frames for the batch in flight until its final result."""
        while True:
            reply = await self._receive()
            if reply.WhichOneof("kind") != "result":
                raise _ProcessGone("worker sent an unexpected frame mid-batch")
            self._check_response_sizes(reply.result)
            if self._deliver(reply.result, by_id):
                elapsed = trio.current_time() - started
                self._last_batch_s = elapsed
                self.model.metrics.batch_done(len(live), elapsed, reply.result.metrics)
                return

    def _process_exited(self) -> bool:
        return self._process is not None and self._process.has_exited()

    def _check_response_sizes(self, result: pb.BatchResult) -> None:
        """Raises FrameError for a response body over ``max_response_size``: the contract
        (§5.2) drops the worker's connection, so its batch fails with "Worker died." and the
        worker is restarted."""
        limit = self.model.max_response_size
        for response in result.responses:
            if len(response.body) > limit:
                raise FrameError(
                    f"response of {len(response.body)} bytes exceeds max_response_size ({limit})"
                )

    def _fail_all(self, jobs: list[Job], error: ServeError) -> None:
        for job in jobs:
            job.fail(error)

    def _deliver(self, result: pb.BatchResult, by_id: dict[str, Job]) -> bool:
        """Route a result to its jobs; return whether the batch is finished."""
        if result.code != 200 and result.final:
            logger.error(
                "%s: batch failed with %d %s (model %s)",
                self.name,
                result.code,
                result.message,
                self.model.name,
            )
            self._fail_all(list(by_id.values()), BackendError(result.message, code=result.code))
            return True
        for response in result.responses:
            job = by_id.get(response.request_id)
            if job is None:
                continue
            if result.final:
                job.finish(response)
            else:
                job.chunk(response)
        if result.final:
            missing = [j for j in by_id.values() if not j.done]
            self._fail_all(missing, BackendError("number of batch response mismatched", code=503))
        return result.final

    def start_time_text(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.start_time)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
