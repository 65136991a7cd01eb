"""The value types of the handler metrics API (contract §3.4); inside workers also reachable as
``ts.metrics.dimension``, ``ts.metrics.metric_type_enum`` and ``ts.metrics.metric_cache_errors``.

``backend.metrics.MetricsCache`` reads any object with ``name`` / ``value`` as a dimension and
any object with ``value`` as a metric type, so these are what a TorchServe handler passes.
"""

from __future__ import annotations

import enum


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """One ``name:value`` dimension of a metric."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def __repr__(self) -> str:
        return f"Dimension({self.name!r}, {self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dimension) and (self.name, self.value) == (
            other.name,
            other.value,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.value))

    def to_dict(self) -> dict[str, str]:
        return {"Name": self.name, "Value": self.value}


class MetricsCacheError(Exception):
    """A misuse of the metrics cache."""


class MetricsCacheTypeError(MetricsCacheError, TypeError):
    pass


class MetricsCacheValueError(MetricsCacheError, ValueError):
    pass


class MetricsCacheKeyError(MetricsCacheError, KeyError):
    pass
