"""What makes a process one of the service's roles, defined once.

- A **render worker** (`dhserve worker`; under `dhserve serve` one per GPU, or one on the CPU):
  a fresh interpreter pinned to its GPU from its first instruction (its starter puts
  CUDA_VISIBLE_DEVICES in its environment), lower CPU priority than the web tier, its metrics
  in the service's folder, dh.log written by a thread of its own, a watch on the supervisor
  that started it, and a memory watchdog that recycles it after a job.
- A **web worker** (a Gunicorn worker, or Flask's threaded server): pinned to its renderer's
  GPU in the all-in-one layout, or seeing none (split: it can never make a CUDA context), its
  metrics in the service's folder, dh.log written by a thread of its own; in the all-in-one
  layout a renderer runs in a thread of it (start_renderer), its models loaded after the fork.

The Gunicorn master imports this module (through serving/hooks.py) and must stay free of the
engine and the app: those are named in PARTS and loaded by the process that takes the role.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dhserve import metrics
from dhserve.config import Settings, active_metrics_dir
from dhserve.logs import configure_logging, write_in_background
from dhserve.serving.cuda_guard import NVML_CHECK
from dhserve.serving.metrics_files import join_service_metrics
from dhserve.serving.plan import RenderDevice, ServingPlan
from dhserve.serving.priority import yield_cpu
from dhserve.serving.supervisor import ChildSpec, watch_supervisor
from dhserve.serving.watchdog import MemoryWatchdog

if TYPE_CHECKING:
    from dhserve.jobs.store import JobStore
    from dhserve.jobs.worker import RenderWorker
    from dhserve.serving.renderer import InProcessRenderer

# Loaded by name, by the process that takes the role: never by the Gunicorn master, never the
# engine in a web-only process (Gunicorn's SUPPORTED_WORKERS does the same for worker classes).
PARTS = {
    "render_worker": "dhserve.jobs.worker:RenderWorker",           # the engine, ONNX Runtime
    "renderer": "dhserve.serving.renderer:InProcessRenderer",      # the same, in a web worker
    "app": "dhserve.api:create_app",                               # Flask and the API
}


def load(part: str) -> Any:
    """The class or function PARTS names `part`, its module imported now."""
    module, _, name = PARTS[part].partition(":")
    return getattr(importlib.import_module(module), name)


# -- render workers ------------------------------------------------------------------------------

def render_worker_process(device: RenderDevice, env: dict[str, str]) -> ChildSpec:
    """How `dhserve serve` starts the render worker of `device`: a fresh interpreter (never a
    fork of a process that may hold CUDA), pinned to its GPU before anything can initialise
    CUDA (CUDA_VISIBLE_DEVICES in its environment)."""
    return ChildSpec(f"renderer {device.label}", [sys.executable, "-m", "dhserve.cli", "worker"],
                     {**env, **device.environment()})


def become_render_worker(settings: Settings, max_memory_mb: float,
                         log_level: str = "INFO") -> RenderWorker:
    """Turns this process (`dhserve worker`) into a render worker; returns its loop, to run.
    `max_memory_mb`: RSS or GPU memory over it recycles the worker after its job (0: off)."""
    yield_cpu(settings.render_nice)             # before any thread starts: they inherit it
    configure_logging(settings, log_level)
    metrics.init(join_service_metrics(settings))    # `dhserve web`'s /metrics counts its renders
    write_in_background()                       # a render worker never forks
    worker = load("render_worker")(settings,
                                   recycle_check=MemoryWatchdog(max_memory_mb).over_limit)
    watch_supervisor(worker.stop)               # started by `dhserve serve`: not an orphan
    return worker


def count_in_service(settings: Settings, store: JobStore) -> None:
    """For a command started by hand that finishes jobs (`dhserve jobs cancel`): the outcomes
    `store` records count in the /metrics of a service running on this machine (in its
    metrics folder), or in this process's memory where none runs."""
    metrics.init(join_service_metrics(settings))
    store.on_finished = metrics.count_finished


# -- web workers ---------------------------------------------------------------------------------

def web_process(server: str, env: dict[str, str]) -> ChildSpec:
    """How `dhserve serve` starts its web tier: Gunicorn ("gunicorn", its stderr kept to say
    why a start failed) or Flask's threaded server ("flask")."""
    if server == "gunicorn":
        return ChildSpec("web (gunicorn)", [sys.executable, "-m", "dhserve.serving.web"], env,
                         capture_stderr=True)
    return ChildSpec("web (flask)", [sys.executable, "-m", "dhserve.serving.flask_server"], env)


def become_web_worker(plan: ServingPlan) -> str:
    """Turns this process into a web worker of `plan`, before its app is made (Gunicorn's
    post_fork, or Flask's server as it starts); returns where it renders, for the log."""
    os.environ.setdefault(*NVML_CHECK)
    write_in_background()                       # a web worker never forks
    if plan.renders_in_web_workers:
        device = plan.devices[0]
        os.environ.update(device.environment())
        if device.gpu is None:
            where = "renders on the CPU (no GPU selected)"
        else:
            gpu = next(g for g in plan.gpus if g.index == device.gpu)
            where = (f"GPU ok: GPU {device.gpu} ({gpu.name}, "
                     f"{gpu.memory_total_mb / 1024:.1f} GiB) as cuda:0")
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""    # web only: it can never make a context
        where = "web only, GPUs hidden (renderers are separate processes)"
    metrics.init(active_metrics_dir())          # the folder its master or `dhserve serve` made
    return where


def web_watchdog(plan: ServingPlan) -> MemoryWatchdog:
    """A web-only worker's memory limit (its RSS: it holds no GPU memory)."""
    return MemoryWatchdog(plan.max_memory_mb, check_gpu=False)


def start_renderer(settings: Settings, plan: ServingPlan,
                   on_recycle: Callable[[str], None]) -> InProcessRenderer | None:
    """All-in-one: starts the renderer of this web worker (the render loop in a thread, its
    models loaded in this process, after the fork). None in the split layout."""
    if not plan.renders_in_web_workers:
        return None
    renderer = load("renderer").from_plan(settings, plan, on_recycle)
    renderer.start()
    return renderer
