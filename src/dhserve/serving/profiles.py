"""GPU profiles: how many web threads, how large a lip-sync batch and how much memory a
process may hold, chosen from the GPU's memory (NVML) so one setting fits the machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dhserve.runtime.gpu import GpuDevice

GIB_MB = 1024


@dataclass(frozen=True)
class Profile:
    name: str
    threads: int          # Gunicorn threads per web worker
    batch_size: int       # frames per lip-sync batch on the render worker
    max_memory_mb: int    # per process, RSS and GPU memory each; over it: recycle after the job


PROFILES = {p.name: p for p in (
    Profile("cpu", threads=8, batch_size=16, max_memory_mb=4 * GIB_MB),
    Profile("12gb", threads=8, batch_size=8, max_memory_mb=6 * GIB_MB),
    Profile("24gb", threads=16, batch_size=16, max_memory_mb=12 * GIB_MB),
    Profile("48gb", threads=32, batch_size=32, max_memory_mb=20 * GIB_MB),
)}
# A "48 GB" card reports 44-47 GiB and a 40 GB A100 fits that profile too; a "24 GB" card
# reports ~23.6 GiB, an A10 22.5 GiB.
THRESHOLDS_GIB = ((40, "48gb"), (20, "24gb"), (0, "12gb"))


def profile_for_memory(total_mb: float) -> Profile:
    """The profile for a GPU with `total_mb` MiB of memory."""
    return next(PROFILES[name] for gib, name in THRESHOLDS_GIB if total_mb >= gib * GIB_MB)


def choose_profile(requested: str, gpus: Sequence[GpuDevice],
                   no_gpu_reason: str = "no GPU") -> tuple[Profile, str]:
    """The profile to use and why: `requested` unless "auto"; auto sizes for the smallest of
    the GPUs the service renders on (`gpus`: NVML summaries), or the CPU profile without one."""
    if requested != "auto":
        return PROFILES[requested], "asked for (--profile / DHSERVE_PROFILE)"
    if not gpus:
        return PROFILES["cpu"], f"auto: {no_gpu_reason}"
    smallest = min(gpus, key=lambda gpu: gpu.memory_total_mb)
    return (profile_for_memory(smallest.memory_total_mb),
            (f"auto: GPU {smallest.index} ({smallest.name}) has "
            f"{smallest.memory_total_mb / GIB_MB:.1f} GiB"))
