"""One worker's supervisor: spawns the backend process, loads the model, runs batches.

Lifecycle (one table, below): STARTING -> READY <-> BUSY; any failure -> RESTARTING (back-off)
-> STARTING; a failed load, or failing for longer than ``maxRetryTimeoutInSec``, -> FAILED;
retirement -> STOPPED. A batch in flight when the process dies, or when it runs past
``response_timeout``, fails with "Worker died." (507 after a SIGKILL, as for TorchServe's exit
code 137); the process is killed and started again. A batch the process never received (it was
already dead, or we were cancelled before the frame was written) goes back to the batcher for
the next worker instead.
"""

from __future__ import annotations

import collections
import datetime
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import trio

from backend.wire import FrameDecoder, FrameError, encode_frame, pb
from trioserve.errors import BackendError, ServeError, WorkerDied
from trioserve.models.job import Job

if TYPE_CHECKING:
    from trioserve.models.model import ModelVersion

logger = logging.getLogger(__name__)

# TorchServe's back-off between restarts of a failing worker, in seconds (contract §8.1).
BACKOFF_S = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597)
# How long a stopping worker gets after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 5.0
# Lines of a worker's stderr kept to explain its death.
STDERR_TAIL_LINES = 10
READ_CHUNK = 1 << 20
# A worker's output line longer than this is logged in pieces, so one endless line cannot grow
# the frontend's buffer without bound.
MAX_LOG_LINE_BYTES = 64 * 1024
# After a worker dies, how long to wait for it to be reaped and for its last output to drain
# from the pipes (its dying words explain the death); a grandchild holding a pipe open cannot
# hold the restart up for longer than this.
DEATH_DRAIN_S = 1.0
# Exit code TorchServe sees for a SIGKILLed worker (128 + 9), which is also what the kernel's
# OOM killer sends; the contract answers those deaths with 507.
KILLED_EXIT_CODE = 137
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


class _ProcessGone(Exception):
    """The worker's channel closed: the process exited or was killed."""


class _LoadFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class WorkerInfo:
    id: int
    state: WorkerState
    pid: int
    start_time: float


