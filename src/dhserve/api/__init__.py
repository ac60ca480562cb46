"""dhserve's HTTP API: the Flask app factory. The app talks to the job store and the storage
only (no models, no CUDA), so any number of web workers may serve it.

    gunicorn -k gthread 'dhserve.api:create_app()'
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from flask import Flask, Request, Response, g, request
from flask.json.provider import DefaultJSONProvider

from dhserve import __version__
from dhserve.api import auth, health, heygem, metrics, openapi, problems, ui, v1
from dhserve.api.context import EXTENSION, ApiContext
from dhserve.config import Settings
from dhserve.jobs.store import JobStore

access_log = logging.getLogger("dhserve.api.access")
UPLOAD_SLACK_BYTES = 1 << 20        # form fields and multipart framing around the two files
MAX_JSON_BYTES = 1 << 20            # every body but an upload is small
UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
LOGGED_JOB_CHARS = 64               # of a job id or code, the access log shows this many


def create_app(settings: Settings | None = None, store: JobStore | None = None) -> Flask:
    """The app, with its own job store connection (made here, so after Gunicorn forks)."""
    settings = settings or Settings.from_env()
    _default_logging()
    app = Flask(__name__, static_folder=None)
    app.request_class = _upload_request_class(settings.uploads_dir)
    app.config["MAX_CONTENT_LENGTH"] = int(2 * settings.max_input_mb * 2**20) + \
        UPLOAD_SLACK_BYTES
    if isinstance(app.json, DefaultJSONProvider):     # Flask's own, always, here
        app.json.sort_keys = True       # HeyGem's envelopes have sorted keys
    store = store or JobStore.from_settings(settings)
    settings.temp_dir.mkdir(parents=True, exist_ok=True)
    app.extensions[EXTENSION] = ApiContext(settings, store)
    problems.install(app)
    auth.install(app, settings)
    for module in (heygem, v1, health, openapi, ui, metrics):
        app.register_blueprint(module.blueprint)
    _install_body_limit(app)
    _install_access_log(app)
    app.logger.info("dhserve %s API: data dir %s, store %s", __version__,
                    settings.data_dir.resolve(),
                    store.engine.url.render_as_string(hide_password=True))
    return app


def _upload_request_class(uploads_dir: Path) -> type[Request]:
    """Requests whose uploaded files spool into the data dir's uploads/ (an anonymous file,
    gone when closed), not the system /tmp: often a small tmpfs, i.e. RAM."""
    spool = uploads_dir / ".spool"

    class UploadRequest(Request):
        def _get_file_stream(self, total_content_length, content_type, filename=None,
                             content_length=None) -> BinaryIO:
            spool.mkdir(parents=True, exist_ok=True)
            return tempfile.TemporaryFile(dir=spool)

    return UploadRequest


def _install_body_limit(app: Flask) -> None:
    """Only an upload to /v1/jobs may be large; every other body is held to 1 MiB."""

    @app.before_request
    def _limit_body() -> None:
        if not (request.endpoint == "v1.create_job" and request.mimetype ==
                "multipart/form-data"):
            request.max_content_length = MAX_JSON_BYTES


def _install_access_log(app: Flask) -> None:
    """One line per request, with the job code where there is one."""

    @app.before_request
    def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        job = g.get("job_id") or (request.view_args or {}).get("job_id") or \
            request.args.get("code")
        outcome = g.get("outcome")
        access_log.info("%s %s %d %.1fms%s%s", request.method, _printable(request.path),
                        response.status_code, elapsed,
                        f" job={_shortened(job)}" if job else "",
                        f" heygem={outcome}" if outcome is not None else "")
        return response


def _shortened(job: str, limit: int = LOGGED_JOB_CHARS) -> str:
    """A job id or HeyGem `code` as the log shows it: a client's 20 kB code is not a 20 kB
    log line (a valid id is at most 128 characters, but /easy/query's code is not checked)."""
    return _printable(job, limit) + ("…" if len(job) > limit else "")


def _printable(text: str, limit: int = 200) -> str:
    """Client-chosen text as one safe log field (no forged lines, no terminal escapes)."""
    return UNPRINTABLE.sub("?", text[:limit])


def _default_logging() -> None:
    """Logs to stderr with the process id when no one configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: "
                                   "%(message)s")
