"""One server's metrics: the families behind ``/metrics``, the log-mode lines, and the hooks the
HTTP layer, the inference API and the model versions call.

What is recorded where (``metrics_mode``):

- ``prometheus`` (the default, as the TorchServe docs say): every metric the metrics YAML
  declares is exposed, plus trioserve's own (:data:`EXTRA_HELP`); nothing is logged.
- ``log``: YAML metrics become log lines (``trioserve.metrics``, ``trioserve.model_metrics``) and
  ``/metrics`` answers an empty body.
- ``legacy``: only the three ``ts_*`` counters and trioserve's own are exposed; the rest logged.

One object per server (made in ``serve()``, kept on ``ServerState``), so two servers in one
process never share a counter. Everything runs on the Trio thread: no locks.
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from backend.wire import pb
from trioserve.metrics import logfmt
from trioserve.metrics.families import Family, Labels, family_for, label_name
from trioserve.metrics.spec import COUNTER, GAUGE, HISTOGRAM, MetricSpec, MetricsSpec, load_spec

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# prometheus-client (with the http.server, wsgiref and urllib.request it imports: ~3 MiB) is
# imported at the first scrape, not at start-up: a server whose metrics API is off, or in log
# mode, never needs it. Collectors are duck-typed there (``collect()``), so no base class.

frontend_log = logging.getLogger("trioserve.metrics")
model_log = logging.getLogger("trioserve.model_metrics")
logger = logging.getLogger(__name__)

# Contract §0.2; prometheus-client's own default is now its 1.0.0 text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROMETHEUS, LOG, LEGACY = "prometheus", "log", "legacy"
LEGACY_NAMES = frozenset(
    {
        "ts_inference_requests_total",
        "ts_inference_latency_microseconds",
        "ts_queue_latency_microseconds",
    }
)
# The docs' help texts for the three ts_* families; the others follow TorchServe's pattern.
DOCS_HELP = {
    "ts_inference_requests_total": "Total number of inference requests.",
    "ts_inference_latency_microseconds": "Cumulative inference duration in microseconds",
    "ts_queue_latency_microseconds": "Cumulative queue duration in microseconds",
}
# Handler metric families a server may auto-detect (model_metrics_auto_detect=true): each one is
# kept for the server's life, so a handler inventing names per request cannot grow it forever.
MAX_MODEL_FAMILIES = 1000
# Distinct emit() argument sets whose recording target is kept (models x versions x metrics,
# in practice); past it, targets are worked out per call.
MAX_EMIT_KEYS = 4096

# trioserve's own families (beyond TorchServe): (name, type, help); labels model_name and
# model_version (the served version, never "default").
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_WAIT = "trioserve_queue_wait_seconds"
HANDLER_TIME = "trioserve_handler_seconds"
REQUEST_TIME = "trioserve_request_seconds"
BATCH_SIZE = "trioserve_batch_size"
RESTARTS = "trioserve_worker_restarts_total"
QUEUE_DEPTH = "trioserve_queue_depth"
WORKERS_BUSY = "trioserve_workers_busy"
WORKERS_IDLE = "trioserve_workers_idle"
EXTRA_HELP: dict[str, tuple[str, str]] = {
    QUEUE_WAIT: (HISTOGRAM, "Time a request waited in its model's queue for a worker, in seconds."),
    HANDLER_TIME: (HISTOGRAM, "Time the handler took per batch (its PredictionTime), in seconds."),
    REQUEST_TIME: (HISTOGRAM, "Time from queueing a prediction to its response, in seconds."),
    BATCH_SIZE: (HISTOGRAM, "Requests per batch sent to a worker."),
    RESTARTS: (COUNTER, "Worker process restarts, by reason (failure or recycle)."),
    QUEUE_DEPTH: (GAUGE, "Requests queued for a model version and not yet sent to a worker."),
    WORKERS_BUSY: (GAUGE, "Workers of a model version running a batch."),
    WORKERS_IDLE: (GAUGE, "Workers of a model version loaded and waiting for work."),
}


class _Statistics(Protocol):
    @property
    def queued(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def workers(self) -> Mapping[str, int]: ...


class VersionView(Protocol):
    """What the live gauges read from a model version (``ModelVersion`` is one)."""

    name: str
    version: str

    def statistics(self) -> _Statistics: ...


def _help(spec: MetricSpec) -> str:
    return DOCS_HELP.get(
        spec.name, f"Torchserve prometheus {spec.metric_type} metric with unit: {spec.unit}"
    )


class ServerMetrics:
    """The server's metric families, and a prometheus-client collector over them."""

    def __init__(
        self,
        spec: MetricsSpec | None = None,
        *,
        mode: str = PROMETHEUS,
        hostname: str | None = None,
        auto_detect: bool = False,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec if spec is not None else load_spec(None)
        self.mode = mode
        self.hostname = hostname if hostname is not None else platform.node()
        self.instance_id = instance_id if instance_id is not None else str(uuid.uuid4())
        self.auto_detect = auto_detect
        self._clock = clock
        self._versions: Callable[[], Iterable[VersionView]] = list
        self._emitting: dict[tuple[object, ...], tuple[Family | None, Labels, str, bool]] = {}
        # Families without samples still print HELP/TYPE, as TorchServe's do.
        self.frontend: dict[str, Family] = {
            name: family_for(name, s.metric_type, _help(s))
            for name, s in self.spec.frontend.items()
            if self._exposes(name)
        }
        self.model: dict[tuple[str, str], Family] = {}
        self.extra: dict[str, Family] = {}
        for name, (metric_type, text) in EXTRA_HELP.items():
            family = family_for(name, metric_type, text)
            if name == BATCH_SIZE:
                family.buckets = tuple(float(b) for b in BATCH_BUCKETS)
            elif metric_type == HISTOGRAM:
                family.buckets = tuple(float(b) for b in LATENCY_BUCKETS_S)
            self.extra[name] = family

    # -- what goes where -------------------------------------------------------------------
    def _exposes(self, name: str) -> bool:
        return self.mode == PROMETHEUS or (self.mode == LEGACY and name in LEGACY_NAMES)

    def _logs(self, name: str) -> bool:
        return self.mode == LOG or (self.mode == LEGACY and name not in LEGACY_NAMES)

    def watch(self, versions: Callable[[], Iterable[VersionView]]) -> None:
        """Read queue depth and worker gauges from ``versions()`` at each scrape."""
        self._versions = versions

    def for_version(self, model_name: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model_name, version)

    # -- recording -----------------------------------------------------------------------------
    def emit(self, name: str, value: float, **dimensions: str) -> None:
        """Record frontend metric ``name`` if the YAML declares it: each declared dimension takes
        its value from ``dimensions``, else Level=Host, Hostname, uuid, else ""."""
        key = (name, *dimensions.items())
        found = self._emitting.get(key)
        if found is None:
            found = self._emit_target(name, dimensions)
            if len(self._emitting) < MAX_EMIT_KEYS:  # bounded, whatever the dimension values
                self._emitting[key] = found
        family, labels, unit, logs = found
        if family is not None:
            family.record(labels, value)
        if logs:
            frontend_log.info(
                logfmt.frontend_line(name, unit, value, labels, self.hostname, self._clock())
            )

    def _emit_target(
        self, name: str, dimensions: dict[str, str]
    ) -> tuple[Family | None, Labels, str, bool]:
        """Where ``emit(name, **dimensions)`` records: the family (if exposed), its labels, the
        unit and whether it is logged; the same every time for the same arguments, so
        ``emit`` keeps it (a metric is emitted several times per request)."""
        spec = self.spec.frontend.get(name)
        if spec is None:
            return None, (), "", False
        known = {"Level": "Host", "Hostname": self.hostname, "hostname": self.hostname}
        known["uuid"] = self.instance_id
        known.update(dimensions)
        labels = tuple((d, known.get(d, "")) for d in spec.dimensions)
        return self.frontend.get(name), labels, spec.unit, self._logs(name)

    def http_response(self, status: int) -> None:
        """Requests2XX / 4XX / 5XX: 5XX is anything neither 2xx nor 4xx (contract §3.2)."""
        kind = "2XX" if 200 <= status < 300 else "4XX" if 400 <= status < 500 else "5XX"
        self.emit(f"Requests{kind}", 1.0)

    def observe_extra(self, name: str, labels: Labels, value: float) -> None:
        if self.mode != LOG:
            self.extra[name].record(labels, value)

    def model_metric(self, metric: pb.Metric) -> None:
        """A handler's metric from a batch result: exposed when the YAML declares it (or
        ``model_metrics_auto_detect``), logged in log mode; Hostname is appended."""
        dims = [(d.name, d.value) for d in metric.dimensions]
        if not any(label_name(k) == "Hostname" for k, _ in dims):
            dims.append(("Hostname", self.hostname))
        metric_type = metric.type.lower() or COUNTER
        if self.mode != PROMETHEUS:
            model_log.info(
                logfmt.model_line(
                    metric.name,
                    metric.unit,
                    metric.value,
                    dims,
                    metric_type,
                    self.hostname,
                    self._clock(),
                    metric.request_id,
                )
            )
            return
        key = (metric.name, metric_type)
        family = self.model.get(key)
        if family is None:
            spec = self.spec.model.get(key)
            if spec is None and not self.auto_detect:
                return
            if metric_type not in (COUNTER, GAUGE, HISTOGRAM) or len(self.model) >= (
                MAX_MODEL_FAMILIES
            ):
                return
            unit = metric.unit or (spec.unit if spec else "")
            family = family_for(metric.name, metric_type, _help(MetricSpec("", metric_type, unit)))
            self.model[key] = family
        family.record(tuple(dims), metric.value)

    # -- exposition ------------------------------------------------------------------------------
    def _live(self) -> None:
        depth: dict[Labels, float] = {}
        busy: dict[Labels, float] = {}
        idle: dict[Labels, float] = {}
        for version in self._versions():
            stats = version.statistics()
            labels = (("model_name", version.name), ("model_version", version.version))
            depth[labels] = float(stats.queued)
            busy[labels] = float(stats.in_flight)
            idle[labels] = float(stats.workers.get("READY", 0))
        self.extra[QUEUE_DEPTH].set_all(depth)
        self.extra[WORKERS_BUSY].set_all(busy)
        self.extra[WORKERS_IDLE].set_all(idle)

    def families(self) -> Iterator[Family]:
        """Every exposed family (none in log mode)."""
        if self.mode == LOG:
            return
        self._live()
        yield from self.frontend.values()
        yield from self.model.values()
        yield from self.extra.values()

    def collect(self, names: Collection[str] | None = None) -> Iterable[Metric]:
        """prometheus-client's collector hook; ``names`` keeps only those families."""
        for family in self.families():
            if names is None or family.name in names:
                yield family.to_prometheus()

    def exposition(self, names: Collection[str] | None = None) -> bytes:
        """The text format body of ``/metrics`` (``names``: the ``name[]`` filter)."""
        if self.mode == LOG:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(_Only(self, frozenset(names) if names else None))


class _Only:
    def __init__(self, metrics: ServerMetrics, names: frozenset[str] | None) -> None:
        self._metrics = metrics
        self._names = names

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect(self._names)


class VersionMetrics:
    """The hooks of one model version, bound to its name and version; with no server, they
    record nothing (a ``ModelVersion`` built outside a server, as some tests do)."""

    def __init__(self, server: ServerMetrics | None, model_name: str, version: str) -> None:
        self.server = server
        self.model_name = model_name
        self.version = version
        self._labels: Labels = (("model_name", model_name), ("model_version", version))

    @property
    def model_metrics_json(self) -> str:
        return self.server.spec.model_metrics_json() if self.server is not None else ""

    def _ts(self, name: str, url_version: str | None, value: float) -> None:
        assert self.server is not None
        self.server.emit(
            name, value, model_name=self.model_name, model_version=url_version or "default"
        )

    def inference_request(self, url_version: str | None) -> None:
        """A prediction about to be queued (``url_version``: the version in the URL, if any)."""
        if self.server is not None:
            self._ts("ts_inference_requests_total", url_version, 1.0)

    def inference_done(self, url_version: str | None, seconds: float) -> None:
        """A prediction answered successfully, ``seconds`` after it was queued."""
        if self.server is not None:
            self._ts("ts_inference_latency_microseconds", url_version, seconds * 1e6)
            self.server.observe_extra(REQUEST_TIME, self._labels, seconds)

    def queue_wait(self, url_version: str | None, seconds: float) -> None:
        """A job left the queue for a worker after ``seconds``."""
        if self.server is not None:
            self._ts("ts_queue_latency_microseconds", url_version, seconds * 1e6)
            self.server.emit("QueueTime", seconds * 1000)
            self.server.observe_extra(QUEUE_WAIT, self._labels, seconds)

    def worker_loaded(self, worker_name: str, seconds: float) -> None:
        """A worker process started and loaded its model in ``seconds``."""
        if self.server is not None:
            self.server.emit("WorkerLoadTime", seconds * 1000, WorkerName=worker_name)

    def batch_done(self, size: int, seconds: float, metrics: Iterable[pb.Metric]) -> None:
        """A batch of ``size`` requests answered ``seconds`` after it was sent, with the
        handler's metrics; WorkerThreadTime is the part not spent in the handler."""
        if self.server is None:
            return
        prediction_ms: float | None = None
        for metric in metrics:
            if metric.name == "PredictionTime":
                prediction_ms = metric.value * (1000 if metric.unit == "Seconds" else 1)
            self.server.model_metric(metric)
        self.server.observe_extra(BATCH_SIZE, self._labels, float(size))
        if prediction_ms is not None:
            self.server.observe_extra(HANDLER_TIME, self._labels, prediction_ms / 1000)
        handler_ms = prediction_ms or 0.0
        self.server.emit("WorkerThreadTime", max(seconds * 1000 - handler_ms, 0.0))

    def worker_restarted(self, reason: str) -> None:
        """A worker's process is being replaced (``reason``: failure or recycle)."""
        if self.server is not None:
            self.server.observe_extra(RESTARTS, (*self._labels, ("reason", reason)), 1.0)
