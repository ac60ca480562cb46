"""Old name of dhserve.top (`dhserve top`), kept while tests/test_metrics.py imports it from
here; remove once it imports dhserve.top."""

from dhserve.top import Snapshot, WorkerView, render_snapshot, run_top, snapshot_json, take_snapshot

__all__ = ["Snapshot", "WorkerView", "render_snapshot", "run_top", "snapshot_json",
           "take_snapshot"]
