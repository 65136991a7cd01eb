"""The system metrics job: psutil figures in TorchServe's units, NVML per GPU with fakes (no GPU
or driver needed), and the sampler task on a fake clock."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from tests.support.scrape import series, value
from trioserve.metrics import system
from trioserve.metrics.registry import ServerMetrics
from trioserve.metrics.system import MB, Sample, gpu_samples, host_samples, run_system_sampler

HOST_NAMES = [
    "CPUUtilization",
    "MemoryUsed",
    "MemoryAvailable",
    "MemoryUtilization",
    "DiskUsage",
    "DiskAvailable",
    "DiskUtilization",
]


def fake_psutil() -> Any:
    return types.SimpleNamespace(
        cpu_percent=lambda interval=None: 12.5,
        virtual_memory=lambda: types.SimpleNamespace(
            used=512 * MB, available=1536 * MB, percent=25.0
        ),
        disk_usage=lambda path: types.SimpleNamespace(used=3 << 30, free=1 << 30, percent=75.0),
    )


def test_host_samples_use_torchserve_units() -> None:
    got = {s.name: s.value for s in host_samples(fake_psutil())}
    assert got == {
        "CPUUtilization": 12.5,
        "MemoryUsed": 512.0,
        "MemoryAvailable": 1536.0,
        "MemoryUtilization": 25.0,
        "DiskUsage": 3.0,
        "DiskAvailable": 1.0,
        "DiskUtilization": 75.0,
    }


def test_host_samples_from_the_real_machine() -> None:
    got = {s.name: s.value for s in host_samples(cpu_window=None)}
    assert list(got) == HOST_NAMES
    assert 0 <= got["MemoryUtilization"] <= 100
    assert got["MemoryAvailable"] > 0


@dataclass
class FakeNvml:
    """NVML as pynvml exposes it, for two GPUs (uuids GPU-a, GPU-b)."""

    fail_init: bool = False
    calls: list[str] | None = None

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return ["GPU-a", "GPU-b"][index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        used = {"GPU-a": 1024 * MB, "GPU-b": 4096 * MB}[handle]
        return types.SimpleNamespace(used=used, total=8192 * MB)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return types.SimpleNamespace(gpu={"GPU-a": 10, "GPU-b": 90}[handle], memory=0)


def test_gpu_samples_per_device() -> None:
    got = {(s.name, s.device_id): s.value for s in gpu_samples(None, None, FakeNvml())}
    assert got == {
        ("GPUMemoryUtilization", "0"): 12.5,
        ("GPUMemoryUsed", "0"): 1024.0,
        ("GPUUtilization", "0"): 10.0,
        ("GPUMemoryUtilization", "1"): 50.0,
        ("GPUMemoryUsed", "1"): 4096.0,
        ("GPUUtilization", "1"): 90.0,
    }


@pytest.mark.parametrize(
    ("visible", "limit", "expected"),
    [
        pytest.param(["1"], None, {"0": 90.0}, id="cuda-visible-index"),
        pytest.param(["GPU-b", "GPU-a"], None, {"0": 90.0, "1": 10.0}, id="cuda-visible-uuids"),
        pytest.param(None, 1, {"0": 10.0}, id="number_of_gpu"),
        pytest.param([], None, {}, id="none-visible"),
    ],
)
def test_gpu_samples_follow_cuda_visible_devices_and_number_of_gpu(
    visible: list[str] | None, limit: int | None, expected: dict[str, float]
) -> None:
    got = {
        s.device_id: s.value
        for s in gpu_samples(visible, limit, FakeNvml())
        if s.name == "GPUUtilization"
    }
    assert got == expected


def test_no_nvml_means_no_gpu_samples_never_an_error() -> None:
    assert gpu_samples(None, None, FakeNvml(fail_init=True)) == []
    # pynvml on this machine: no driver (or a GPU); either way a list, never an exception.
    assert isinstance(gpu_samples(None, None), list)


def cpu(metrics: ServerMetrics) -> float | None:
    return value(metrics.exposition().decode(), "CPUUtilization", Level="Host", Hostname="h")


async def cpu_value(metrics: ServerMetrics, expected: float) -> None:
    with trio.fail_after(10):
        while cpu(metrics) != expected:  # noqa: ASYNC110 - polls what the sampler task records
            await trio.sleep(0.01)


async def test_sampler_records_at_once_then_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[tuple[float, float | None]] = []

    def fake_sample_all(visible: Any, limit: Any, cpu_window: float | None) -> list[Sample]:
        rounds.append((trio.current_time(), cpu_window))
        return [Sample("CPUUtilization", float(len(rounds))), Sample("GPUUtilization", 50.0, "0")]

    monkeypatch.setattr(
        system, "sample_all", lambda *a: trio.from_thread.run_sync(fake_sample_all, *a)
    )
    metrics = ServerMetrics(hostname="h", instance_id="U")
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(
            lambda: run_system_sampler(metrics, 0.5, visible_gpus=None, number_of_gpu=None)
        )
        await cpu_value(metrics, 1.0)
        text = metrics.exposition().decode()
        assert series(text, "GPUUtilization") == [
            {"Level": "Host", "DeviceId": "0", "Hostname": "h"}
        ]
        await cpu_value(metrics, 2.0)
        nursery.cancel_scope.cancel()
    assert [window for _, window in rounds] == [system.FIRST_CPU_WINDOW_S, None]
    assert rounds[0][0] - started < 0.4  # at once
    assert rounds[1][0] - rounds[0][0] >= 0.5  # then after the interval
