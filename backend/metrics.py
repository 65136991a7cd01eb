"""The handler-side metrics API (contract §3.4): ``context.metrics``.

Handlers record through it; the worker loop drains the records after each batch and ships them
to the frontend in the batch result, which exports them (``trioserve/metrics/``). The cache is
pre-filled from the metrics YAML's ``model_metrics`` (sent in the Load frame), so ``get_metric``
finds what the YAML declares, as in TorchServe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.metric_types import MetricsCacheKeyError, MetricsCacheValueError

logger = logging.getLogger(__name__)

UNIT_NAMES = {
    "ms": "Milliseconds",
    "s": "Seconds",
    "percent": "Percent",
    "count": "Count",
    "MB": "Megabytes",
    "GB": "Gigabytes",
    "kB": "Kilobytes",
    "B": "Bytes",
    "": "unit",
}
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
_TYPES = (COUNTER, GAUGE, HISTOGRAM)
TIME_UNITS = ("ms", "s")
SIZE_UNITS = ("MB", "kB", "GB", "B")


def _type_name(metric_type: object) -> str:
    """A metric type given as ``MetricTypes.GAUGE`` (anything with ``value``) or as text."""
    name = str(getattr(metric_type, "value", metric_type)).lower()
    if name not in _TYPES:
        raise MetricsCacheValueError(f"metric type {metric_type!r} is not one of {_TYPES}")
    return name


def _unit_name(unit: str | None) -> str:
    return UNIT_NAMES.get(unit or "", unit or "unit")


@dataclass(frozen=True)
class MetricRecord:
    name: str
    unit: str
    value: float
    dimensions: tuple[tuple[str, str], ...]
    metric_type: str
    request_id: str


class CachingMetric:
    """A declared metric (``add_metric_to_cache``, or the YAML): emit values with
    ``add_or_update`` (dimension values in the declared order) or ``update`` (``Dimension``
    objects)."""

    def __init__(
        self,
        cache: MetricsCache,
        metric_name: str,
        unit: str,
        dimension_names: Sequence[str],
        metric_type: str,
    ) -> None:
        self._cache = cache
        self.metric_name = metric_name
        self.unit = _unit_name(unit)
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type

    def add_or_update(
        self, value: float, dimension_values: Sequence[str] = (), request_id: str = ""
    ) -> None:
        """Raises MetricsCacheValueError: ``dimension_values`` does not match the declared
        dimension names one for one."""
        if len(dimension_values) != len(self.dimension_names):
            raise MetricsCacheValueError(
                f"metric {self.metric_name} has dimensions {self.dimension_names}; "
                f"got values {list(dimension_values)}"
            )
        pairs = tuple(zip(self.dimension_names, map(str, dimension_values), strict=True))
        self._cache._emit(self, float(value), pairs, request_id)

    def update(self, value: float, request_id: str = "", dimensions: Iterable[Any] = ()) -> None:
        """Raises MetricsCacheValueError: a declared dimension is missing from ``dimensions``."""
        given = dict(_pairs(dimensions))
        missing = [n for n in self.dimension_names if n not in given]
        if missing:
            raise MetricsCacheValueError(
                f"metric {self.metric_name}: no value for dimensions {missing}"
            )
        self.add_or_update(value, [given[n] for n in self.dimension_names], request_id)


def _pairs(dimensions: Iterable[Any] | None) -> list[tuple[str, str]]:
    """Dimensions given as ``Dimension`` objects (``name``/``value``) or (name, value) tuples."""
    out: list[tuple[str, str]] = []
    for dim in dimensions or []:
        name = getattr(dim, "name", None)
        value = getattr(dim, "value", None)
        if name is None and isinstance(dim, tuple) and len(dim) == 2:
            name, value = dim
        if name is not None:
            out.append((str(name), str(value)))
    return out


@dataclass
class MetricsCache:
    model_name: str
    request_ids: dict[int, str] = field(default_factory=dict)
    records: list[MetricRecord] = field(default_factory=list)
    cache: dict[tuple[str, str], CachingMetric] = field(default_factory=dict)

    # -- declared metrics ----------------------------------------------------------------------
    def prefill(self, declared: Iterable[dict[str, Any]]) -> None:
        """Declare the YAML's model metrics (``{name, unit, type, dimensions}`` each)."""
        for item in declared:
            self.add_metric_to_cache(
                str(item["name"]),
                str(item.get("unit") or ""),
                [str(d) for d in item.get("dimensions") or []],
                str(item.get("type") or COUNTER),
            )

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: Sequence[str] = (),
        metric_type: object = COUNTER,
    ) -> CachingMetric:
        """Declare (or re-declare: the new one wins) a metric and return it."""
        name = _type_name(metric_type)
        metric = CachingMetric(self, metric_name, unit, dimension_names, name)
        self.cache[(metric_name, name)] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: object = COUNTER) -> CachingMetric:
        """Raises MetricsCacheKeyError: no metric of that name and type is declared."""
        key = (metric_name, _type_name(metric_type))
        metric = self.cache.get(key)
        if metric is None:
            raise MetricsCacheKeyError(f"metric {key[1]} {metric_name} is not in the cache")
        return metric

    def _emit(
        self,
        metric: CachingMetric,
        value: float,
        dimensions: tuple[tuple[str, str], ...],
        request_id: str,
    ) -> None:
        if metric.metric_type == COUNTER and value < 0:
            logger.error("counter %s cannot be decremented (value %s)", metric.metric_name, value)
            return
        self.records.append(
            MetricRecord(
                metric.metric_name, metric.unit, value, dimensions, metric.metric_type, request_id
            )
        )

    # -- the convenience calls -----------------------------------------------------------------
    def _request_id(self, idx: int | None) -> str:
        if idx is None:
            return ",".join(self.request_ids.values())
        return self.request_ids.get(idx, "")

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str,
        idx: int | None = None,
        dimensions: list[Any] | None = None,
        metric_type: object = COUNTER,
    ) -> None:
        """Emit ``name`` with ``dimensions`` plus the defaults: ModelName, and Level=Model (or
        Level=Error when no request id is known). Declares the metric on first use."""
        request_id = self._request_id(idx)
        pairs = _pairs(dimensions)
        names = {n for n, _ in pairs}
        if "ModelName" not in names:
            pairs.append(("ModelName", self.model_name))
        if "Level" not in names:
            pairs.append(("Level", "Model" if request_id else "Error"))
        type_name = _type_name(metric_type)
        metric = self.cache.get((name, type_name))
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, [n for n, _ in pairs], type_name)
        self._emit(metric, float(value), tuple(pairs), request_id)

    def add_counter(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[Any] | None = None,
    ) -> None:
        self.add_metric(name, value, "count", idx, dimensions, COUNTER)

    def add_time(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "ms",
        dimensions: list[Any] | None = None,
        metric_type: object = GAUGE,
    ) -> None:
        """Raises MetricsCacheValueError: ``unit`` is not ms or s."""
        if unit not in TIME_UNITS:
            raise MetricsCacheValueError(
                f"the unit for a timed metric should be one of {list(TIME_UNITS)}, not {unit}"
            )
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_size(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "MB",
        dimensions: list[Any] | None = None,
        metric_type: object = GAUGE,
    ) -> None:
        """Raises ValueError (a MetricsCacheValueError): ``unit`` is not MB, kB, GB or B."""
        if unit not in SIZE_UNITS:
            raise MetricsCacheValueError(
                f"the unit for a size metric should be one of {list(SIZE_UNITS)}, not {unit}"
            )
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[Any] | None = None,
        metric_type: object = GAUGE,
    ) -> None:
        self.add_metric(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float, dimensions: list[Any] | None = None) -> None:
        """An error counter: Level=Error, no unit."""
        pairs = [p for p in _pairs(dimensions) if p[0] != "Level"] + [("Level", "Error")]
        self.add_metric(name, value, "", None, pairs, COUNTER)

    def drain(self) -> list[MetricRecord]:
        records, self.records = self.records, []
        return records
