"""GPU assignment (contract §8.4): how many GPUs the server uses and which one each worker gets.

The assigner is pure: GPU counts come in as values (from :func:`count_visible_gpus`, which takes
the environment and a count function), so it is tested without a GPU. The frontend never imports
torch: it counts with ``CUDA_VISIBLE_DEVICES`` or NVML (``pynvml``), and a machine without either
simply has no GPU, so workers run on CPU.

A worker's process gets the frontend's ``CUDA_VISIBLE_DEVICES`` as it is, as TorchServe does:
``gpu_id`` indexes the GPUs that variable leaves visible, and the handler picks ``cuda:{gpu_id}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from trioserve.metrics.system import import_nvml

logger = logging.getLogger(__name__)

CPU = "cpu"
GPU = "gpu"
NO_GPU = -1  # the Load frame's gpu_id for a CPU worker; the handler sees ``gpu_id`` None
# Describe's gpuUsage texts (contract §2.4), TorchServe's spelling included.
USAGE_NOT_APPLICABLE = "N/A"
USAGE_FAILED = "failed to obtained gpu usage"
MIB = 1 << 20


def visible_device_entries(environ: Mapping[str, str]) -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` names, or None when it is unset.

    CUDA's own reading: empty means no device; the list ends at the first entry that is neither
    an index nor a ``GPU-``/``MIG-`` UUID (``-1`` is the usual way to hide every GPU).
    """
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def nvml_device_count() -> int:
    """The number of GPUs NVML sees; 0 when pynvml, the driver or NVML itself is missing."""
    try:
        pynvml = import_nvml()
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError, a missing libnvidia-ml, anything: no usable GPU
        return 0


def count_visible_gpus(
    environ: Mapping[str, str], device_count: Callable[[], int] = nvml_device_count
) -> int:
    """GPUs this server may use: ``CUDA_VISIBLE_DEVICES`` when set, else ``device_count()``."""
    entries = visible_device_entries(environ)
    if entries is not None:
        return len(entries)
    return max(device_count(), 0)


def gpus_to_use(configured: int | None, visible: int) -> int:
    """``number_of_gpu``: at most the visible GPUs; None (the default) means all of them."""
    return visible if configured is None else min(configured, visible)


class GpuAssigner:
    """Server-wide GPU ids for new workers (contract §8.4).

    Without ``deviceIds`` every model shares one counter, pre-incremented: id = counter mod n,
    so the first worker of the server gets ``1 % n``. A model with ``deviceIds`` cycles over its
    own list from the first entry (:class:`ModelGpus`).
    """

    def __init__(self, number_of_gpu: int) -> None:
        self.number_of_gpu = max(number_of_gpu, 0)
        self._counter = 0

    def device_type(self, requested: str | None) -> str:
        """A model's device: GPU when there are GPUs, unless its yaml says ``deviceType: cpu``
        (a yaml ``gpu`` on a machine without GPUs is CPU: there is nothing else)."""
        if self.number_of_gpu == 0 or (requested or "").lower() == CPU:
            return CPU
        return GPU

    def valid_device_ids(self, ids: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The yaml ``deviceIds``, or None when unset or when any id is not a GPU in use (as
        TorchServe, one invalid id voids the list)."""
        if not ids:
            return None
        bad = [i for i in ids if not 0 <= i < self.number_of_gpu]
        if bad:
            logger.warning(
                "deviceIds %s: %s not among the %d GPUs in use; ignoring the list",
                list(ids),
                bad,
                self.number_of_gpu,
            )
            return None
        return ids

    def next_shared(self) -> int:
        """The next id of the server-wide round robin."""
        if self.number_of_gpu == 0:
            return NO_GPU
        self._counter = (self._counter + 1) % self.number_of_gpu
        return self._counter

    def for_model(self, device_type: str, device_ids: tuple[int, ...] | None) -> ModelGpus:
        return ModelGpus(self, device_type, device_ids)


class ModelGpus:
    """One model version's view of the assigner: its device and its own ``deviceIds`` cycle."""

    def __init__(
        self, assigner: GpuAssigner, device_type: str, device_ids: tuple[int, ...] | None
    ) -> None:
        self._assigner = assigner
        self._device_type = device_type
        self._device_ids = device_ids
        self._next = 0

    def next_gpu_id(self) -> int:
        """The GPU id for a new worker, or ``NO_GPU`` on CPU."""
        if self._device_type != GPU or self._assigner.number_of_gpu == 0:
            return NO_GPU
        if self._device_ids:
            gpu_id = self._device_ids[self._next % len(self._device_ids)]
            self._next += 1
            return gpu_id
        return self._assigner.next_shared()


def format_gpu_usage(gpu_id: int, utilization: int, memory_utilization: int, used_mib: int) -> str:
    """Describe's gpuUsage text, as TorchServe builds it from ``nvidia-smi --format=csv``."""
    return (
        f"gpuId::{gpu_id} utilization.gpu [%]::{utilization} % "
        f"utilization.memory [%]::{memory_utilization} % memory.used [MiB]::{used_mib} MiB"
    )


def _nvml_handle(nvml: Any, gpu_id: int, environ: Mapping[str, str]) -> Any:
    # gpu_id counts the devices CUDA_VISIBLE_DEVICES leaves visible; NVML counts all of them.
    entries = visible_device_entries(environ)
    if entries is not None and gpu_id < len(entries):
        entry = entries[gpu_id]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(gpu_id)


def gpu_usage(gpu_id: int, environ: Mapping[str, str], nvml: Any = None) -> str:
    """Describe's gpuUsage for a worker: "N/A" on CPU, else NVML's figures for its GPU, or
    TorchServe's failure text when NVML cannot give them. ``nvml`` defaults to pynvml."""
    if gpu_id < 0:
        return USAGE_NOT_APPLICABLE
    try:
        lib = nvml if nvml is not None else import_nvml()
        lib.nvmlInit()
        try:
            handle = _nvml_handle(lib, gpu_id, environ)
            rates = lib.nvmlDeviceGetUtilizationRates(handle)
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
        finally:
            lib.nvmlShutdown()
        return format_gpu_usage(gpu_id, int(rates.gpu), int(rates.memory), int(memory.used) // MIB)
    except Exception:  # NVMLError, no driver, a device gone: describe still answers
        return USAGE_FAILED


def log_gpus(number_of_gpu: int, visible: int) -> None:
    """The one line saying which devices workers get (logged when the assigner is made)."""
    if visible == 0:
        logger.info("no GPU found: workers run on CPU")
    elif number_of_gpu == 0:
        logger.info("number_of_gpu is 0: workers run on CPU (%d GPUs visible)", visible)
    else:
        logger.info("using %d of %d visible GPUs", number_of_gpu, visible)
