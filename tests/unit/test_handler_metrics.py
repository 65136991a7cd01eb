"""``context.metrics`` (contract §3.4): the calls, their defaults and errors, and the records the
worker ships in each batch result."""

from __future__ import annotations

import pytest

from backend.metric_types import (
    Dimension,
    MetricsCacheKeyError,
    MetricsCacheValueError,
    MetricTypes,
)
from backend.metrics import MetricRecord, MetricsCache


def cache() -> MetricsCache:
    metrics = MetricsCache("mnist")
    metrics.request_ids = {0: "r0", 1: "r1"}
    return metrics


def only(metrics: MetricsCache) -> MetricRecord:
    records = metrics.drain()
    assert len(records) == 1, records
    return records[0]


def test_add_counter_defaults() -> None:
    metrics = cache()
    metrics.add_counter("InferenceCount", 2, idx=1, dimensions=[Dimension("Shard", "a")])
    assert only(metrics) == MetricRecord(
        "InferenceCount",
        "Count",
        2.0,
        (("Shard", "a"), ("ModelName", "mnist"), ("Level", "Model")),
        "counter",
        "r1",
    )


def test_no_request_id_means_level_error_and_none_means_the_whole_batch() -> None:
    metrics = cache()
    metrics.add_percent("Util", 50.0)  # idx None: every request of the batch
    record = only(metrics)
    assert (record.request_id, record.unit, record.metric_type) == ("r0,r1", "Percent", "gauge")
    metrics.request_ids = {}
    metrics.add_percent("Util", 50.0)
    assert dict(only(metrics).dimensions)["Level"] == "Error"


def test_negative_counter_is_dropped() -> None:
    metrics = cache()
    metrics.add_counter("C", -1)
    assert metrics.drain() == []


@pytest.mark.parametrize(
    ("call", "unit", "shown"),
    [
        ("add_time", "ms", "Milliseconds"),
        ("add_time", "s", "Seconds"),
        ("add_size", "MB", "Megabytes"),
        ("add_size", "kB", "Kilobytes"),
        ("add_size", "GB", "Gigabytes"),
        ("add_size", "B", "Bytes"),
    ],
)
def test_time_and_size_units(call: str, unit: str, shown: str) -> None:
    metrics = cache()
    getattr(metrics, call)("M", 1.5, 0, unit)
    record = only(metrics)
    assert (record.unit, record.metric_type, record.request_id) == (shown, "gauge", "r0")


def test_bad_units_are_refused() -> None:
    metrics = cache()
    with pytest.raises(MetricsCacheValueError):
        metrics.add_time("T", 1, unit="min")
    with pytest.raises(ValueError, match="TB"):
        metrics.add_size("S", 1, unit="TB")


def test_add_metric_with_a_type_enum_and_histograms() -> None:
    metrics = cache()
    metrics.add_metric("Lat", 3, "ms", 0, metric_type=MetricTypes.HISTOGRAM)
    assert only(metrics).metric_type == "histogram"
    with pytest.raises(MetricsCacheValueError):
        metrics.add_metric("Lat", 3, "ms", 0, metric_type="summary")


def test_add_error_is_a_level_error_counter() -> None:
    metrics = cache()
    metrics.add_error("Failures", 1, [Dimension("Level", "Model")])
    record = only(metrics)
    assert record.metric_type == "counter"
    assert record.unit == "unit"
    assert dict(record.dimensions)["Level"] == "Error"


def test_declared_metric_add_or_update_and_update() -> None:
    metrics = cache()
    declared = metrics.add_metric_to_cache("Hits", "count", ["ModelName", "Shard"])
    assert metrics.get_metric("Hits") is declared
    assert metrics.get_metric("Hits", MetricTypes.COUNTER) is declared
    declared.add_or_update(1, ["mnist", "a"], "r0")
    declared.update(2, "r1", [Dimension("Shard", "b"), Dimension("ModelName", "mnist")])
    assert metrics.drain() == [
        MetricRecord(
            "Hits", "Count", 1.0, (("ModelName", "mnist"), ("Shard", "a")), "counter", "r0"
        ),
        MetricRecord(
            "Hits", "Count", 2.0, (("ModelName", "mnist"), ("Shard", "b")), "counter", "r1"
        ),
    ]
    with pytest.raises(MetricsCacheValueError):
        declared.add_or_update(1, ["only-one"])
    with pytest.raises(MetricsCacheValueError):
        declared.update(1, dimensions=[Dimension("Shard", "a")])


def test_get_metric_of_an_undeclared_name_or_type_raises() -> None:
    metrics = cache()
    metrics.add_metric_to_cache("G", "ms", [], MetricTypes.GAUGE)
    with pytest.raises(MetricsCacheKeyError):
        metrics.get_metric("G")  # declared as a gauge, asked for as a counter
    with pytest.raises(KeyError):
        metrics.get_metric("Nope", "gauge")


def test_redeclaring_overrides() -> None:
    metrics = cache()
    metrics.add_metric_to_cache("X", "ms", ["A"], "gauge")
    second = metrics.add_metric_to_cache("X", "s", ["B"], "gauge")
    assert metrics.get_metric("X", "gauge") is second
    assert second.unit == "Seconds"


def test_the_cache_is_prefilled_from_the_yaml_model_metrics() -> None:
    metrics = cache()
    metrics.prefill(
        [
            {
                "name": "HandlerTime",
                "unit": "ms",
                "type": "gauge",
                "dimensions": ["ModelName", "Level"],
            }
        ]
    )
    handler_time = metrics.get_metric("HandlerTime", MetricTypes.GAUGE)
    assert handler_time.dimension_names == ["ModelName", "Level"]
    handler_time.add_or_update(4.5, ["mnist", "Model"], "r0")
    assert only(metrics).unit == "Milliseconds"
