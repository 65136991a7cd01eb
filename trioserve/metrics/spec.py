"""The metrics YAML (contract §3.2): which metrics exist, with their type, unit and dimensions.

Sans-IO apart from :func:`load_spec`, which reads the file. The layout is TorchServe's:
``dimensions:`` (a list, there for YAML anchors), then ``ts_metrics:`` (the frontend's) and
``model_metrics:`` (the handlers'), each mapping ``counter``/``gauge``/``histogram`` to a list of
``{name, unit, dimensions}``. The default file ships in this package (``metrics.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from trioserve.errors import ConfigError

DEFAULT_METRICS_YAML = Path(__file__).with_name("metrics.yaml")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
TYPES = (COUNTER, GAUGE, HISTOGRAM)
# A metrics YAML is a short list of declarations; anything near this is not one.
MAX_SPEC_BYTES = 1 << 20


@dataclass(frozen=True)
class MetricSpec:
    name: str
    metric_type: str  # counter, gauge or histogram
    unit: str
    dimensions: tuple[str, ...] = ()


def _empty() -> Mapping[Any, MetricSpec]:
    return MappingProxyType({})


@dataclass(frozen=True)
class MetricsSpec:
    """The declared metrics: frontend ones by name, model ones by (name, type), as TorchServe
    keys its caches (a handler's gauge ``Foo`` is not the YAML's counter ``Foo``)."""

    frontend: Mapping[str, MetricSpec] = field(default_factory=_empty)
    model: Mapping[tuple[str, str], MetricSpec] = field(default_factory=_empty)
    source: str = "(built-in)"

    def model_metrics_json(self) -> str:
        """The ``model_metrics`` section for the worker's Load frame: the handler-side cache is
        pre-filled from it, so ``get_metric`` finds what the YAML declares."""
        return json.dumps(
            [
                {"name": s.name, "unit": s.unit, "type": s.metric_type, "dimensions": s.dimensions}
                for s in self.model.values()
            ]
        )


def _entries(section: object, where: str) -> list[MetricSpec]:
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of counter/gauge/histogram to lists")
    out: list[MetricSpec] = []
    for metric_type, items in section.items():
        if metric_type not in TYPES:
            raise ConfigError(
                f"{where}: unknown metric type {metric_type!r} (expected one of {', '.join(TYPES)})"
            )
        if items is None:
            continue
        if not isinstance(items, list):
            raise ConfigError(f"{where}.{metric_type}: expected a list of metrics")
        for index, item in enumerate(items):
            at = f"{where}.{metric_type}[{index}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{at}: expected a mapping with name, unit and dimensions")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{at}: 'name' must be a non-empty string, not {name!r}")
            unit = item.get("unit")
            if unit is not None and not isinstance(unit, str):
                raise ConfigError(f"{at} ({name}): 'unit' must be a string, not {unit!r}")
            dims = item.get("dimensions") or []
            if not isinstance(dims, list) or not all(isinstance(d, str) and d for d in dims):
                raise ConfigError(f"{at} ({name}): 'dimensions' must be a list of names")
            out.append(MetricSpec(name, metric_type, unit or "", tuple(dims)))
    return out


def parse_spec(text: str, source: str) -> MetricsSpec:
    """The metrics declared by a YAML text read from ``source``.

    Raises:
        ConfigError: the text is not YAML, or a declaration is malformed; the message names
            ``source`` and the entry.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"metrics_config {source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"metrics_config {source}: expected a mapping at the top level")
    frontend: dict[str, MetricSpec] = {}
    for spec in _entries(data.get("ts_metrics"), f"metrics_config {source}: ts_metrics"):
        if spec.name in frontend:
            raise ConfigError(f"metrics_config {source}: ts_metrics declares {spec.name} twice")
        frontend[spec.name] = spec
    model: dict[tuple[str, str], MetricSpec] = {}
    for spec in _entries(data.get("model_metrics"), f"metrics_config {source}: model_metrics"):
        model[(spec.name, spec.metric_type)] = spec
    return MetricsSpec(MappingProxyType(frontend), MappingProxyType(model), source)


def load_spec(path: str | None) -> MetricsSpec:
    """The metrics YAML at ``path`` (the ``metrics_config`` key), or the built-in one for None.

    Raises:
        ConfigError: the file is missing, too large or malformed.
    """
    file = Path(path) if path else DEFAULT_METRICS_YAML
    try:
        if file.stat().st_size > MAX_SPEC_BYTES:
            raise ConfigError(f"metrics_config {file}: larger than {MAX_SPEC_BYTES} bytes")
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"metrics_config {file}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"metrics_config {file}: not UTF-8 text") from None
    return parse_spec(text, str(file) if path else "(built-in)")
