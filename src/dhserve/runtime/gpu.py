"""GPU facts from NVML (nvidia-ml-py): safe in any process, because NVML never creates a CUDA
context; the web tier and the Gunicorn master may ask."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    utilization_percent: int | None


_recent: tuple[float, dict[str, Any]] | None = None


def gpu_summary(max_age: float = 0.0) -> dict[str, Any]:
    """{"available": bool, "driver": str, "devices": [...]} or, where NVML cannot be used
    (no NVIDIA driver, no GPU), {"available": False, "reason": ...}. With `max_age`, a
    summary read at most that many seconds ago is reused (NVML's init costs milliseconds to
    tens of milliseconds: too much for every /health request)."""
    global _recent
    recent = _recent
    if max_age and recent is not None and time.monotonic() - recent[0] <= max_age:
        return recent[1]
    summary = _read_gpu_summary()
    _recent = (time.monotonic(), summary)
    return summary


def _read_gpu_summary() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML: {exc}"}
    try:
        devices = [_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        return {"available": bool(devices), "driver": driver,
                "devices": [asdict(d) for d in devices]}
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML: {exc}"}
    finally:
        pynvml.nvmlShutdown()


def _device(pynvml: Any, index: int) -> GpuDevice:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:        # not supported on some (MIG, virtual) devices
        utilization = None
    return GpuDevice(index, name.decode() if isinstance(name, bytes) else str(name),
                     round(memory.total / MIB, 1), round(memory.used / MIB, 1), utilization)


def process_gpu_memory_mb(pid: int) -> float | None:
    """GPU memory held by process `pid` on all GPUs, in MiB; None where NVML cannot tell (no
    GPU, no driver). Inside a container NVML may list host pids: then this reads 0."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:   # None where not reported
                    used += proc.usedGpuMemory
        return round(used / MIB, 1)
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
