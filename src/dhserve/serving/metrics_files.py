"""The multiprocess metrics folder (prometheus_client's): made fresh when the service starts,
handed to every process it starts, and cleared of a process's live gauges once it exits.
Imported by the Gunicorn master: prometheus_client is imported only once the folder is set."""

from __future__ import annotations

from pathlib import Path


def fresh_metrics_dir(path: Path) -> Path:
    """Makes `path` and empties it of metrics files: an earlier run's would count as this
    run's, and its processes' gauges would never go away. Returns it, absolute."""
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def mark_dead(pid: int, folder: Path | None) -> None:
    """Process `pid` has exited: its live gauges (memory) leave the metrics; its counters and
    histograms stay, as counters must."""
    if folder is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(folder))
