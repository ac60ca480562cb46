"""The system group: Python, the OS, CPUs, memory and the free disk where the data dir lives
(the settings' own lines are made where they are read, in doctor.run_checks)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

import psutil

from dhserve.doctor.base import (
    BYTES_PER_GIB,
    BYTES_PER_MIB,
    ERROR,
    OK,
    WARNING,
    Check,
    Facts,
    guarded,
)
from dhserve.fsutil import existing_parent

# A few hours of 1080p results, the template cache, logs
DISK_WARN_BYTES = 5 * BYTES_PER_GIB
# One render's output and its temporary file may not fit
DISK_ERROR_BYTES = 500 * BYTES_PER_MIB
RAM_WARN_BYTES = 2 * BYTES_PER_GIB     # MediaPipe + ONNX Runtime + the frame cache of a render
SUPPORTED_PYTHON = ((3, 10), (3, 12))  # mediapipe 0.10.21 wheels exist for these


def system_checks(facts: Facts) -> list[Check]:
    checks = []
    version = sys.version_info[:2]
    low, high = SUPPORTED_PYTHON
    text = f"Python {platform.python_version()} ({sys.executable})"
    if low <= version <= high:
        checks.append(Check("system", "python", OK, text,
                            data={"version": platform.python_version()}))
    else:
        checks.append(Check(
            "system", "python", WARNING, f"{text}: outside the supported 3.10–3.12",
            "mediapipe 0.10.21 (face analysis) ships wheels for Python 3.10–3.12 only; make the "
            "venv with one of them", "python3.11 -m venv .venv && ./dev setup",
            data={"version": platform.python_version()}))
    os_text = f"{platform.system()} {platform.release()} ({platform.machine()})"
    if sys.platform == "win32":
        checks.append(Check("system", "os", WARNING, f"{os_text}: Gunicorn does not run here",
                            "dhserve serve falls back to Flask's threaded server on Windows; "
                            "use Linux (or WSL2) for production serving",
                            data={"platform": platform.platform()}))
    else:
        checks.append(Check("system", "os", OK, os_text, data={"platform": platform.platform()}))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    checks.append(Check("system", "cpus", OK,
                        f"{os.cpu_count()} CPUs, {usable} usable by this process",
                        data={"count": os.cpu_count(), "usable": usable}))
    checks.extend(guarded("system", lambda: [_memory()], "memory"))
    checks.extend(guarded("system", lambda: [_disk(facts.settings.data_dir)], "disk"))
    return checks


def _memory() -> Check:
    memory = psutil.virtual_memory()
    mem_text = (f"{memory.total / BYTES_PER_GIB:.1f} GiB RAM, "
                f"{memory.available / BYTES_PER_GIB:.1f} GiB available")
    mem_data = {"total_bytes": memory.total, "available_bytes": memory.available}
    if memory.available < RAM_WARN_BYTES:
        return Check("system", "memory", WARNING, mem_text,
                     "a render needs about 1–2 GiB (MediaPipe, ONNX Runtime, the frame cache); "
                     "free memory, or lower DHSERVE_FRAME_CACHE_MB and GUNICORN_MAX_MEMORY so "
                     "workers recycle before the OOM killer strikes", data=mem_data)
    return Check("system", "memory", OK, mem_text, data=mem_data)


def _disk(data_dir: Path) -> Check:
    where = existing_parent(data_dir)
    usage = shutil.disk_usage(where)
    disk_text = (f"{usage.free / BYTES_PER_GIB:.1f} GiB free of "
                 f"{usage.total / BYTES_PER_GIB:.1f} GiB at {where} "
                 f"(data dir {data_dir.absolute()})")
    disk_data = {"path": str(where), "free_bytes": usage.free, "total_bytes": usage.total}
    if usage.free < DISK_WARN_BYTES:
        return Check(
            "system", "disk", ERROR if usage.free < DISK_ERROR_BYTES else WARNING, disk_text,
            "results, uploads and the template cache live in the data dir; free space there, "
            "lower DHSERVE_RETENTION_DAYS (finished jobs and their files are deleted after it) "
            "or point DHSERVE_DATA_DIR at a larger disk",
            f"du -sh {data_dir}/* ; export DHSERVE_RETENTION_DAYS=2", data=disk_data)
    return Check("system", "disk", OK, disk_text, data=disk_data)
