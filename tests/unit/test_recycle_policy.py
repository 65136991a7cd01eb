"""Worker recycling decisions and their keys (trioserve's own, beyond TorchServe)."""

from __future__ import annotations

import os

import pytest

from trioserve.config import Config, default_config
from trioserve.errors import ConfigError, InvalidModel
from trioserve.models.manifest import ModelConfig
from trioserve.models.recycling import MIB, RecyclePolicy, process_rss, recycle_reason


@pytest.mark.parametrize(
    ("policy", "served", "rss", "due"),
    [
        pytest.param(RecyclePolicy(), 10**6, 10**12, False, id="off"),
        pytest.param(RecyclePolicy(max_requests=3), 2, None, False, id="under-requests"),
        pytest.param(RecyclePolicy(max_requests=3), 3, None, True, id="at-requests"),
        pytest.param(RecyclePolicy(max_requests=3), 4, None, True, id="past-requests"),
        pytest.param(RecyclePolicy(max_rss_mb=100), 1, 100 * MIB, False, id="at-rss"),
        pytest.param(RecyclePolicy(max_rss_mb=100), 1, 100 * MIB + 1, True, id="over-rss"),
        pytest.param(RecyclePolicy(max_rss_mb=100), 1, None, False, id="rss-unreadable"),
        pytest.param(RecyclePolicy(3, 100), 1, 200 * MIB, True, id="either-limit"),
    ],
)
def test_recycle_when_past_either_limit(
    policy: RecyclePolicy, served: int, rss: int | None, due: bool
) -> None:
    assert (policy.reason(served, rss) is not None) is due


def test_reasons_name_the_limit() -> None:
    assert RecyclePolicy(max_requests=3).reason(3, None) == (
        "served 3 requests (maxRequestsPerWorker 3)"
    )
    reason = RecyclePolicy(max_rss_mb=1).reason(0, 3 * MIB)
    assert reason == "RSS of 3.0 MiB is over maxWorkerRssMb 1"


def test_rss_is_measured_only_when_a_limit_needs_it() -> None:
    assert process_rss(os.getpid()) is not None
    assert process_rss(-1) is None
    assert recycle_reason(RecyclePolicy(max_requests=5), 1, os.getpid()) is None
    assert recycle_reason(RecyclePolicy(max_rss_mb=1), 1, os.getpid()) is not None


def test_model_config_keys() -> None:
    config = ModelConfig.from_yaml(b"maxRequestsPerWorker: 3\nmaxWorkerRssMb: 0\n")
    assert (config.max_requests_per_worker, config.max_worker_rss_mb) == (3, 0)
    unset = ModelConfig.from_yaml(b"batchSize: 2\n")
    assert (unset.max_requests_per_worker, unset.max_worker_rss_mb) == (None, None)


@pytest.mark.parametrize("value", ["-1", "lots", "true", "1.5"])
def test_model_config_rejects_bad_limits(value: str) -> None:
    with pytest.raises(InvalidModel, match="maxWorkerRssMb must be an integer >= 0"):
        ModelConfig.from_yaml(f"maxWorkerRssMb: {value}\n".encode())


def test_server_wide_defaults_are_off_and_validated() -> None:
    config = default_config()
    assert (config.max_requests_per_worker, config.max_worker_rss_mb) == (0, 0)
    with pytest.raises(ConfigError, match="max_requests_per_worker"):
        Config(max_requests_per_worker=-1)
