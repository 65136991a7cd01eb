"""A model version: its settings, job queue, batcher and worker supervisors, in one nursery."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from backend.wire import MAX_FRAME_BYTES, pb
from trioserve.errors import ServeError, ServiceUnavailable
from trioserve.metrics.registry import VersionMetrics
from trioserve.models.archive import ModelArchive
from trioserve.models.batching import Asker, Batcher
from trioserve.models.gpu import CPU, NO_GPU
from trioserve.models.job import Job
from trioserve.models.recycling import RecyclePolicy
from trioserve.models.worker import WorkerState, WorkerSupervisor

logger = logging.getLogger(__name__)

# The ``max_response_size`` config key's default: TorchServe's 6.5 MB cap on one response body.
DEFAULT_MAX_RESPONSE_SIZE = 6553500
# What a result frame carries besides its bodies: request ids, status, reasons, content types,
# the headers a handler sets and its metrics. Generous, so only an oversized body trips it.
RESULT_FRAME_OVERHEAD = 1 << 20


def result_frame_limit(batch_size: int, max_response_size: int) -> int:
    """The largest frame a worker may send: one batch of bodies at ``max_response_size`` each,
    plus overhead, and never over the codec's own ceiling."""
    return min(MAX_FRAME_BYTES, batch_size * max_response_size + RESULT_FRAME_OVERHEAD)


@dataclass(frozen=True)
class ModelSettings:
    """What a version was registered with (each value already resolved from its sources)."""

    min_workers: int = 0
    max_workers: int = 0
    batch_size: int = 1
    max_batch_delay: int = 100
    response_timeout: int = 120
    startup_timeout: int = 120
    job_queue_size: int = 100
    handler: str = ""
    runtime: str = "python"
    loaded_at_startup: bool = False
    max_retry_timeout_sec: int = 300
    client_timeout_ms: int = 0
    parallel_type: str = ""
    parallel_level: int = 0
    device_type: str = CPU
    device_ids: tuple[int, ...] | None = None  # yaml deviceIds, when valid
    recycling: RecyclePolicy = field(default_factory=RecyclePolicy)


@dataclass(frozen=True)
class ModelStatistics:
    queued: int
    in_flight: int
    remaining_capacity: int
    workers: dict[str, int]


def no_worker_message(name: str, version: str | None) -> str:
    tail = (
        "has no worker to serve inference request. Please use scale workers API to add workers. "
        "If this is a sequence inference, please check if it is closed, or expired; or exceeds "
        "maxSequenceJobQueueSize"
    )
    # TorchServe's versioned form carries a stray quote; we print it balanced.
    if version is None:
        return f'Model "{name}" {tail}'
    return f'Model "{name}" Version {version} {tail}'


