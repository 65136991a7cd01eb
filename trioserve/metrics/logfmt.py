"""TorchServe's metric log lines (contract §3.3), for ``metrics_mode=log`` (and ``legacy``).

Frontend metrics go to the ``trioserve.metrics`` logger (TorchServe's ``ts_metrics.log``)::

    Requests2XX.Count:1.0|#Level:Host|#hostname:myhost,timestamp:1717105563

model (handler) metrics to ``trioserve.model_metrics`` (``model_metrics.log``), in the worker's
``[METRICS]`` line form without that prefix::

    HandlerTime.Milliseconds:0.02|#ModelName:noop,Level:Model|#type:GAUGE|#hostname:h,1717105563,<ids>

Sans-IO: values in, text out; the caller logs it.
"""

from __future__ import annotations

from collections.abc import Iterable

# The host is its own field of the line, not one of the dimensions.
_HOST_DIMENSIONS = frozenset({"Hostname", "hostname"})


def _value(value: float) -> str:
    return repr(float(value))  # 1.0, 290371.129: as Java's Double.toString for ordinary values


def _dimensions(dimensions: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}:{v}" for k, v in dimensions if k not in _HOST_DIMENSIONS)


def frontend_line(
    name: str,
    unit: str,
    value: float,
    dimensions: Iterable[tuple[str, str]],
    hostname: str,
    timestamp: float,
) -> str:
    """A ``ts_metrics`` line; ``timestamp`` in seconds (written as whole seconds)."""
    dims = _dimensions(dimensions)
    return f"{name}.{unit}:{_value(value)}|#{dims}|#hostname:{hostname},timestamp:{int(timestamp)}"


def model_line(
    name: str,
    unit: str,
    value: float,
    dimensions: Iterable[tuple[str, str]],
    metric_type: str,
    hostname: str,
    timestamp: float,
    request_ids: str = "",
) -> str:
    """A ``model_metrics`` line; ``request_ids`` comma-joined, omitted when empty."""
    dims = _dimensions(dimensions)
    tail = f",{request_ids}" if request_ids else ""
    return (
        f"{name}.{unit}:{_value(value)}|#{dims}|#type:{metric_type.upper()}"
        f"|#hostname:{hostname},{int(timestamp)}{tail}"
    )
