"""The memory watchdog: Gunicorn has no worker memory limit (gunicorn #124, #1299, #3581), and
GPU memory is not in RSS. A process over GUNICORN_MAX_MEMORY recycles gracefully: after its
current job, never in the middle of one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from dhserve.runtime.gpu import process_gpu_memory_mb

MB = 2**20


@dataclass(frozen=True)
class MemoryUsage:
    rss_mb: float
    gpu_mb: float | None          # None: no GPU / NVML cannot tell


class MemoryWatchdog:
    """Compares this process's RSS, and its GPU memory where it may hold some, with a limit
    in MB (the same figure for each; 0 turns the watchdog off)."""

    def __init__(self, limit_mb: float, pid: int | None = None, check_gpu: bool = True):
        self.limit_mb = limit_mb
        self.pid = os.getpid() if pid is None else pid
        self.check_gpu = check_gpu
        self._process = psutil.Process(self.pid)

    def usage(self) -> MemoryUsage:
        rss = self._process.memory_info().rss / MB
        return MemoryUsage(round(rss, 1),
                           process_gpu_memory_mb(self.pid) if self.check_gpu else None)

    def over_limit(self) -> str | None:
        """Why the process should recycle (for the log), or None while within the limit."""
        if not self.limit_mb:
            return None
        usage = self.usage()
        if usage.rss_mb > self.limit_mb:
            return f"RSS {usage.rss_mb:.0f} MB is over the {self.limit_mb:g} MB limit"
        if usage.gpu_mb is not None and usage.gpu_mb > self.limit_mb:
            return f"GPU memory {usage.gpu_mb:.0f} MB is over the {self.limit_mb:g} MB limit"
        return None
