"""The fallback web server: Flask's threaded server (Werkzeug), for when Gunicorn cannot be
imported or fails to boot, or when asked (`--mode flask`). One process; in the all-in-one
layout it renders in a background thread too. No worker recycling: a recycle ends the process
and the launcher starts it again."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from werkzeug.serving import make_server

from dhserve.api import create_app
from dhserve.config import ServingSettings, Settings
from dhserve.logs import configure_logging
from dhserve.serving.plan import plan_serving
from dhserve.serving.roles import become_web_worker, start_renderer
from dhserve.serving.supervisor import watch_supervisor
from dhserve.signals import handle_signals

log = logging.getLogger("dhserve.serving")


def serve_flask(settings: Settings, layout: str) -> int:
    """Serves until the process is told to stop or its renderer recycles; returns the exit
    status."""
    plan = plan_serving(settings, ServingSettings.from_env(), default_layout=layout)
    become_web_worker(plan)             # GPU pinning, metrics, dh.log's writer thread
    logging.getLogger("werkzeug").setLevel(logging.WARNING)    # dhserve logs each request
    host, _, port = plan.bind.rpartition(":")
    server = make_server(host.strip("[]") or "127.0.0.1", int(port), create_app(settings),
                         threaded=True)
    renderer = start_renderer(
        settings, plan, lambda reason: threading.Thread(target=server.shutdown).start())

    def on_signal(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    def on_hup(*_):
        if renderer is not None:        # recycle: the job finishes, then the server stops
            renderer.recycle("SIGHUP")
        else:
            log.info("SIGHUP: nothing to recycle in Flask's server (no worker processes)")

    handle_signals({signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGHUP: on_hup})
    watch_supervisor(on_signal)
    for warning in plan.warnings:
        log.warning("%s", warning)
    log.info("Flask threaded server listening at http://%s (%d)", plan.bind, os.getpid())
    server.serve_forever()
    if renderer is not None:
        renderer.stop(settings.stop_grace_seconds)
        renderer.join(settings.stop_grace_seconds + 5)
    return 0


def main() -> None:
    """Entry point of the web child process in Flask mode; the plan comes from the variables
    `dhserve serve` set."""
    settings = Settings.from_env()
    configure_logging(settings)
    sys.exit(serve_flask(settings, "split"))


if __name__ == "__main__":
    main()
