"""How a render worker process shares the CPU with the web tier."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("dhserve.serving")


def yield_cpu(nice: int) -> None:
    """Lowers the CPU priority of a render worker process by `nice`, before its threads start
    (they inherit it). Renders are throughput work and requests latency work: where the web
    tier shares the cores, its requests then run first (bench_serving.py, split layout at
    300 requests/s: p99 226 ms with it, 281 ms without). Not for a renderer inside a web
    worker (all-in-one): there the render thread holds the GIL the request threads wait for,
    so a thread the OS runs last while holding it would make them wait longer, not less."""
    if not nice or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()      # Linux keeps the nice value per thread
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(current + nice, 19))
    except OSError as exc:
        log.warning("could not lower the render worker's priority: %s", exc)
