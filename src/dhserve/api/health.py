"""Is the service up, can it render, and what is it doing: /livez, /readyz, /health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from dhserve import __version__
from dhserve.api.context import context, iso_time
from dhserve.engine.lipsync import resolve_backend
from dhserve.fsutil import free_mb
from dhserve.jobs.model import JobState
from dhserve.runtime.gpu import read_gpus
from dhserve.serving.plan import FLASK_SERVER

blueprint = Blueprint("health", __name__)
GPU_SUMMARY_MAX_AGE_S = 2.0


@blueprint.get("/livez")
def livez() -> Response:
    """The process answers; touches nothing else (no store, no auth)."""
    return jsonify({"status": "alive"})


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 only while a render worker with its models loaded heartbeats: a load balancer
    sends work here only when the work can be done."""
    ready = context().ready_workers()
    if ready:
        return jsonify({"status": "ready", "workers": len(ready)}), 200
    return jsonify({"status": "not ready",
                    "reason": "no render worker with loaded models has sent a heartbeat "
                              "recently; start one with `dhserve worker`"}), 503


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    ctx = context()
    settings = ctx.settings
    counts = ctx.store.counts()
    now, registered = ctx.workers()
    workers = [{"id": w.id, "host": w.host, "pid": w.pid, "device": w.device,
                "backend": w.backend, "state": w.state if alive else "silent", "job": w.job_id,
                "ready": w.ready and alive, "last_heartbeat": iso_time(w.heartbeat_at),
                "heartbeat_age_seconds": round(w.heartbeat_age(now), 3)}
               for w, alive in registered]     # silent ones too: a dead worker shows here
    ready = any(w["ready"] and w["state"] != "stopping" for w in workers)
    storage = storage_state(settings.data_dir, settings.min_free_mb)
    reasons = ([] if ready else ["workers: no render worker with loaded models heartbeats"]) \
        + ([] if storage["ok"] else [f"storage: {storage['reason']}"])
    return jsonify({
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "version": __version__,
        "device": settings.device,
        "backend": resolve_backend(settings.backend, settings),
        "storage": storage,
        "queue": {"depth": counts[JobState.QUEUED],
                  "jobs": {state.value: n for state, n in counts.items()}},
        "workers": workers,
        "serving": serving_now(ctx.serving(), request.environ.get("SERVER_SOFTWARE", "")),
        "gpu": read_gpus(max_age=GPU_SUMMARY_MAX_AGE_S).to_json(),
    }), 200


def storage_state(data_dir: Path, min_free_mb: float) -> dict[str, Any]:
    """Free space in the data dir against DHSERVE_MIN_FREE_MB: below it new jobs are refused
    (storage.full) and the service is degraded; queries of existing jobs still answer."""
    try:
        free = free_mb(data_dir)
    except OSError as exc:
        return {"ok": False, "free_mb": None, "min_free_mb": min_free_mb,
                "reason": f"cannot read the data dir's free space ({exc.strerror or exc})"}
    state: dict[str, Any] = {"ok": free >= min_free_mb, "free_mb": round(free, 1),
                             "min_free_mb": min_free_mb}
    if not state["ok"]:
        state["reason"] = (f"{free:.1f} MB free in the data dir, below DHSERVE_MIN_FREE_MB "
                           f"({min_free_mb:g}): new jobs are refused (storage.full)")
    return state


def serving_now(plan: dict[str, Any], software: str) -> dict[str, Any]:
    """The plan's summary, with what really serves HTTP (the WSGI server's own name): under
    Flask's fallback server there are no Gunicorn workers, whatever the plan would have had."""
    summary = dict(plan)
    if "error" in summary:
        return summary
    name = software.partition("/")[0].lower()
    if name == "gunicorn":
        summary["server"] = (f"gunicorn ({summary['web_workers']} x {summary['worker_class']} "
                             f"worker(s), {summary['threads']} thread(s))")
    elif name == "werkzeug":          # one process, a thread per connection, no keep-alive
        summary.update(server=FLASK_SERVER, web_workers=1, worker_class=None, threads=None,
                       keepalive=0)
    else:
        summary["server"] = software or "unknown"
    return summary
