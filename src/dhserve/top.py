"""`dhserve top`: the render workers, the queue, recent jobs and the GPUs on one screen,
redrawn every second — what otherwise takes `nvidia-smi -l 1`, `ps aux | grep gunicorn` and
`tail -f log/dh.log` side by side. It reads the job store directly (and NVML), so it works
without the web tier, from any machine that reaches the store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from dhserve.config import Settings
from dhserve.errors import DhserveError, first_line
from dhserve.jobs.model import Job, JobState
from dhserve.jobs.store import JobStore
from dhserve.runtime.gpu import GpuDevice, read_gpus

MIB_PER_GIB = 1024.0        # NVML's figures are MiB
CLEAR = "\x1b[H\x1b[2J"
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"


class NoTerminal(DhserveError):
    """The live view asked for where there is no terminal to draw on."""

    code = "top.no_terminal"


@dataclass(frozen=True)
class WorkerView:
    """A render worker as `top` shows it: what it runs, how fast, and when it last spoke."""

    id: str
    host: str
    pid: int
    device: str
    backend: str
    state: str                  # starting, idle, busy, stopping, or silent (no heartbeat)
    job_id: str | None
    progress: int | None        # of its current job, 0..100
    stage: str | None
    fps: float | None           # output frames per second of its current render
    heartbeat_age: float        # seconds


@dataclass(frozen=True)
class Snapshot:
    """One look at the service, taken from the job store and NVML."""

    taken_at: float             # the store's clock, epoch seconds
    store: str                  # the store's URL, password hidden
    counts: dict[str, int]
    workers: list[WorkerView]
    recent: list[Job]
    gpus: tuple[GpuDevice, ...] = ()
    gpu_note: str = ""          # why there are no GPU figures


def take_snapshot(store: JobStore, settings: Settings, recent: int = 10) -> Snapshot:
    now, by_state, registered = store.overview()
    counts = {state.value: n for state, n in by_state.items()}
    held = any(w.job_id for w in registered)       # no job held: no query (top redraws 1/s)
    running = {job.id: job for job in store.list(JobState.RUNNING, limit=1000)} if held else {}
    workers = []
    for w in registered:
        job = running.get(w.job_id) if w.job_id else None
        workers.append(WorkerView(
            w.id, w.host, w.pid, w.device, w.backend,
            "silent" if w.silent(now, settings.heartbeat_seconds) else w.state, w.job_id,
            job.progress if job else None, job.stage if job else None,
            w.fps if job else None, w.heartbeat_age(now)))
    gpu = read_gpus(max_age=0.5)
    return Snapshot(now, store.engine.url.render_as_string(hide_password=True), counts,
                    workers, store.list(limit=recent) if recent else [],
                    gpu.usable_devices, "" if gpu.available else gpu.reason or "no GPU")


def snapshot_json(snap: Snapshot) -> str:
    """The snapshot as one JSON document for scripts: workers, queue, jobs (newest first),
    gpus; times are epoch seconds of the store's clock, ages seconds."""
    return json.dumps({
        "taken_at": snap.taken_at, "store": snap.store, "queue": snap.counts,
        "workers": [dataclasses.asdict(w) for w in snap.workers],
        "jobs": [{**dataclasses.asdict(job), "state": job.state.value} for job in snap.recent],
        "gpus": [d.to_json() for d in snap.gpus], "gpu_note": snap.gpu_note}, indent=2) + "\n"


