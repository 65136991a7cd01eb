"""The shipped Prometheus config and Grafana dashboard name only metrics trioserve exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.support.scrape import families
from trioserve.metrics.registry import ServerMetrics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DASHBOARD = EXAMPLES / "grafana" / "trioserve.json"
# Dashboard selectors are written ``name{job=~"$job"}``, so a metric is a name before "{".
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def exposed_names() -> set[str]:
    names = set(families(ServerMetrics(auto_detect=True).exposition().decode()))
    histograms = {
        n for n, t in families(ServerMetrics().exposition().decode()).items() if t == "histogram"
    }
    names |= {f"{h}{suffix}" for h in histograms for suffix in ("_bucket", "_sum", "_count")}
    return names | {"HandlerTime", "PredictionTime"}  # model metrics, exposed once recorded


def test_dashboard_queries_only_exposed_metrics() -> None:
    used = {name for expr in dashboard_exprs() for name in _SELECTOR.findall(expr)}
    assert used, "no metric selectors found"
    assert used - exposed_names() == set()
    # Every family of the default set and every trioserve extra has a panel.
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert set(families(ServerMetrics().exposition().decode())) - bases == set()


def test_prometheus_example_scrapes_the_default_metrics_address() -> None:
    config = yaml.safe_load((EXAMPLES / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["trioserve"]["static_configs"][0]["targets"] == ["localhost:8082"]
