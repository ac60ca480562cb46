"""The multiprocess metrics folder (prometheus_client's): made fresh when the service starts
(in RAM by default, Settings.metrics_path: its files are memory-mapped, and on a full disk a
write to one faults the process with SIGBUS), removed when it stops, handed to every process
it starts, joined by a `dhserve worker` started by hand next to a
running service, and cleared of a process's live gauges once it exits. Each process builds
its metrics in the folder with metrics.init (serving/roles.py)."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from dhserve.config import Settings, active_metrics_dir

OWNER_FILE = "owner.pid"        # the process that made the folder, alive while it serves


def fresh_metrics_dir(path: Path) -> Path:
    """Makes `path`, empties it of the metrics files of processes that have exited (an
    earlier run's would count as this run's, and its gauges would never go away) and records
    this process as its owner. A live process's files stay: a worker started by hand that
    joined the folder before the web tier restarted goes on counting. Returns it, absolute."""
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    _remove_unwritten(path)
    (path / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


def remove_metrics_dir(path: Path) -> None:
    """When the service that made `path` (fresh_metrics_dir) stops: its files go, and the
    folder too unless a live process (a worker started by hand) still writes there. Only the
    owner removes it: a second service started by mistake must not empty a running one's."""
    try:
        if int((path / OWNER_FILE).read_text().strip()) != os.getpid():
            return
    except (OSError, ValueError):
        return
    _remove_unwritten(path)
    (path / OWNER_FILE).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass                                    # a live process's files are still there


def join_service_metrics(settings: Settings) -> Path | None:
    """For a process started by hand (`dhserve worker`, `dhserve jobs cancel`): when a
    service on this machine (`dhserve web`, Gunicorn) owns settings.metrics_path, this
    process's metrics go there too (metrics.init), so that service's /metrics counts them;
    its live gauges leave when it exits. Returns the folder, or None when there is no
    service to join."""
    given = active_metrics_dir()
    if given is not None:
        return given                            # started by `dhserve serve`, or set by hand
    folder = settings.metrics_path
    try:
        owner = int((folder / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(owner):
        return None
    folder = folder.resolve()
    atexit.register(mark_dead, os.getpid(), folder)
    return folder


def mark_dead(pid: int, folder: Path | None) -> None:
    """Process `pid` has exited: its live gauges (memory) leave the metrics; its counters and
    histograms stay, as counters must."""
    if folder is None:
        return
    mark_process_dead(pid, str(folder))


def _remove_unwritten(path: Path) -> None:
    """Removes the metrics files no live process writes any more: those of exited processes,
    and this process's own (made fresh: it has written none yet; removed: it writes no more)."""
    for stale in path.glob("*.db"):
        pid = _file_pid(stale)
        if pid == os.getpid() or not _alive(pid):
            stale.unlink(missing_ok=True)


def _file_pid(path: Path) -> int | None:
    """The process that wrote a metrics file (prometheus_client names them TYPE_PID.db)."""
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                             # another user's process: alive
    return True