def render_snapshot(snap: Snapshot, width: int | None = 120) -> str:
    """The snapshot as plain text: each line cut to `width` and long cells shortened with …;
    width None (a pipe, a file): nothing cut. Device and stage may hold spaces: scripts
    that want fields read --json."""
    cut = _cut if width is not None else (lambda text, _width: text)
    clock = datetime.fromtimestamp(snap.taken_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"dhserve top  {clock} UTC  store {snap.store}",
             "queue: " + "  ".join(f"{state} {n}" for state, n in snap.counts.items()),
             "",
             f"WORKERS ({len(snap.workers)})"]
    if snap.workers:
        lines.append(f"  {'WORKER':<30} {'DEVICE':<16} {'STATE':<8} {'JOB':<24} "
                     f"{'PROGRESS':<20} {'FPS':>6} {'HEARTBEAT':>9}")
        for w in snap.workers:
            progress = f"{w.progress:3d}% {w.stage}" if w.progress is not None else "-"
            fps = f"{w.fps:6.1f}" if w.fps is not None else f"{'-':>6}"
            lines.append(f"  {cut(w.id, 30):<30} {cut(w.device, 16):<16} {w.state:<8} "
                         f"{cut(w.job_id or '-', 24):<24} {cut(progress, 20):<20} {fps} "
                         f"{_age(w.heartbeat_age):>9}")
    else:
        lines.append("  no render worker registered (start one: dhserve worker)")
    lines += ["", "GPUS"]
    if snap.gpus:
        for g in snap.gpus:
            util = f"{g.utilization_percent:3d}%" if g.utilization_percent is not None \
                else "   -"
            used, total = g.memory_used_mb / MIB_PER_GIB, g.memory_total_mb / MIB_PER_GIB
            lines.append(f"  {g.index}  {cut(g.name, 28):<28} util {util}  memory "
                         f"{used:6.1f} / {total:.1f} GiB")
    else:
        lines.append(f"  none ({snap.gpu_note})")
    lines += ["", f"RECENT JOBS ({len(snap.recent)})"]
    for job in snap.recent:
        lines.append(f"  {cut(job.id, 30):<30} {job.state.value:<9} {_job_detail(job, snap)}")
    return "\n".join(line[:width] for line in lines) + "\n"


def _job_detail(job: Job, snap: Snapshot) -> str:
    if job.state is JobState.QUEUED:
        return f"waiting {_age(snap.taken_at - job.created_at)}"
    if job.state is JobState.RUNNING:
        return f"{job.progress:3d}% {job.stage}  on {job.worker_id or '-'}"
    took = (f" in {_age(job.finished_at - job.created_at)}" if job.finished_at else "")
    if job.state is JobState.SUCCEEDED:
        return f"done{took}  {job.result or ''}"
    return f"{job.error_code or job.state.value}{took}: {job.error_message or ''}"


def _age(seconds: float) -> str:
    """12.3s under a minute, 4m05s under an hour, then 2h07m: rounded to the unit shown
    first, then split (59.96 s is 1m00s, never 60.0s)."""
    tenths = round(max(seconds, 0.0) * 10)
    if tenths < 600:
        return f"{tenths / 10:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def run_top(store: JobStore, settings: Settings, once: bool = False, interval: float = 1.0,
            recent: int = 10, out: TextIO = sys.stdout, as_json: bool = False) -> int:
    """Prints one snapshot (`once`, or `as_json`), or redraws one every `interval` seconds
    until q, Ctrl-C or SIGTERM; returns the exit status."""
    if as_json:
        out.write(snapshot_json(take_snapshot(store, settings, recent)))
        return 0
    if once:        # lines cut to a terminal's width; whole into a pipe or a file
        width = shutil.get_terminal_size().columns if out.isatty() else None
        out.write(render_snapshot(take_snapshot(store, settings, recent), width))
        return 0
    if not out.isatty():
        raise NoTerminal("the live view needs a terminal; for a pipe or a file use --once "
                         "(text) or --json")
    import sqlalchemy as sa

    with _screen(out) as keys:
        while True:
            width = shutil.get_terminal_size((120, 40)).columns
            try:
                text = render_snapshot(take_snapshot(store, settings, recent), width)
            except sa.exc.SQLAlchemyError as exc:   # keep watching: the store may come back
                text = f"dhserve top: job store unreachable: {first_line(exc)}\n"
            out.write(CLEAR + text.replace("\n", "\x1b[K\n") + "\nq quits\x1b[J")
            out.flush()
            if keys(interval) in ("q", "Q"):
                break
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (kill, a closing session) ends top like Ctrl-C: the terminal is given back.
    Raising here is safe: top is one thread, and its clean-up takes no lock a query holds."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _screen(out: TextIO) -> Iterator[Any]:
    """The terminal in top's mode (alternate screen, keys unbuffered); yields a function
    that waits up to `timeout` seconds for a key. Ctrl-C ends it quietly."""
    tty = sys.stdin.isatty()
    saved = None
    previous = {signum: signal.signal(signum, _interrupt)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    if tty:
        import termios
        import tty as ttymode

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        ttymode.setcbreak(fd)

    def key(timeout: float) -> str | None:
        if not tty:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        return os.read(sys.stdin.fileno(), 1).decode(errors="replace") if ready else None

    out.write(ALT_SCREEN_ON)
    try:
        yield key
    except KeyboardInterrupt:
        pass
    finally:
        out.write(ALT_SCREEN_OFF)
        out.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
