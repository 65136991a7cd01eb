"""A real Prometheus (Debian's ``prometheus`` package) scrapes a running trioserve: the series
arrive with their names, labels and counts, and every query of the shipped Grafana dashboard
parses and runs. Skipped only where the ``prometheus`` binary is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import LOCAL, Server
from tests.support.models import ECHO_HANDLER, handler_archive
from tests.support.spawn import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Prometheus needs a second or two to start and one scrape interval to have samples.
DEADLINE_S = 60
PREDICTIONS = 4

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus binary (apt-get install prometheus); .ci/run installs it",
)


def scrape_config(metrics_port: int) -> str:
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: trioserve\n    static_configs:\n"
        f"      - targets: ['{LOCAL}:{metrics_port}']\n"
    )


async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/query", params={"query": promql})
    body = response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


async def until_value(client: httpx.AsyncClient, promql: str, expected: float) -> dict[str, str]:
    """Poll until ``promql`` has exactly one series with ``expected``; its labels."""
    with trio.fail_after(DEADLINE_S):
        while True:
            try:
                result = await query(client, promql)
            except httpx.TransportError:
                result = []  # Prometheus still starting
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return result[0]["metric"]  # type: ignore[no-any-return]
            await trio.sleep(0.25)


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (the prometheus package has it)")
def test_example_prometheus_config_is_valid() -> None:
    assert PROMTOOL is not None
    config = EXAMPLES / "prometheus" / "prometheus.yml"
    done = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_prometheus_scrapes_trioserve(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    handler_archive(model_store, "echo", ECHO_HANDLER)
    query_params = {"url": "echo.mar", "initial_workers": "1", "synchronous": "true"}
    assert (await server.management.post("/models", params=query_params)).status_code == 200
    for _ in range(PREDICTIONS):
        assert (await server.inference.post("/predictions/echo", content=b"x")).status_code == 200

    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(server.running.ports["metrics"]))
    web = free_port()
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={LOCAL}:{web}",
        "--log.level=warn",
    ]
    log = (tmp_path / "prometheus.log").open("wb")
    try:
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(base_url=f"http://{LOCAL}:{web}", timeout=10) as client,
        ):
            run = partial(trio.run_process, command, stdout=log, stderr=log, check=False)
            await nursery.start(run)
            await until_value(client, 'up{job="trioserve"}', 1.0)
            labels = await until_value(
                client, 'ts_inference_requests_total{model_name="echo"}', PREDICTIONS
            )
            assert labels == {
                "__name__": "ts_inference_requests_total",
                "instance": f"{LOCAL}:{server.running.ports['metrics']}",
                "job": "trioserve",
                "uuid": server.state.metrics.instance_id,
                "model_name": "echo",
                "model_version": "default",
            }
            await until_value(client, 'trioserve_batch_size_count{model_name="echo"}', PREDICTIONS)
            await until_value(client, 'trioserve_workers_idle{model_name="echo"}', 1.0)
            [queued] = await query(client, 'ts_queue_latency_microseconds{model_name="echo"}')
            assert float(queued["value"][1]) > 0
            requests = await query(client, "Requests2XX")
            assert {"Level", "Hostname"} <= set(requests[0]["metric"])
            await check_dashboard_queries(client)
            nursery.cancel_scope.cancel()
    finally:
        log.close()


async def check_dashboard_queries(client: httpx.AsyncClient) -> None:
    """Each query of the Grafana dashboard parses and runs against the scraped data."""
    panels = json.loads((EXAMPLES / "grafana" / "trioserve.json").read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        promql = expr.replace("$job", ".*").replace("$__rate_interval", "1m")
        await query(client, promql)
