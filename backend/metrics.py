"""A handler-side metrics cache (contract §3.4, the core of it).

Handlers record metrics through ``context.metrics``; the worker loop drains the records after
each batch and ships them to the frontend in the batch result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class MetricRecord:
    name: str
    unit: str
    value: float
    dimensions: tuple[tuple[str, str], ...]
    metric_type: str
    request_id: str


@dataclass
class MetricsCache:
    model_name: str
    request_ids: dict[int, str] = field(default_factory=dict)
    records: list[MetricRecord] = field(default_factory=list)

    def _dims(self, dimensions: list[object] | None, level: str) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        for dim in dimensions or []:
            name = getattr(dim, "name", None)
            value = getattr(dim, "value", None)
            if name is None and isinstance(dim, tuple) and len(dim) == 2:
                name, value = dim
            if name is not None:
                out.append((str(name), str(value)))
        names = {n for n, _ in out}
        if "ModelName" not in names:
            out.append(("ModelName", self.model_name))
        if "Level" not in names:
            out.append(("Level", level))
        return tuple(out)

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str,
        idx: int | None = None,
        dimensions: list[object] | None = None,
        metric_type: str = COUNTER,
    ) -> None:
        if idx is None:
            request_id = ",".join(self.request_ids.values())
        else:
            request_id = self.request_ids.get(idx, "")
        level = "Model" if request_id else "Error"
        metric_type = getattr(metric_type, "value", metric_type)
        self.records.append(
            MetricRecord(
                name,
                UNIT_NAMES.get(unit, unit),
                float(value),
                self._dims(dimensions, level),
                str(metric_type),
                request_id,
            )
        )

    def add_counter(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[object] | None = None,
    ) -> None:
        if value < 0:
            return  # counters only go up; TorchServe logs and drops a negative update
        self.add_metric(name, value, "count", idx, dimensions, COUNTER)

    def add_time(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "ms",
        dimensions: list[object] | None = None,
        metric_type: str = GAUGE,
    ) -> None:
        if unit not in ("ms", "s"):
            raise ValueError(
                f"the unit for a timed metric should be one of ['ms', 's'], not {unit}"
            )
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_size(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "MB",
        dimensions: list[object] | None = None,
        metric_type: str = GAUGE,
    ) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError(
                f"the unit for a size metric should be one of MB, kB, GB, B, not {unit}"
            )
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[object] | None = None,
        metric_type: str = GAUGE,
    ) -> None:
        self.add_metric(name, value, "percent", idx, dimensions, metric_type)

    def drain(self) -> list[MetricRecord]:
        records, self.records = self.records, []
        return records
