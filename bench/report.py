"""Figures in, report out (sans-IO, apart from the chart): the Markdown table with its
trioserve / TorchServe ratios and the targets they are held to, the JSON file and the chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRIOSERVE = "trioserve"
TORCHSERVE = "torchserve"


@dataclass(frozen=True)
class Measurement:
    """One scenario on one server. ``group`` names a curve of the chart (``concurrency`` is its
    x); ``metrics`` maps a metric's name (with its unit) to its value."""

    group: str
    concurrency: int | None
    server: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        return self.group if self.concurrency is None else f"{self.group} c={self.concurrency}"


@dataclass(frozen=True)
class Target:
    """A figure the suite is held to: a ratio trioserve / TorchServe, or an absolute value."""

    scenario: str
    metric: str
    at_least: bool  # True: >= bound, False: <= bound
    bound: float
    ratio: bool = True

    def text(self) -> str:
        op = "≥" if self.at_least else "≤"
        return f"{op} {self.bound:g}x" if self.ratio else f"{op} {self.bound:g}"

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.bound if self.at_least else value <= self.bound


REQS = "req/s"
P99 = "p99 ms"
CPU = "CPU ms/req"
EFFICIENCY = "efficiency %"
TARGETS = (
    Target("echo w=2 c=32", REQS, True, 2.0),
    Target("echo w=2 c=32", CPU, False, 0.5),
    Target("echo w=2 c=32", P99, False, 0.5),
    Target("sleep10 b=1 c=8", EFFICIENCY, True, 97, ratio=False),
    Target("sleep10 b=1 c=32", EFFICIENCY, True, 97, ratio=False),
    Target("sleep10 b=8 c=8", EFFICIENCY, True, 97, ratio=False),
    Target("sleep10 b=8 c=32", EFFICIENCY, True, 97, ratio=False),
    Target("cnn b=8 c=64", REQS, True, 1.3),
    Target("grpc echo c=32", REQS, True, 1.5),
    Target("startup", "three models READY s", False, 0.25),
    Target("startup", "tree RSS MiB", False, 0.33),
    Target("restart", "kill -9 -> serving s", False, 0.5, ratio=False),
)


@dataclass(frozen=True)
class Row:
    scenario: str
    metric: str
    trioserve: float
    torchserve: float | None  # None: not measured (no --vs-torchserve)
    target: Target | None

    @property
    def ratio(self) -> float | None:
        if self.torchserve is None:
            return None
        if self.torchserve == 0:
            return math.nan
        return self.trioserve / self.torchserve

    def verdict(self) -> str:
        if self.target is None:
            return ""
        value = self.ratio if self.target.ratio else self.trioserve
        if value is None:
            return self.target.text()
        return f"{self.target.text()} {'✓' if self.target.met(value) else '✗'}"


def rows(measurements: list[Measurement]) -> list[Row]:
    """One row per (scenario, metric) that trioserve measured, in the order measured."""
    targets = {(t.scenario, t.metric): t for t in TARGETS}
    others = {(m.scenario, m.server): m for m in measurements}
    out: list[Row] = []
    for mine in measurements:
        if mine.server != TRIOSERVE:
            continue
        theirs = others.get((mine.scenario, TORCHSERVE))
        for metric, value in mine.metrics.items():
            other = None if theirs is None else theirs.metrics.get(metric, math.nan)
            out.append(
                Row(mine.scenario, metric, value, other, targets.get((mine.scenario, metric)))
            )
    return out


def _figure(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def markdown(table: list[Row]) -> str:
    versus = any(r.torchserve is not None for r in table)
    head = ["scenario", "metric", "trioserve"]
    if versus:
        head += ["TorchServe", "ratio"]
    head.append("target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row.scenario, row.metric, _figure(row.trioserve)]
        if versus:
            ratio = row.ratio
            shown = "" if ratio is None else _figure(ratio)
            cells += [_figure(row.torchserve), shown if shown in ("", "n/a") else shown + "x"]
        cells.append(row.verdict())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, measurements: list[Measurement], meta: dict[str, object]) -> None:
    payload = {"meta": meta, "measurements": [asdict(m) for m in measurements]}
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def chart(path: Path, measurements: list[Measurement]) -> bool:
    """req/s and p99 against concurrency, a line per (group, server); False without
    matplotlib (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curves: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        if m.concurrency is not None and REQS in m.metrics:
            curves.setdefault((m.group, m.server), []).append(m)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    groups = sorted({group for group, _ in curves})
    palette = plt.get_cmap("tab10")
    for (group, server), points in sorted(curves.items()):
        points.sort(key=lambda m: m.concurrency or 0)
        xs = [m.concurrency for m in points]
        # One colour per scenario; solid for trioserve, dashed for TorchServe.
        style = {"color": palette(groups.index(group) % 10), "marker": "o"}
        style["linestyle"] = "-" if server == TRIOSERVE else "--"
        label = f"{group} ({server})"
        left.plot(xs, [m.metrics[REQS] for m in points], label=label, **style)
        right.plot(xs, [m.metrics.get(P99, math.nan) for m in points], **style)
    for axis, title in ((left, "requests/s"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    figure.legend(loc="lower center", ncol=4, fontsize="small")
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
