"""GPU facts from NVML (nvidia-ml-py): safe in any process, because NVML never creates a CUDA
context; the web tier and the Gunicorn master may ask."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML numbers it (its index is what DHSERVE_GPUS names); memory in MiB."""

    index: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    utilization_percent: int | None

    @property
    def memory_free_mb(self) -> float:
        return self.memory_total_mb - self.memory_used_mb

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuDevice:
        return cls(int(data["index"]), str(data["name"]), float(data["memory_total_mb"]),
                   float(data["memory_used_mb"]), data.get("utilization_percent"))


@dataclass(frozen=True)
class GpuSummary:
    """The GPUs NVML sees and its driver, or why NVML cannot be used (`reason`: no NVIDIA
    driver, no GPU). `error`: a failure beyond NVML's own errors, as the doctor keeps it."""

    available: bool
    driver: str = ""
    devices: tuple[GpuDevice, ...] = ()
    reason: str | None = None
    error: str | None = None

    @property
    def usable_devices(self) -> tuple[GpuDevice, ...]:
        """The devices when NVML works and sees one; none otherwise."""
        return self.devices if self.available else ()

    @classmethod
    def unusable(cls, reason: str, error: str | None = None) -> GpuSummary:
        return cls(False, reason=reason, error=error)

    def to_json(self) -> dict[str, Any]:
        """As /health, `dhserve doctor --json` and `dhserve top --json` show it:
        {"available", "driver", "devices": [...]}, or {"available": false, "reason"}."""
        if self.reason is not None:
            found: dict[str, Any] = {"available": False, "reason": self.reason}
            if self.error is not None:
                found["error"] = self.error
            return found
        return {"available": self.available, "driver": self.driver,
                "devices": [d.to_json() for d in self.devices]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuSummary:
        """The summary to_json wrote (tests and pure decisions give one as data)."""
        return cls(bool(data.get("available")), str(data.get("driver", "")),
                   tuple(GpuDevice.from_json(d) for d in data.get("devices", [])),
                   data.get("reason"), data.get("error"))


_recent: tuple[float, GpuSummary] | None = None


def read_gpus(max_age: float = 0.0) -> GpuSummary:
    """What NVML sees. With `max_age`, a summary read at most that many seconds ago is
    reused (NVML's init costs milliseconds to tens of milliseconds: too much for every
    /health request)."""
    global _recent
    recent = _recent
    if max_age and recent is not None and time.monotonic() - recent[0] <= max_age:
        return recent[1]
    summary = _read_nvml()
    _recent = (time.monotonic(), summary)
    return summary


def gpu_summary(max_age: float = 0.0) -> dict[str, Any]:
    """read_gpus as JSON: {"available": bool, "driver": str, "devices": [...]} or, where NVML
    cannot be used, {"available": False, "reason": ...}."""
    return read_gpus(max_age).to_json()


def _read_nvml() -> GpuSummary:
    try:
        import pynvml
    except ImportError:
        return GpuSummary.unusable("nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuSummary.unusable(f"NVML: {exc}")
    try:
        devices = tuple(_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        return GpuSummary(bool(devices), driver, devices)
    except pynvml.NVMLError as exc:
        return GpuSummary.unusable(f"NVML: {exc}")
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
