"""The metrics YAML, the collectors behind /metrics and the log-mode lines, without a server."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backend.wire import pb
from tests.support.scrape import families, samples, series, value
from trioserve.errors import ConfigError
from trioserve.metrics import logfmt
from trioserve.metrics.families import MAX_SERIES_PER_FAMILY, Family, label_name, metric_name
from trioserve.metrics.registry import MAX_MODEL_FAMILIES, ServerMetrics
from trioserve.metrics.spec import DEFAULT_METRICS_YAML, load_spec, parse_spec

FRONTEND = {
    "Requests2XX",
    "Requests4XX",
    "Requests5XX",
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
    "QueueTime",
    "WorkerThreadTime",
    "WorkerLoadTime",
    "CPUUtilization",
    "MemoryUsed",
    "MemoryAvailable",
    "MemoryUtilization",
    "DiskUsage",
    "DiskUtilization",
    "DiskAvailable",
    "GPUMemoryUtilization",
    "GPUMemoryUsed",
    "GPUUtilization",
}
EXTRA = {
    "trioserve_queue_wait_seconds": "histogram",
    "trioserve_handler_seconds": "histogram",
    "trioserve_request_seconds": "histogram",
    "trioserve_batch_size": "histogram",
    "trioserve_worker_restarts_total": "counter",
    "trioserve_queue_depth": "gauge",
    "trioserve_workers_busy": "gauge",
    "trioserve_workers_idle": "gauge",
}
HOST = {"Level": "Host", "Hostname": "h"}


def server(**kwargs: object) -> ServerMetrics:
    return ServerMetrics(hostname="h", instance_id="U", clock=lambda: 1717105563.7, **kwargs)  # type: ignore[arg-type]


def metric(
    name: str, value: float, kind: str = "gauge", unit: str = "Milliseconds", **dims: str
) -> pb.Metric:
    return pb.Metric(
        name=name,
        unit=unit,
        value=value,
        type=kind,
        request_id="r1",
        dimensions=[pb.Header(name=k, value=v) for k, v in dims.items()],
    )


# -- the YAML -------------------------------------------------------------------------------------
def test_default_yaml_declares_the_contract_metrics() -> None:
    spec = load_spec(None)
    assert set(spec.frontend) == FRONTEND
    assert spec.frontend["WorkerLoadTime"].dimensions == ("WorkerName", "Level", "Hostname")
    assert spec.frontend["GPUUtilization"].dimensions == ("Level", "DeviceId", "Hostname")
    assert spec.frontend["Requests2XX"].metric_type == "counter"
    assert spec.frontend["QueueTime"].unit == "Milliseconds"
    # The docs' labels for the three ts_* counters.
    for name in ("ts_inference_requests_total", "ts_queue_latency_microseconds"):
        assert spec.frontend[name].dimensions == ("uuid", "model_name", "model_version")
    assert set(spec.model) == {("HandlerTime", "gauge"), ("PredictionTime", "gauge")}
    assert spec.model[("HandlerTime", "gauge")].dimensions == ("ModelName", "Level")
    assert DEFAULT_METRICS_YAML.name == "metrics.yaml"
    assert DEFAULT_METRICS_YAML.is_file()


def test_model_metrics_travel_to_the_worker_as_json() -> None:
    declared = json.loads(load_spec(None).model_metrics_json())
    assert {
        "name": "HandlerTime",
        "unit": "ms",
        "type": "gauge",
        "dimensions": ["ModelName", "Level"],
    } in declared


def test_yaml_anchors_and_a_custom_selection(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "dimensions:\n  - &level Level\n"
        "ts_metrics:\n  counter:\n    - name: Requests2XX\n      unit: Count\n"
        "      dimensions: [*level]\n"
        "model_metrics:\n  counter:\n    - name: InferenceCount\n      unit: count\n"
        "      dimensions: [ModelName]\n"
    )
    spec = load_spec(str(path))
    assert list(spec.frontend) == ["Requests2XX"]
    assert spec.frontend["Requests2XX"].dimensions == ("Level",)
    assert spec.model[("InferenceCount", "counter")].unit == "count"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("ts_metrics: [1]\n", "expected a mapping", id="section-not-mapping"),
        pytest.param("ts_metrics:\n  summary: []\n", "unknown metric type 'summary'", id="type"),
        pytest.param("ts_metrics:\n  gauge:\n    - unit: ms\n", "'name' must be", id="no-name"),
        pytest.param(
            "ts_metrics:\n  gauge:\n    - {name: A, dimensions: A}\n", "'dimensions'", id="dims"
        ),
        pytest.param(
            "ts_metrics:\n  gauge: [{name: A}]\n  counter: [{name: A}]\n", "A twice", id="twice"
        ),
        pytest.param("a: [\n", "not valid YAML", id="yaml"),
        pytest.param("- 1\n", "top level", id="top"),
    ],
)
def test_malformed_yaml_names_the_file_and_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics_config custom\.yaml") as caught:
        parse_spec(text, "custom.yaml")
    assert message in str(caught.value)


def test_missing_metrics_config_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_spec(str(tmp_path / "absent.yaml"))


# -- exposition -----------------------------------------------------------------------------------
def test_every_family_is_exposed_with_its_exact_name_before_any_sample() -> None:
    text = server().exposition().decode()
    types = families(text)
    assert set(types) == FRONTEND | set(EXTRA)
    # prometheus-client would expose a counter not ending in _total as <name>_total.
    assert types["ts_inference_requests_total"] == "counter"
    assert types["Requests2XX"] == types["ts_queue_latency_microseconds"] == "gauge"
    assert {k: types[k] for k in EXTRA} == EXTRA
    assert "# HELP ts_inference_requests_total Total number of inference requests.\n" in text
    assert "# HELP QueueTime Torchserve prometheus gauge metric with unit: Milliseconds\n" in text
    assert "_created" not in text
    assert samples(text) == {}


def test_requests_are_counted_by_status_class() -> None:
    metrics = server()
    for status in (200, 201, 204, 404, 400, 503, 500, 302, 507):
        metrics.http_response(status)
    text = metrics.exposition().decode()
    assert value(text, "Requests2XX", **HOST) == 3.0
    assert value(text, "Requests4XX", **HOST) == 2.0
    assert value(text, "Requests5XX", **HOST) == 4.0  # anything neither 2xx nor 4xx


def test_ts_counters_carry_the_docs_labels_and_move_by_the_amount() -> None:
    metrics = server()
    default = metrics.for_version("noop", "1.0")
    versioned = metrics.for_version("noopversioned", "1.11")
    for _ in range(3):
        default.inference_request(None)
        default.inference_done(None, 0.002)
        default.queue_wait(None, 0.0005)
    versioned.inference_request("1.11")
    text = metrics.exposition().decode()
    labels = {"uuid": "U", "model_name": "noop", "model_version": "default"}
    assert value(text, "ts_inference_requests_total", **labels) == 3.0
    assert value(text, "ts_inference_latency_microseconds", **labels) == pytest.approx(6000.0)
    assert value(text, "ts_queue_latency_microseconds", **labels) == pytest.approx(1500.0)
    assert (
        value(
            text,
            "ts_inference_requests_total",
            **{**labels, "model_name": "noopversioned", "model_version": "1.11"},
        )
        == 1.0
    )
    assert value(text, "QueueTime", **HOST) == pytest.approx(0.5)
    # trioserve's histograms are labelled by the served version.
    served = {"model_name": "noop", "model_version": "1.0"}
    assert value(text, "trioserve_queue_wait_seconds_count", **served) == 3.0
    assert value(text, "trioserve_request_seconds_bucket", **served, le="0.0025") == 3.0
    assert value(text, "trioserve_request_seconds_bucket", **served, le="0.001") == 0.0
    assert value(text, "trioserve_request_seconds_sum", **served) == pytest.approx(0.006)


def test_name_filter_keeps_exact_family_names_only() -> None:
    metrics = server()
    metrics.http_response(200)
    metrics.for_version("m", "1").inference_request(None)
    names = ["ts_inference_requests_total", "Requests2XX", "trioserve_batch_size", "NoSuchThing"]
    text = metrics.exposition(names).decode()
    assert set(families(text)) == {
        "ts_inference_requests_total",
        "Requests2XX",
        "trioserve_batch_size",
    }
    assert set(families(metrics.exposition(["ts_inference_requests"]).decode())) == set()


def test_batches_feed_backend_metrics_worker_thread_time_and_histograms() -> None:
    metrics = server()
    version = metrics.for_version("echo", "1.0")
    records = [
        metric("PredictionTime", 4.0, ModelName="echo", Level="Model"),
        metric("HandlerTime", 3.0, ModelName="echo", Level="Model"),
        metric("NotDeclared", 1.0, kind="counter", unit="Count", ModelName="echo", Level="Model"),
    ]
    version.batch_done(3, 0.010, records)
    version.batch_done(1, 0.005, records[:1])
    text = metrics.exposition().decode()
    model = {"ModelName": "echo", "Level": "Model", "Hostname": "h"}
    assert value(text, "PredictionTime", **model) == 4.0
    assert value(text, "HandlerTime", **model) == 3.0
    assert "NotDeclared" not in text  # not in the YAML, no auto-detect
    assert value(text, "WorkerThreadTime", **HOST) == pytest.approx(1.0)  # 5 ms - 4 ms
    served = {"model_name": "echo", "model_version": "1.0"}
    assert value(text, "trioserve_batch_size_count", **served) == 2.0
    assert value(text, "trioserve_batch_size_sum", **served) == 4.0
    assert value(text, "trioserve_batch_size_bucket", **served, le="2.0") == 1.0
    assert value(text, "trioserve_handler_seconds_sum", **served) == pytest.approx(0.008)


def test_auto_detect_exports_undeclared_backend_metrics_by_type() -> None:
    metrics = server(auto_detect=True)
    version = metrics.for_version("echo", "1.0")
    for _ in range(2):
        version.batch_done(
            1, 0.001, [metric("Hits", 2.0, kind="counter", unit="Count", ModelName="echo")]
        )
    version.batch_done(
        1, 0.001, [metric("Sizes", 5.0, kind="histogram", unit="Megabytes", ModelName="echo")]
    )
    text = metrics.exposition().decode()
    assert families(text)["Hits"] == "gauge"  # a running total, under its exact name
    assert value(text, "Hits", ModelName="echo", Hostname="h") == 4.0
    assert "# HELP Hits Torchserve prometheus counter metric with unit: Count\n" in text
    assert value(text, "Sizes_count", ModelName="echo", Hostname="h") == 1.0


def test_auto_detected_families_are_bounded() -> None:
    metrics = server(auto_detect=True)
    version = metrics.for_version("m", "1")
    version.batch_done(1, 0.0, [metric(f"M{i}", 1.0) for i in range(MAX_MODEL_FAMILIES + 5)])
    assert len(metrics.model) == MAX_MODEL_FAMILIES


def test_a_family_stops_growing_at_its_series_limit(caplog: pytest.LogCaptureFixture) -> None:
    family = Family("F", "gauge", "help")
    with caplog.at_level(logging.WARNING, logger="trioserve.metrics.families"):
        for i in range(MAX_SERIES_PER_FAMILY + 10):
            family.record((("id", str(i)),), 1.0)
    assert len(family.values) == MAX_SERIES_PER_FAMILY
    family.record((("id", "0"),), 7.0)  # an existing series still updates
    assert family.values[(("id", "0"),)] == 7.0
    assert len([r for r in caplog.records if "series" in r.getMessage()]) == 1


def test_negative_counter_updates_are_dropped() -> None:
    family = Family("C_total", "counter", "help")
    family.record((), 2.0)
    family.record((), -1.0)
    assert family.values[()] == 2.0


def test_names_and_labels_are_made_valid() -> None:
    assert metric_name("my metric.v2") == "my_metric_v2"
    assert metric_name("2XX") == "_2XX"
    assert label_name("Model Name") == "Model_Name"
    assert label_name("__reserved") == "x__reserved"


@dataclass
class FakeStats:
    queued: int
    in_flight: int
    workers: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeVersion:
    name: str
    version: str
    stats: FakeStats

    def statistics(self) -> FakeStats:
        return self.stats


def test_queue_depth_and_worker_gauges_are_read_at_scrape_time() -> None:
    metrics = server()
    versions = [FakeVersion("a", "1.0", FakeStats(4, 2, {"BUSY": 2, "READY": 1, "STARTING": 1}))]
    metrics.watch(lambda: versions)
    text = metrics.exposition().decode()
    labels = {"model_name": "a", "model_version": "1.0"}
    assert value(text, "trioserve_queue_depth", **labels) == 4.0
    assert value(text, "trioserve_workers_busy", **labels) == 2.0
    assert value(text, "trioserve_workers_idle", **labels) == 1.0
    versions.clear()  # unregistered: its gauges go with it
    assert series(metrics.exposition().decode(), "trioserve_queue_depth") == []


def test_worker_load_time_and_restarts() -> None:
    metrics = server()
    version = metrics.for_version("echo", "1.0")
    version.worker_loaded("W-9000-echo_1.0", 1.25)
    version.worker_restarted("failure")
    version.worker_restarted("failure")
    version.worker_restarted("recycle")
    text = metrics.exposition().decode()
    assert value(text, "WorkerLoadTime", WorkerName="W-9000-echo_1.0", **HOST) == 1250.0
    labels = {"model_name": "echo", "model_version": "1.0"}
    assert value(text, "trioserve_worker_restarts_total", **labels, reason="failure") == 2.0
    assert value(text, "trioserve_worker_restarts_total", **labels, reason="recycle") == 1.0


def test_a_custom_yaml_selects_what_is_exposed() -> None:
    spec = parse_spec(
        "ts_metrics:\n  counter: [{name: Requests4XX, unit: Count, dimensions: [Level]}]\n"
        "  histogram: [{name: QueueTime, unit: Milliseconds, dimensions: [Hostname]}]\n",
        "custom.yaml",
    )
    metrics = server(spec=spec)
    metrics.http_response(200)
    metrics.http_response(404)
    metrics.for_version("m", "1").queue_wait(None, 0.002)
    text = metrics.exposition().decode()
    assert "Requests2XX" not in text
    assert value(text, "Requests4XX", Level="Host") == 1.0
    assert families(text)["QueueTime"] == "histogram"
    assert value(text, "QueueTime_count", Hostname="h") == 1.0
    assert "ts_inference_requests_total" not in text


# -- log mode -------------------------------------------------------------------------------------
def test_log_mode_logs_torchserve_lines_and_exposes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = server(mode="log")
    version = metrics.for_version("noop", "1.0")
    with caplog.at_level(logging.INFO):
        metrics.http_response(200)
        version.inference_request(None)
        version.batch_done(1, 0.001, [metric("HandlerTime", 0.02, ModelName="noop", Level="Model")])
    assert metrics.exposition() == b""
    frontend = [r.getMessage() for r in caplog.records if r.name == "trioserve.metrics"]
    model = [r.getMessage() for r in caplog.records if r.name == "trioserve.model_metrics"]
    assert frontend[0] == "Requests2XX.Count:1.0|#Level:Host|#hostname:h,timestamp:1717105563"
    assert frontend[1] == (
        "ts_inference_requests_total.Count:1.0|#uuid:U,model_name:noop,model_version:default"
        "|#hostname:h,timestamp:1717105563"
    )
    assert model == [
        "HandlerTime.Milliseconds:0.02|#ModelName:noop,Level:Model|#type:GAUGE|#hostname:h,1717105563,r1"
    ]


def test_legacy_mode_exposes_the_ts_counters_and_logs_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = server(mode="legacy")
    with caplog.at_level(logging.INFO, logger="trioserve.metrics"):
        metrics.http_response(200)
        metrics.for_version("m", "1").inference_request(None)
    text = metrics.exposition().decode()
    assert set(families(text)) == {
        "ts_inference_requests_total",
        "ts_inference_latency_microseconds",
        "ts_queue_latency_microseconds",
    } | set(EXTRA)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["Requests2XX.Count"]


def test_log_lines_format() -> None:
    assert (
        logfmt.frontend_line(
            "GPUUtilization",
            "Percent",
            12.5,
            [("Level", "Host"), ("DeviceId", "0"), ("Hostname", "x")],
            "x",
            5.9,
        )
        == "GPUUtilization.Percent:12.5|#Level:Host,DeviceId:0|#hostname:x,timestamp:5"
    )
    assert (
        logfmt.model_line("C", "Count", 1, [("ModelName", "m")], "counter", "x", 7, "")
        == "C.Count:1.0|#ModelName:m|#type:COUNTER|#hostname:x,7"
    )