class ModelVersion:
    def __init__(
        self,
        name: str,
        version: str,
        url: str,
        archive: ModelArchive,
        settings: ModelSettings,
        *,
        next_worker_id: Any,
        next_gpu_id: Callable[[], int] = lambda: NO_GPU,
        decode_input_request: bool = True,
        envelope: str = "",
        limit_max_image_pixels: bool = True,
        downloaded: bool = False,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        metrics: VersionMetrics | None = None,
    ) -> None:
        self.name = name
        # The server's metric hooks for this version; without a server they record nothing.
        self.metrics = metrics if metrics is not None else VersionMetrics(None, name, version)
        self.version = version
        self.url = url
        self.archive = archive
        self.settings = settings
        self.decode_input_request = decode_input_request
        self.envelope = envelope
        self.limit_max_image_pixels = limit_max_image_pixels
        self.downloaded = downloaded
        # Contract §5.2: a response body over this drops the worker's connection.
        self.max_response_size = max_response_size
        self.max_frame_bytes = result_frame_limit(settings.batch_size, max_response_size)
        self._next_worker_id = next_worker_id
        self._next_gpu_id = next_gpu_id  # a worker keeps its GPU for life, restarts included
        self._jobs_send, self._jobs_recv = trio.open_memory_channel[Job](settings.job_queue_size)
        self.batches_send, self.batches = trio.open_memory_channel[list[Job]](0)
        # Each idle worker puts itself here; the batcher skips asks gone stale.
        self.wants_work, self._wants_recv = trio.open_memory_channel[Asker](math.inf)
        self.batcher = Batcher(
            self._jobs_recv,
            self.batches_send,
            self._wants_recv,
            settings.batch_size,
            settings.max_batch_delay,
        )
        self.workers: list[WorkerSupervisor] = []
        self._nursery: trio.Nursery | None = None
        self.cancel_scope = trio.CancelScope()
        self.last_queue_wait_s = 0.0
        self.stopped = trio.Event()

    @property
    def model_dir(self) -> str:
        return str(self.archive.model_dir)

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the batcher and the workers until cancelled; fail whatever is left on the way out."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.batcher.run)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._fail_leftovers(
                ServiceUnavailable(f"Model {self.name} version {self.version} was stopped.")
            )
            self.stopped.set()

    def _fail_leftovers(self, error: ServeError) -> None:
        for job in self.batcher.pending():
            job.fail(error)
        while True:
            try:
                job = self._jobs_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            job.fail(error)

    def stop(self) -> None:
        self.cancel_scope.cancel()

    # -- jobs -----------------------------------------------------------------------------------
    def live_workers(self) -> list[WorkerSupervisor]:
        return [
            w
            for w in self.workers
            if w.state not in (WorkerState.STOPPED, WorkerState.FAILED) and not w.retiring
        ]

    def submit_nowait(self, job: Job, *, url_version: str | None = None) -> None:
        """Queue a job, or raise ServiceUnavailable at once: no worker, or the queue is full."""
        if not self.live_workers():
            raise ServiceUnavailable(no_worker_message(self.name, url_version))
        job.enqueued_at = trio.current_time()
        job.url_version = url_version
        try:
            self._jobs_send.send_nowait(job)
        except trio.WouldBlock:
            raise ServiceUnavailable(no_worker_message(self.name, url_version)) from None

    def requeue(self, jobs: list[Job]) -> None:
        """Give back jobs a worker took but never delivered to its process (it died first):
        they go to the head of the line for the next worker."""
        self.batcher.requeue(jobs)
        if not self.live_workers():
            self._fail_leftovers(ServiceUnavailable(no_worker_message(self.name, None)))

    def observe_queue_wait(self, seconds: float, url_version: str | None = None) -> None:
        self.last_queue_wait_s = seconds
        self.metrics.queue_wait(url_version, seconds)

    def queue_full(self) -> bool:
        """Whether the job queue has no room (``statistics`` answers more, at more cost)."""
        stats = self._jobs_send.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

    def statistics(self) -> ModelStatistics:
        stats = self._jobs_send.statistics()
        by_state: dict[str, int] = {}
        for worker in self.workers:
            by_state[worker.state.value] = by_state.get(worker.state.value, 0) + 1
        return ModelStatistics(
            queued=stats.current_buffer_used + len(self.batcher.pending()),
            in_flight=sum(1 for w in self.workers if w.state is WorkerState.BUSY),
            remaining_capacity=int(stats.max_buffer_size) - stats.current_buffer_used,
            workers=by_state,
        )

    # -- workers --------------------------------------------------------------------------------
    def load_message(self, gpu_id: int) -> pb.Load:
        manifest = self.archive.manifest
        handler = self.settings.handler or manifest.handler or ""
        return pb.Load(
            model_name=self.name,
            model_version=self.version,
            model_dir=self.model_dir,
            handler=handler,
            batch_size=self.settings.batch_size,
            gpu_id=gpu_id,
            envelope=self.envelope,
            limit_max_image_pixels=self.limit_max_image_pixels,
            decode_input_request=self.decode_input_request,
            manifest_json=json.dumps(dict(manifest.raw)) if manifest.raw else "",
            model_yaml_json=json.dumps(dict(self.archive.model_config.raw), default=str)
            if self.archive.model_config.raw
            else "",
            model_metrics_json=self.metrics.model_metrics_json,
        )

    def scale(
        self, min_workers: int, max_workers: int, *, grace: float | None = None
    ) -> list[WorkerSupervisor]:
        """Set min/max and start or retire workers; returns the workers started. ``grace`` is
        how long a retired busy worker may finish its batch before it is re-queued (None:
        as long as it takes)."""
        self.settings = replace(self.settings, min_workers=min_workers, max_workers=max_workers)
        assert self._nursery is not None, "scale() before run() started"
        live = self.live_workers()
        started: list[WorkerSupervisor] = []
        if len(live) < min_workers:
            # Workers that gave up (or stopped) are replaced, not kept: describe lists only
            # the current ones.
            self.workers[:] = [
                w for w in self.workers if w.state not in (WorkerState.STOPPED, WorkerState.FAILED)
            ]
            for _ in range(min_workers - len(live)):
                worker = WorkerSupervisor(self, self._next_worker_id(), self._next_gpu_id())
                self.workers.append(worker)
                self._nursery.start_soon(worker.run)
                started.append(worker)
        elif len(live) > max_workers:
            for worker in reversed(live[max_workers:]):
                worker.retire(grace)
        return started

    def worker_stopped(self, worker: WorkerSupervisor) -> None:
        if worker.state is WorkerState.STOPPED and worker.retiring and worker in self.workers:
            self.workers.remove(worker)
        if not self.live_workers():
            # Nobody left to serve the queue: answer the waiting jobs now instead of leaving
            # them to hang.
            self._fail_leftovers(ServiceUnavailable(no_worker_message(self.name, None)))

    async def wait_workers(self, workers: list[WorkerSupervisor]) -> tuple[int, int]:
        """Wait until each worker's first load settles; returns (ready, failed)."""
        for worker in workers:
            await worker.loaded.wait()
        ready = sum(1 for w in workers if w.state in (WorkerState.READY, WorkerState.BUSY))
        return ready, len(workers) - ready

    async def drain(self) -> None:
        """Wait until the queue is empty and no batch is in flight."""
        while True:
            stats = self.statistics()
            if stats.queued == 0 and stats.in_flight == 0:
                return
            await trio.sleep(0.01)
