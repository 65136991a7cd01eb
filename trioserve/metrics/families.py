"""Metric families: the values behind ``/metrics``, turned into prometheus-client families.

A family keeps its own series (label pairs -> value or histogram state) instead of using
prometheus-client's ``Counter``/``Gauge`` objects, because its labels come from the metrics YAML
or from a handler at run time, and because exposed names must be exactly TorchServe's:
prometheus-client's text format appends ``_total`` to every counter family. So a counter whose
name already ends in ``_total`` is a ``CounterMetricFamily`` (exposed under that very name) and
any other counter, ``Requests2XX`` say, is exposed as a gauge holding the running total.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trioserve.metrics.spec import COUNTER, GAUGE, HISTOGRAM

if TYPE_CHECKING:
    from prometheus_client.core import Metric

logger = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

# One family holds at most this many series; a handler labelling by request id would otherwise
# grow the frontend's memory, and every scrape, without bound. Later series are dropped.
MAX_SERIES_PER_FAMILY = 10_000
# prometheus-client's defaults (seconds, or whatever unit a declared histogram records in).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_BAD_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(text: str) -> str:
    """``text`` as a valid Prometheus metric name (invalid characters become ``_``)."""
    name = _BAD_NAME.sub("_", text) or "_"
    return "_" + name if name[0].isdigit() else name


def label_name(text: str) -> str:
    """``text`` as a valid Prometheus label name (``__`` prefixes are reserved)."""
    name = _BAD_LABEL.sub("_", text) or "_"
    if name[0].isdigit():
        name = "_" + name
    return "x" + name if name.startswith("__") else name


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    def observe(self, value: float) -> None:
        # Bucket i counts values <= bounds[i]; the last slot is +Inf.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass
class Family:
    """One metric family. ``record`` adds to a counter, sets a gauge, observes a histogram."""

    name: str
    metric_type: str
    documentation: str
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    values: dict[Labels, float] = field(default_factory=dict)
    histograms: dict[Labels, _Histogram] = field(default_factory=dict)
    _warned: bool = field(default=False, repr=False)

    def _room_for(self, labels: Labels, series: Mapping[Labels, object]) -> bool:
        if labels in series or len(series) < MAX_SERIES_PER_FAMILY:
            return True
        if not self._warned:
            self._warned = True
            logger.warning(
                "metric %s reached %d series; new label values are dropped",
                self.name,
                MAX_SERIES_PER_FAMILY,
            )
        return False

    def record(self, labels: Labels, value: float) -> None:
        if math.isnan(value):
            return
        if self.metric_type == HISTOGRAM:
            if not self._room_for(labels, self.histograms):
                return
            state = self.histograms.get(labels)
            if state is None:
                state = _Histogram(self.buckets, [0] * (len(self.buckets) + 1))
                self.histograms[labels] = state
            state.observe(value)
        elif self._room_for(labels, self.values):
            if self.metric_type == COUNTER:
                if value < 0:
                    return  # counters only go up (TorchServe drops a negative update too)
                self.values[labels] = self.values.get(labels, 0.0) + value
            else:
                self.values[labels] = value

    def set_all(self, values: dict[Labels, float]) -> None:
        """Replace every series (gauges read live at scrape time)."""
        self.values = values

    def to_prometheus(self) -> Metric:
        """The prometheus-client family, its samples in recording order."""
        # Only a scrape gets here: see registry.py on importing prometheus-client lazily.
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        family: Metric
        if self.metric_type == HISTOGRAM:
            family = HistogramMetricFamily(self.name, self.documentation)
            for labels, state in self.histograms.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*state.bounds, math.inf), state.counts, strict=True):
                    cumulative += count
                    buckets.append(
                        ("+Inf" if bound == math.inf else repr(bound), float(cumulative))
                    )
                _add_histogram(family, labels, buckets, state.total)
            return family
        if self.metric_type == COUNTER and self.name.endswith("_total"):
            family = CounterMetricFamily(self.name, self.documentation)
            sample = family.name + "_total"
        else:
            family = GaugeMetricFamily(self.name, self.documentation)
            sample = self.name
        for labels, value in self.values.items():
            family.add_sample(sample, {label_name(k): v for k, v in labels}, value)
        return family


def _add_histogram(
    family: Metric, labels: Labels, buckets: Sequence[tuple[str, float]], total: float
) -> None:
    base = {label_name(k): v for k, v in labels}
    for bound, count in buckets:
        family.add_sample(family.name + "_bucket", {**base, "le": bound}, count)
    family.add_sample(family.name + "_count", base, buckets[-1][1])
    family.add_sample(family.name + "_sum", base, total)


def family_for(name: str, metric_type: str, documentation: str) -> Family:
    """A family for ``name`` (made a valid metric name) of a declared type."""
    if metric_type not in (COUNTER, GAUGE, HISTOGRAM):
        raise ValueError(f"unknown metric type {metric_type!r}")
    return Family(metric_name(name), metric_type, documentation)
