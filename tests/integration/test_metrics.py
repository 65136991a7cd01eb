"""The metrics API against a running server with real workers: exact names, label sets and how
far each counter moves after a known number of requests; log mode; the access log."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import LOCAL, Server, make_config, wait_until
from tests.support.models import ECHO_HANDLER, handler_archive, torchscript_archive
from tests.support.scrape import families, series, value

ServerFactory = Any
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

METRICS_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    context.metrics.add_counter("InferenceCount", len(data))
    context.metrics.add_time("CustomTime", 2.5, 0)
    return [bytes(row.get("body") or b"") for row in data]
"""

# Uses the cache the YAML pre-fills: get_metric raises unless model_metrics declares CacheHits.
DECLARED_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    hits = context.metrics.get_metric("CacheHits", "counter")
    hits.add_or_update(len(data), [context.model_name, "a"], context.get_request_id(0))
    return [bytes(row.get("body") or b"") for row in data]
"""


@pytest.fixture
async def scraper(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    port = server.running.ports["metrics"]
    async with httpx.AsyncClient(base_url=f"http://{LOCAL}:{port}", timeout=60) as client:
        yield client


async def scrape(client: httpx.AsyncClient, *names: str) -> str:
    response = await client.get("/metrics", params={"name[]": list(names)})
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


async def register(server: Server, url: str, **params: str) -> None:
    query = {"url": url, "initial_workers": "1", "synchronous": "true", **params}
    response = await server.management.post("/models", params=query)
    assert response.status_code == 200, response.text


def metrics_client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{LOCAL}:{server.running.ports['metrics']}")


async def test_ts_counters_move_by_the_number_of_predictions(
    server: Server, model_store: Path, scraper: httpx.AsyncClient
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(server, "echo.mar")
    for _ in range(5):
        assert (await server.inference.post("/predictions/echo", content=b"x")).status_code == 200
    for _ in range(2):
        assert (
            await server.inference.post("/predictions/echo/1.0", content=b"y")
        ).status_code == 200
    text = await scrape(scraper)
    uuid = server.state.metrics.instance_id
    default = {"uuid": uuid, "model_name": "echo", "model_version": "default"}
    versioned = {**default, "model_version": "1.0"}
    assert value(text, "ts_inference_requests_total", **default) == 5.0
    assert value(text, "ts_inference_requests_total", **versioned) == 2.0
    for name in ("ts_inference_latency_microseconds", "ts_queue_latency_microseconds"):
        assert series(text, name) == [default, versioned]
        assert (value(text, name, **default) or 0) > 0
    types = families(text)
    assert types["ts_inference_requests_total"] == "counter"
    # trioserve's own, per served version.
    served = {"model_name": "echo", "model_version": "1.0"}
    assert value(text, "trioserve_batch_size_count", **served) == 7.0
    assert value(text, "trioserve_batch_size_sum", **served) == 7.0
    assert value(text, "trioserve_queue_wait_seconds_count", **served) == 7.0
    assert value(text, "trioserve_request_seconds_count", **served) == 7.0
    assert value(text, "trioserve_handler_seconds_count", **served) == 7.0
    assert value(text, "trioserve_queue_depth", **served) == 0.0
    assert value(text, "trioserve_workers_idle", **served) == 1.0
    assert value(text, "trioserve_workers_busy", **served) == 0.0


async def test_requests_by_status_class(
    server: Server, model_store: Path, scraper: httpx.AsyncClient
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(server, "echo.mar")
    handler_archive(model_store, "idle", ECHO_HANDLER)
    await register(server, "idle.mar", initial_workers="0")
    host = {"Level": "Host", "Hostname": server.state.hostname}
    before = await scrape(scraper)
    for _ in range(3):
        await server.inference.post("/predictions/echo", content=b"x")  # 200
    await server.inference.get("/predictions/nosuch")  # 404
    await server.management.get("/models/nosuch")  # 404, management port
    await server.inference.post("/predictions/idle", content=b"x")  # 503: no worker
    after = await scrape(scraper)

    def moved(name: str) -> float:
        return (value(after, name, **host) or 0) - (value(before, name, **host) or 0)

    assert moved("Requests2XX") == 4  # three predictions and the first scrape
    assert moved("Requests4XX") == 2
    assert moved("Requests5XX") == 1
    assert series(after, "Requests2XX") == [host]


async def test_frontend_and_backend_metric_labels(
    server: Server, model_store: Path, scraper: httpx.AsyncClient
) -> None:
    torchscript_archive(model_store, "cnn")
    await register(server, "cnn.mar")
    response = await server.inference.post("/predictions/cnn", json=[0.5, -1.0, 2.0, 0.0])
    assert response.status_code == 200, response.text
    text = await scrape(scraper)
    hostname = server.state.hostname
    [load] = series(text, "WorkerLoadTime")
    assert set(load) == {"WorkerName", "Level", "Hostname"}
    assert load["WorkerName"].startswith("W-")
    assert load["WorkerName"].endswith("-cnn_1.0")
    assert (value(text, "WorkerLoadTime", **load) or 0) > 0
    model = {"ModelName": "cnn", "Level": "Model", "Hostname": hostname}
    assert series(text, "HandlerTime") == [model]  # BaseHandler.handle's own
    assert series(text, "PredictionTime") == [model]  # the worker's, around the entry point
    assert series(text, "QueueTime") == [{"Level": "Host", "Hostname": hostname}]
    assert series(text, "WorkerThreadTime") == [{"Level": "Host", "Hostname": hostname}]


async def test_name_filter_and_any_path_under_metrics(
    server: Server, scraper: httpx.AsyncClient
) -> None:
    text = await scrape(scraper, "Requests2XX", "ts_queue_latency_microseconds", "Unknown")
    assert set(families(text)) == {"Requests2XX", "ts_queue_latency_microseconds"}
    other = await scraper.post("/metrics/anything")
    assert other.status_code == 200
    assert "# TYPE ts_inference_requests_total counter" in other.text


async def test_system_metrics_are_sampled(server_factory: ServerFactory, model_store: Path) -> None:
    server = await server_factory(make_config(model_store, metric_time_interval=1))
    host = {"Level": "Host", "Hostname": server.state.hostname}
    names = [
        "CPUUtilization",
        "MemoryUsed",
        "MemoryAvailable",
        "MemoryUtilization",
        "DiskUsage",
        "DiskAvailable",
        "DiskUtilization",
    ]
    async with metrics_client(server) as client:

        async def sampled() -> bool:
            text = await scrape(client)
            return all(value(text, name, **host) is not None for name in names)

        await wait_until(sampled, limit_s=20)
        text = await scrape(client)
    assert 0 <= (value(text, "MemoryUtilization", **host) or -1) <= 100
    # GPU families are declared; their series exist only where NVML sees a GPU.
    assert {"GPUUtilization", "GPUMemoryUsed", "GPUMemoryUtilization"} <= set(families(text))
    for gpu in series(text, "GPUUtilization"):
        assert set(gpu) == {"Level", "DeviceId", "Hostname"}


async def test_disable_system_metrics_starts_no_sampler(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, disable_system_metrics=True))
    await trio.sleep(0.5)
    async with metrics_client(server) as client:
        text = await scrape(client)
    assert series(text, "CPUUtilization") == []


async def test_handler_metrics_not_in_the_yaml_are_dropped_unless_auto_detected(
    server_factory: ServerFactory, model_store: Path
) -> None:
    handler_archive(model_store, "custom", METRICS_HANDLER)
    plain = await server_factory(make_config(model_store))
    detecting = await server_factory(make_config(model_store, model_metrics_auto_detect=True))
    for server in (plain, detecting):
        await register(server, "custom.mar")
        for _ in range(3):
            response = await server.inference.post("/predictions/custom", content=b"x")
            assert response.status_code == 200
    async with metrics_client(plain) as client:
        assert "InferenceCount" not in await scrape(client)
    async with metrics_client(detecting) as client:
        text = await scrape(client)
    labels = {"ModelName": "custom", "Level": "Model", "Hostname": detecting.state.hostname}
    assert value(text, "InferenceCount", **labels) == 3.0
    assert value(text, "CustomTime", **labels) == 2.5
    assert "# HELP InferenceCount Torchserve prometheus counter metric with unit: Count" in text


async def test_metrics_config_declares_handler_metrics_and_prefills_the_cache(
    server_factory: ServerFactory, model_store: Path, tmp_path: Path
) -> None:
    yaml_path = tmp_path / "metrics.yaml"
    yaml_path.write_text(
        "ts_metrics:\n  counter:\n"
        "    - {name: ts_inference_requests_total, unit: Count,"
        " dimensions: [model_name, model_version, hostname]}\n"
        "model_metrics:\n  counter:\n"
        "    - {name: CacheHits, unit: count, dimensions: [ModelName, Shard]}\n"
    )
    server = await server_factory(make_config(model_store, metrics_config=str(yaml_path)))
    handler_archive(model_store, "declared", DECLARED_HANDLER)
    await register(server, "declared.mar")
    for _ in range(2):
        response = await server.inference.post("/predictions/declared", content=b"x")
        assert response.status_code == 200, response.text
    async with metrics_client(server) as client:
        text = await scrape(client)
    hostname = server.state.hostname
    assert set(families(text)) >= {"ts_inference_requests_total", "CacheHits"}
    assert "Requests2XX" not in families(text)
    labels = {"ModelName": "declared", "Shard": "a", "Hostname": hostname}
    assert value(text, "CacheHits", **labels) == 2.0
    # TorchServe's 0.12 label set for the ts_* counter, as this YAML asks.
    ts_labels = {"model_name": "declared", "model_version": "default", "hostname": hostname}
    assert value(text, "ts_inference_requests_total", **ts_labels) == 2.0


async def test_worker_restarts_are_counted(
    server: Server, model_store: Path, scraper: httpx.AsyncClient
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(server, "echo.mar")
    worker = server.state.registry.resolve("echo").workers[0]
    os.kill(worker.pid, signal.SIGKILL)
    labels = {"model_name": "echo", "model_version": "1.0", "reason": "failure"}

    async def restarted() -> bool:
        return value(await scrape(scraper), "trioserve_worker_restarts_total", **labels) == 1.0

    await wait_until(restarted, limit_s=30)


async def test_log_mode_logs_torchserve_lines_and_serves_an_empty_body(
    server_factory: ServerFactory, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    server = await server_factory(
        make_config(model_store, metrics_mode="log", disable_system_metrics=True)
    )
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(server, "echo.mar")
    response = await server.inference.post("/predictions/echo", content=b"x")
    request_id = response.headers["x-request-id"]
    async with metrics_client(server) as client:
        scraped = await client.get("/metrics")
    assert (scraped.status_code, scraped.content) == (200, b"")
    host = server.state.hostname
    frontend = [r.getMessage() for r in caplog.records if r.name == "trioserve.metrics"]
    model = [r.getMessage() for r in caplog.records if r.name == "trioserve.model_metrics"]
    assert any(
        line.startswith(f"Requests2XX.Count:1.0|#Level:Host|#hostname:{host},timestamp:")
        for line in frontend
    )
    assert any(line.startswith("ts_inference_requests_total.Count:1.0|#uuid:") for line in frontend)
    prediction = [line for line in model if line.startswith("PredictionTime.Milliseconds:")]
    assert len(prediction) == 1
    assert f"|#ModelName:echo,Level:Model|#type:GAUGE|#hostname:{host}," in prediction[0]
    assert prediction[0].endswith(f",{request_id}")


async def test_access_log_names_status_latency_request_id_and_model(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(server, "echo.mar")
    response = await server.inference.post("/predictions/echo", content=b"x")
    request_id = response.headers["x-request-id"]

    def matching() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
        return [line for line in lines if request_id in line]

    async def logged() -> bool:
        # The line is written once the response is sent, which may be after the client has it.
        return bool(matching())

    await wait_until(logged, 10)
    [line] = matching()
    assert '"POST /predictions/echo HTTP/1.1" 200 ' in line
    assert line.endswith(f"ms {request_id} echo")


async def test_no_metrics_listener_when_the_api_is_disabled(
    server_factory: ServerFactory, model_store: Path
) -> None:
    server = await server_factory(make_config(model_store, enable_metrics_api=False))
    assert "metrics" not in server.running.ports
