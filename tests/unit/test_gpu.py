"""GPU counting and assignment (contract §8.4), with injected environments and counts: no GPU,
no driver and no torch needed."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from trioserve.models.gpu import (
    CPU,
    GPU,
    NO_GPU,
    USAGE_FAILED,
    USAGE_NOT_APPLICABLE,
    GpuAssigner,
    count_visible_gpus,
    format_gpu_usage,
    gpu_usage,
    gpus_to_use,
    nvml_device_count,
    visible_device_entries,
)


def never_called() -> int:
    raise AssertionError("CUDA_VISIBLE_DEVICES is set: NVML must not be asked")


# -- counting -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", [], id="empty-means-none"),
        pytest.param("0", ["0"], id="one"),
        pytest.param("1,3", ["1", "3"], id="two"),
        pytest.param(" 0 , 2 ", ["0", "2"], id="blanks"),
        pytest.param("-1", [], id="minus-one-hides-all"),
        pytest.param("0,-1,1", ["0"], id="ends-at-invalid"),
        pytest.param("1,,2", ["1"], id="ends-at-empty-entry"),
        pytest.param("GPU-8e1c,MIG-5a2b", ["GPU-8e1c", "MIG-5a2b"], id="uuids"),
        pytest.param("nope", [], id="garbage"),
    ],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value: str, expected: list[str]) -> None:
    environ = {"CUDA_VISIBLE_DEVICES": value}
    assert visible_device_entries(environ) == expected
    assert count_visible_gpus(environ, never_called) == len(expected)


def test_without_cuda_visible_devices_the_device_count_is_asked() -> None:
    assert visible_device_entries({}) is None
    assert count_visible_gpus({}, lambda: 3) == 3
    assert count_visible_gpus({"OTHER": "1"}, lambda: 0) == 0
    assert count_visible_gpus({}, lambda: -1) == 0


class FakeNvml(types.ModuleType):
    """Stands in for pynvml: counts calls, fails where told to."""

    def __init__(self, count: int = 0, fail_init: bool = False, fail_count: bool = False) -> None:
        super().__init__("pynvml")
        self.count = count
        self.fail_init = fail_init
        self.fail_count = fail_count
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        self.calls.append("count")
        if self.fail_count:
            raise RuntimeError("Unknown Error")
        return self.count

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")


@pytest.mark.parametrize(
    ("fake", "expected", "calls"),
    [
        pytest.param(FakeNvml(count=2), 2, ["init", "count", "shutdown"], id="two-gpus"),
        pytest.param(FakeNvml(fail_init=True), 0, ["init"], id="no-driver"),
        pytest.param(FakeNvml(fail_count=True), 0, ["init", "count", "shutdown"], id="error"),
    ],
)
def test_nvml_count_is_zero_on_any_failure(
    monkeypatch: pytest.MonkeyPatch, fake: FakeNvml, expected: int, calls: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert nvml_device_count() == expected
    assert fake.calls == calls


def test_nvml_count_is_zero_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert nvml_device_count() == 0


def test_pynvml_is_not_imported_without_nvml_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """No libnvidia-ml: the count is 0, as pynvml's nvmlInit would make it, and pynvml (megabytes
    of memory) stays unimported."""

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr("trioserve.metrics.system.ctypes.CDLL", missing)
    monkeypatch.setattr("sys.platform", "linux")
    assert nvml_device_count() == 0
    assert "pynvml" not in sys.modules


@pytest.mark.parametrize(
    ("configured", "visible", "expected"),
    [(None, 4, 4), (2, 4, 2), (8, 2, 2), (0, 4, 0), (None, 0, 0), (3, 0, 0)],
)
def test_number_of_gpu_is_capped_at_the_visible_gpus(
    configured: int | None, visible: int, expected: int
) -> None:
    assert gpus_to_use(configured, visible) == expected


# -- assignment ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        pytest.param(4, [1, 2, 3, 0, 1, 2], id="four"),
        pytest.param(2, [1, 0, 1, 0], id="two"),
        pytest.param(1, [0, 0, 0], id="one"),
        pytest.param(0, [NO_GPU, NO_GPU], id="none"),
    ],
)
def test_server_wide_counter_is_pre_incremented(gpus: int, expected: list[int]) -> None:
    model = GpuAssigner(gpus).for_model(GPU if gpus else CPU, None)
    assert [model.next_gpu_id() for _ in expected] == expected


def test_models_without_device_ids_share_one_counter() -> None:
    assigner = GpuAssigner(3)
    a = assigner.for_model(GPU, None)
    b = assigner.for_model(GPU, None)
    assert [a.next_gpu_id(), b.next_gpu_id(), a.next_gpu_id(), b.next_gpu_id()] == [1, 2, 0, 1]


def test_device_ids_cycle_per_model_from_the_first_entry_apart_from_the_counter() -> None:
    assigner = GpuAssigner(4)
    listed = assigner.for_model(GPU, (3, 1))
    other_listed = assigner.for_model(GPU, (2,))
    shared = assigner.for_model(GPU, None)
    assert [listed.next_gpu_id() for _ in range(3)] == [3, 1, 3]
    assert [other_listed.next_gpu_id() for _ in range(2)] == [2, 2]
    assert shared.next_gpu_id() == 1  # the lists did not move the server-wide counter
    assert listed.next_gpu_id() == 1


def test_cpu_model_gets_no_gpu_and_leaves_the_counter_alone() -> None:
    assigner = GpuAssigner(2)
    cpu = assigner.for_model(CPU, None)
    assert [cpu.next_gpu_id(), cpu.next_gpu_id()] == [NO_GPU, NO_GPU]
    assert assigner.for_model(GPU, None).next_gpu_id() == 1


@pytest.mark.parametrize(
    ("gpus", "requested", "expected"),
    [
        (2, None, GPU),
        (2, "gpu", GPU),
        (2, "cpu", CPU),
        (2, "CPU", CPU),
        (2, "neuron", GPU),  # not a forcing value: the default stands
        (0, None, CPU),
        (0, "gpu", CPU),  # gpu only if GPUs exist
    ],
)
def test_device_type(gpus: int, requested: str | None, expected: str) -> None:
    assert GpuAssigner(gpus).device_type(requested) == expected


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ((0, 2), (0, 2)),
        ((1,), (1,)),
        ((0, 3), None),  # one invalid id voids the list
        ((-1,), None),
        ((), None),
        (None, None),
    ],
)
def test_device_ids_must_all_be_gpus_in_use(
    ids: tuple[int, ...] | None, expected: tuple[int, ...] | None
) -> None:
    assert GpuAssigner(3).valid_device_ids(ids) == expected


def test_device_ids_without_gpus_are_ignored() -> None:
    assert GpuAssigner(0).valid_device_ids((0,)) is None


# -- describe's gpuUsage ------------------------------------------------------------------------
def test_gpu_usage_text_is_torchserves() -> None:
    assert format_gpu_usage(1, 35, 7, 1234) == (
        "gpuId::1 utilization.gpu [%]::35 % utilization.memory [%]::7 % memory.used [MiB]::1234 MiB"
    )


@dataclass
class Rates:
    gpu: int
    memory: int


@dataclass
class Memory:
    used: int


class UsageNvml:
    """pynvml's usage calls over a table of devices by physical index and UUID."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.handles: list[Any] = []

    def nvmlInit(self) -> None:
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.handles.append(index)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.handles.append(uuid)
        return 9

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Rates:
        return Rates(gpu=10 * handle, memory=handle)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Memory:
        return Memory(used=(100 * handle << 20) + 12345)


def test_gpu_usage_on_cpu_is_not_applicable() -> None:
    assert gpu_usage(NO_GPU, {}, UsageNvml(fail=True)) == USAGE_NOT_APPLICABLE


def test_gpu_usage_reads_the_device_the_worker_sees() -> None:
    nvml = UsageNvml()
    assert gpu_usage(0, {}, nvml) == format_gpu_usage(0, 0, 0, 0)
    # CUDA_VISIBLE_DEVICES=2,5: the worker's cuda:1 is NVML's device 5.
    assert gpu_usage(1, {"CUDA_VISIBLE_DEVICES": "2,5"}, nvml) == format_gpu_usage(1, 50, 5, 500)
    assert gpu_usage(0, {"CUDA_VISIBLE_DEVICES": "GPU-8e1c"}, nvml) == format_gpu_usage(
        0, 90, 9, 900
    )
    assert nvml.handles == [0, 5, "GPU-8e1c"]


def test_gpu_usage_failure_has_torchserves_text() -> None:
    assert gpu_usage(0, {}, UsageNvml(fail=True)) == USAGE_FAILED == "failed to obtained gpu usage"
