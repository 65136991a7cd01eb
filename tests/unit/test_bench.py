"""The bench's pure parts: reading wrk's output and building the ratio table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from backend.wire import FrameDecoder, pb
from bench.common import parse_wrk
from bench.report import (
    TARGETS,
    TORCHSERVE,
    TRIOSERVE,
    Measurement,
    Row,
    Target,
    markdown,
    rows,
    write_json,
)
from bench.scenarios import efficiency

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/predictions/echo2
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.10ms    3.02ms  48.01ms   88.11%
    Req/Sec   760.12     50.33   850.00     70.00%
  Latency Distribution
     50%   20.96ms
     75%   22.01ms
     90%  750.00us
     99%    1.25s
  15130 requests in 10.01s, 2.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1511.49
Transfer/sec:    214.61KB
"""


def test_wrk_output_gives_rate_count_percentiles_in_ms_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == 1511.49
    assert result.requests == 15130
    assert result.p50_ms == 20.96
    assert result.p90_ms == 0.75
    assert result.p99_ms == 1250.0
    assert result.errors == 4 + 2 + 3


def test_wrk_output_without_latency_or_errors_gives_nan_and_zero() -> None:
    result = parse_wrk("  10 requests in 1.00s, 1KB read\nRequests/sec:     10.00\n")
    assert result.requests == 10
    assert result.errors == 0
    assert math.isnan(result.p99_ms)


def test_rows_pair_each_trioserve_figure_with_torchserve_and_its_target() -> None:
    measured = [
        Measurement("echo w=2", 32, TRIOSERVE, {"req/s": 3000.0, "p99 ms": 10.0}),
        Measurement("echo w=2", 32, TORCHSERVE, {"req/s": 1000.0, "p99 ms": 40.0}),
    ]
    table = rows(measured)
    assert [(r.scenario, r.metric) for r in table] == [
        ("echo w=2 c=32", "req/s"),
        ("echo w=2 c=32", "p99 ms"),
    ]
    assert table[0].ratio == 3.0
    assert table[0].verdict() == "≥ 2x ✓"
    assert table[1].ratio == 0.25
    assert table[1].verdict() == "≤ 0.5x ✓"


def test_rows_without_torchserve_show_figures_and_absolute_targets_only() -> None:
    measured = [
        Measurement("restart", None, TRIOSERVE, {"kill -9 -> serving s": 0.8}),
        Measurement("echo w=2", 32, TRIOSERVE, {"req/s": 3000.0}),
    ]
    table = rows(measured)
    assert table[0].ratio is None
    assert table[0].verdict() == "≤ 0.5 ✗"
    assert table[1].verdict() == "≥ 2x"  # a ratio target cannot be judged without TorchServe
    text = markdown(table)
    assert "TorchServe" not in text.splitlines()[0]
    assert "| restart | kill -9 -> serving s | 0.8 | ≤ 0.5 ✗ |" in text


def test_markdown_shows_ratios_and_marks_a_zero_denominator_as_not_available() -> None:
    table = [
        Row("echo w=2 c=32", "req/s", 1500.0, 3000.0, None),
        Row("echo w=2 c=32", "errors", 0.0, 0.0, None),
    ]
    lines = markdown(table).splitlines()
    assert lines[0] == "| scenario | metric | trioserve | TorchServe | ratio | target |"
    assert lines[2] == "| echo w=2 c=32 | req/s | 1500 | 3000 | 0.5x |  |"
    assert lines[3] == "| echo w=2 c=32 | errors | 0 | 0 | n/a |  |"


def test_nan_never_meets_a_target() -> None:
    assert not Target("s", "m", True, 1.0).met(math.nan)
    assert not Target("s", "m", False, 1.0).met(math.nan)


def test_every_target_names_a_scenario_the_suite_runs() -> None:
    groups = ("echo w=", "sleep10 b=", "cnn b=", "grpc echo", "startup", "restart")
    assert all(t.scenario.startswith(groups) for t in TARGETS)


def test_sleep_efficiency_is_the_share_of_workers_times_batch_per_10_ms() -> None:
    assert efficiency(100.0, 1, 1) == 100.0
    assert efficiency(400.0, 1, 8) == 50.0


def test_json_keeps_every_measurement(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    measured = [Measurement("startup", None, TRIOSERVE, {"tree RSS MiB": 300.0})]
    write_json(path, measured, {"cpus": 2})
    payload = json.loads(path.read_text())
    assert payload["meta"] == {"cpus": 2}
    assert payload["measurements"][0]["metrics"] == {"tree RSS MiB": 300.0}


def test_worker_loop_times_real_batches_through_the_worker(capsys: Any) -> None:
    from bench import worker_loop

    assert worker_loop.main(["--batch", "3", "--rounds", "5"]) == 0
    assert capsys.readouterr().out.startswith("batch 3: median ")
    # The frame it times is a real batch: three requests, each a REST client's.
    message = FrameDecoder(pb.ToWorker)
    message.receive_data(worker_loop.batch_frame(3))
    batch = message.next_frame()
    assert batch is not None
    assert len(batch.batch.requests) == 3
    assert batch.batch.requests[0].headers[0].name == "host"
