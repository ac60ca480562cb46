"""GET /metrics (Prometheus text format), the timing of every request by route, and the count
of the jobs that the API's store finishes (refusals recorded on arrival, cancels of queued jobs).

Needs the API key when one is set, like every route but /livez (Prometheus sends it with
`authorization: {credentials: …}` in its scrape config)."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from flask.signals import request_finished, request_started

from dhserve import metrics
from dhserve.api.context import EXTENSION, context
from dhserve.api.health import GPU_SUMMARY_MAX_AGE_S
from dhserve.jobs.model import HEARTBEAT_STALE_FACTOR

blueprint = Blueprint("metrics", __name__)
UNMATCHED = "unmatched"         # no route (404, 405): one label value, whatever the path
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@blueprint.get("/metrics")
def metrics_text() -> Response:
    ctx = context()
    metrics.record_rss()
    collector = metrics.ServiceCollector(
        ctx.store, ctx.settings.heartbeat_seconds * HEARTBEAT_STALE_FACTOR,
        GPU_SUMMARY_MAX_AGE_S)
    return Response(metrics.exposition(collector), mimetype=None,
                    content_type=metrics.CONTENT_TYPE)


@blueprint.record_once
def _install(state) -> None:
    """Times every request of the app, from before the first before_request hook (the API
    key check included) to after the last after_request hook; counts the outcomes its store
    records."""
    app: Flask = state.app
    app.extensions[EXTENSION].store.on_finished = metrics.count_finished
    request_started.connect(_started, app, weak=False)
    request_finished.connect(_finished, app, weak=False)
    metrics.record_rss()


def _started(sender: Flask, **_) -> None:
    g.metrics_started = time.perf_counter()


def _finished(sender: Flask, response: Response, **_) -> None:
    started = g.get("metrics_started")
    if started is None:
        return
    rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    metrics.observe_request(rule, method, response.status_code, time.perf_counter() - started)
    metrics.record_rss(throttle=True)