async def _terminate_then_kill(process: trio.Process) -> None:
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with trio.move_on_after(TERMINATE_GRACE_S):
        await process.wait()
        return
    process.kill()


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class WorkerSupervisor:
    def __init__(self, model: ModelVersion, worker_id: int) -> None:
        self.model = model
        self.id = worker_id
        self.state = WorkerState.STARTING
        self.pid = -1
        self.start_time = time.time()
        self.retiring = False
        self.loaded = trio.Event()  # set once the first load settles (success or failure)
        self.load_error: str | None = None
        self.cancel_scope = trio.CancelScope()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._batch_seq = 0
        self._decoder: FrameDecoder[pb.FromWorker] = FrameDecoder(pb.FromWorker)
        self._stream: trio.SocketStream | None = None
        self._failures = 0
        self._failing_since: float | None = None  # trio time of the first failure in a row
        self._exited = False
        self._idle_scope = trio.CancelScope()
        self._process: trio.Process | None = None
        self._pipes_closed: list[trio.Event] = []

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

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.id, self.state, self.pid, self.start_time)

    def retire(self) -> None:
        """Stop after the batch in flight, or now if idle."""
        self.retiring = True
        if self.state is not WorkerState.BUSY:
            self.cancel_scope.cancel()

    # -- the supervising loop ---------------------------------------------------------------
    async def run(self) -> None:
        with self.cancel_scope:
            try:
                await self._supervise()
            finally:
                if self.state is not WorkerState.FAILED:
                    self.state = WorkerState.STOPPED
                self.loaded.set()
        self.model.worker_stopped(self)

    async def _supervise(self) -> None:
        while not self.retiring:
            try:
                await self._incarnation()
                return
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
            await trio.sleep(delay)
            self._set(WorkerState.STARTING)

    def _command(self, fd: int) -> list[str]:
        return [sys.executable, "-m", "backend", "--fd", str(fd)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [self.model.model_dir, os.getcwd()]
        backend_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths.append(os.path.dirname(backend_root))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["TS_DECODE_INPUT_REQUEST"] = str(self.model.decode_input_request).lower()
        # A piped stdout is block-buffered: without this, what a handler prints would reach the
        # log only when a buffer fills or the process exits.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _incarnation(self) -> None:
        parent, child = socket.socketpair()
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(self._spawn, child.fileno())
                child.close()
                self.pid = process.pid
                self.start_time = time.time()
                self._process = process
                self.stderr_tail.clear()  # a death is explained by its own process's output
                assert process.stdout is not None
                assert process.stderr is not None
                self._pipes_closed = [trio.Event(), trio.Event()]
                nursery.start_soon(
                    self._pump, process.stdout, logging.INFO, False, self._pipes_closed[0]
                )
                nursery.start_soon(
                    self._pump, process.stderr, logging.WARNING, True, self._pipes_closed[1]
                )
                nursery.start_soon(self._watch_exit, process)
                self._exited = False
                self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
                self._decoder = FrameDecoder(pb.FromWorker)
                # Failures are caught inside the nursery and re-raised after it, so callers see
                # the exception itself rather than an ExceptionGroup.
                try:
                    await self._load()
                    self._failures = 0
                    self._failing_since = None
                    self._set(WorkerState.READY)
                    self.loaded.set()
                    await self._serve_batches()
                except _ProcessGone as exc:
                    # Whatever the state was, this incarnation is over: describe and the
                    # statistics must not show a dead process as READY or BUSY meanwhile.
                    self._set(WorkerState.RESTARTING)
                    if exc.args and exc.args[0] == RESPONSE_TIMEOUT:
                        failure = _ProcessGone("killed after exceeding response_timeout")
                    else:
                        await self._wait_dead()
                        failure = _ProcessGone(self._death_message(process.returncode))
                except (_LoadFailed, OSError, FrameError) as exc:
                    failure = exc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            child.close()
            parent.close()
            self._stream = None
        if failure is not None:
            raise failure

    async def _spawn(self, fd: int, task_status: trio.TaskStatus[trio.Process]) -> None:
        await trio.run_process(
            self._command(fd),
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.model.model_dir,
            env=self._env(),
            check=False,
            deliver_cancel=_terminate_then_kill,
            task_status=task_status,
        )

    async def _wait_dead(self) -> None:
        """Wait (bounded) until the process is reaped and its output pipes reach EOF."""
        with trio.move_on_after(DEATH_DRAIN_S):
            if self._process is not None:
                await self._process.wait()
            for closed in self._pipes_closed:
                await closed.wait()

    def _death_message(self, returncode: int | None) -> str:
        tail = " | ".join(self.stderr_tail)
        message = f"Worker died ({_describe_exit(returncode)})."
        return f"{message} Last stderr: {tail}" if tail else message

    async def _pump(
        self, stream: trio.abc.ReceiveStream, level: int, is_stderr: bool, closed: trio.Event
    ) -> None:
        worker_log = logging.getLogger(f"trioserve.worker.{self.model.name}")

        def emit(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if is_stderr:
                self.stderr_tail.append(line)
            worker_log.log(level, "[%s] %s", self.name, line)

        buffer = bytearray()
        try:
            async for data in stream:
                # Only the new bytes are searched for line ends: no rescanning a long line.
                start = 0
                end = data.find(b"\n")
                while end >= 0:
                    emit(bytes(buffer) + data[start:end])
                    buffer.clear()
                    start = end + 1
                    end = data.find(b"\n", start)
                buffer += data[start:]
                while len(buffer) >= MAX_LOG_LINE_BYTES:
                    emit(bytes(buffer[:MAX_LOG_LINE_BYTES]))
                    del buffer[:MAX_LOG_LINE_BYTES]
            if buffer:
                emit(bytes(buffer))  # a last line without its newline
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            closed.set()

    async def _send(self, message: pb.ToWorker) -> None:
        assert self._stream is not None
        try:
            await self._stream.send_all(encode_frame(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ProcessGone("channel closed while sending") from exc

    async def _receive(self) -> pb.FromWorker:
        assert self._stream is not None
        while True:
            message = self._decoder.next_frame()
            if message is not None:
                return message
            try:
                data = await self._stream.receive_some(READ_CHUNK)
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

    @property
    def gpu_id(self) -> int:
        return -1

    async def _watch_exit(self, process: trio.Process) -> None:
        await process.wait()
        self._exited = True
        self._idle_scope.cancel()

    async def _serve_batches(self) -> None:
        while not self.retiring:
            self.model.wants_work.send_nowait(None)
            batch: list[Job] | None = None
            with trio.CancelScope() as self._idle_scope:
                if self._exited:
                    self._idle_scope.cancel()
                batch = await self.model.batches.receive()
            if batch is None:
                raise _ProcessGone("process exited while idle")
            self._set(WorkerState.BUSY)
            # Only a batch that ends normally makes the worker READY again; a failure leaves
            # it to the incarnation to mark RESTARTING.
            await self._run_batch(batch)
            self._set(WorkerState.READY)

    async def _run_batch(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.settled]
        if not live:
            return
        self._batch_seq += 1
        command = cast("pb.Command", live[0].command)
        batch = pb.Batch(
            batch_id=self._batch_seq, command=command, requests=[j.to_wire() for j in live]
        )
        by_id = {j.request_id: j for j in live}
        now = trio.current_time()
        for job in live:
            self.model.observe_queue_wait(now - job.enqueued_at)
        # Until the whole frame is written the process cannot have started on the batch: if it
        # turns out dead by then (or we are cancelled), another worker can serve these jobs.
        delivered = False
        try:
            with trio.fail_after(self.model.settings.response_timeout):
                if self._process_exited():
                    raise _ProcessGone("process exited before the batch was sent")
                await self._send(pb.ToWorker(batch=batch))
                delivered = True
                while True:
                    reply = await self._receive()
                    if reply.WhichOneof("kind") != "result":
                        raise _ProcessGone("worker sent an unexpected frame mid-batch")
                    if self._deliver(reply.result, by_id):
                        return
        except trio.TooSlowError:
            logger.error(
                "%s: batch exceeded response_timeout (%d s); killing the worker",
                self.name,
                self.model.settings.response_timeout,
            )
            raise _ProcessGone(RESPONSE_TIMEOUT) from None
        except _ProcessGone:
            if delivered:
                # The process died holding the batch. SIGKILL (the OOM killer's signal) is
                # answered with 507, as TorchServe does for exit code 137; the wait is bounded.
                await self._wait_dead()
                returncode = self._process.returncode if self._process is not None else None
                killed = returncode in (-signal.SIGKILL, KILLED_EXIT_CODE)
                self._fail_all(live, WorkerDied(code=507 if killed else 500))
            raise
        finally:
            if delivered:
                # Timed out, or cancelled mid-batch (the model version or the server is
                # stopping): the process is killed, so nobody else will answer these jobs.
                self._fail_all(live, WorkerDied())
            else:
                self.model.requeue(live)

    def _process_exited(self) -> bool:
        return self._exited or (self._process is not None and self._process.poll() is not None)

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
