"""The system metrics job (contract §3.2): host CPU, memory and disk through psutil, and per-GPU
utilisation and memory through NVML (pynvml), every ``metric_time_interval`` seconds.

Reading is sans-Trio (:func:`host_samples`, :func:`gpu_samples`, given the libraries, so tests
pass fakes) and runs in a thread; :func:`run_system_sampler` records the figures on the Trio
thread. A machine without GPUs, driver or pynvml simply has no GPU samples: never an error.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import trio

from trioserve.metrics.registry import ServerMetrics

logger = logging.getLogger(__name__)

MB = 1 << 20
GB = 1 << 30
# psutil.cpu_percent compares with its previous call; the first sample measures over this long.
FIRST_CPU_WINDOW_S = 0.2


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    device_id: str | None = None  # GPUs only: the DeviceId dimension


def host_samples(
    ps: Any = psutil, disk_path: str = "/", cpu_window: float | None = None
) -> list[Sample]:
    """CPU, memory and disk figures in TorchServe's units (MB for memory, GB for disk)."""
    memory = ps.virtual_memory()
    disk = ps.disk_usage(disk_path)
    return [
        Sample("CPUUtilization", float(ps.cpu_percent(interval=cpu_window))),
        Sample("MemoryUsed", memory.used / MB),
        Sample("MemoryAvailable", memory.available / MB),
        Sample("MemoryUtilization", float(memory.percent)),
        Sample("DiskUsage", disk.used / GB),
        Sample("DiskAvailable", disk.free / GB),
        Sample("DiskUtilization", float(disk.percent)),
    ]


def _devices(nvml: Any, visible: Sequence[str] | None, limit: int | None) -> list[Any]:
    """NVML handles of the GPUs this server uses, in CUDA's order: ``visible`` are the
    CUDA_VISIBLE_DEVICES entries (indices or UUIDs; None when unset), ``limit`` number_of_gpu."""
    entries = (
        list(visible) if visible is not None else [str(i) for i in range(nvml.nvmlDeviceGetCount())]
    )
    if limit is not None:
        entries = entries[:limit]
    return [
        nvml.nvmlDeviceGetHandleByIndex(int(e))
        if e.isdigit()
        else nvml.nvmlDeviceGetHandleByUUID(e)
        for e in entries
    ]


def import_nvml() -> Any:
    """pynvml, the module; raises OSError where pynvml's ``nvmlInit`` could only fail for want
    of NVML's library. That is checked first, as pynvml would load it (Linux), because pynvml
    itself costs over 2 MiB of memory for good on every machine without a GPU driver."""
    if "pynvml" not in sys.modules and not sys.platform.startswith("win"):
        ctypes.CDLL("libnvidia-ml.so.1")  # what pynvml loads; OSError when it is missing
    return importlib.import_module("pynvml")


def gpu_samples(visible: Sequence[str] | None, limit: int | None, nvml: Any = None) -> list[Sample]:
    """GPUMemoryUtilization (%), GPUMemoryUsed (MB) and GPUUtilization (%) per GPU, DeviceId
    counting the GPUs as the workers see them; empty without NVML or GPUs."""
    try:
        lib = nvml if nvml is not None else import_nvml()
        lib.nvmlInit()
    except Exception:  # no pynvml, no driver, no libnvidia-ml: no GPU figures
        return []
    samples: list[Sample] = []
    try:
        for device_id, handle in enumerate(_devices(lib, visible, limit)):
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
            rates = lib.nvmlDeviceGetUtilizationRates(handle)
            percent = 100.0 * memory.used / memory.total if memory.total else 0.0
            samples += [
                Sample("GPUMemoryUtilization", percent, str(device_id)),
                Sample("GPUMemoryUsed", memory.used / MB, str(device_id)),
                Sample("GPUUtilization", float(rates.gpu), str(device_id)),
            ]
    except Exception as exc:  # a device gone or NVML failing mid-read: skip this round's rest
        logger.debug("GPU metrics unavailable: %s", exc)
    finally:
        try:
            lib.nvmlShutdown()
        except Exception:
            pass
    return samples


def sample_all(
    visible: Sequence[str] | None, limit: int | None, cpu_window: float | None
) -> list[Sample]:
    return host_samples(cpu_window=cpu_window) + gpu_samples(visible, limit)


async def run_system_sampler(
    metrics: ServerMetrics,
    interval_s: float,
    *,
    visible_gpus: Sequence[str] | None,
    number_of_gpu: int | None,
) -> None:
    """Sample at once, then every ``interval_s``, until cancelled.

    Error handling: a failing read is logged and the next round tries again; the server never
    stops for its metrics.
    """
    cpu_window: float | None = FIRST_CPU_WINDOW_S
    while True:
        try:
            samples = await trio.to_thread.run_sync(
                partial(sample_all, visible_gpus, number_of_gpu, cpu_window),
                abandon_on_cancel=True,
            )
        except Exception as exc:  # psutil failing (a vanished mount, say): try next round
            logger.warning("system metrics could not be read: %s", exc)
            samples = []
        cpu_window = None  # later rounds measure since the previous one
        for sample in samples:
            dims = {} if sample.device_id is None else {"DeviceId": sample.device_id}
            metrics.emit(sample.name, sample.value, **dims)
        await trio.sleep(interval_s)
