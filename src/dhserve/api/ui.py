"""The web page: GET / and its script and style sheet, plain files from api/ui/ (no build
step). They hold no data, so they load without the API key; the page asks for the key when
the API answers 401 and uses /v1/jobs and /health like any other client."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

blueprint = Blueprint("ui", __name__)

FILES = Path(__file__).with_name("ui")
# One fixed route per file: nothing else in the folder is served, and these need no key.
OPEN_ENDPOINTS = frozenset({"ui.index", "ui.app_js", "ui.app_css"})
# The page loads nothing from elsewhere, and nothing else may be injected into it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'self'")


def _send(name: str, mimetype: str) -> Response:
    response = send_from_directory(FILES, name, mimetype=mimetype, max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/")
def index() -> Response:
    return _send("index.html", "text/html")


@blueprint.get("/ui/app.js")
def app_js() -> Response:
    return _send("app.js", "text/javascript")


@blueprint.get("/ui/app.css")
def app_css() -> Response:
    return _send("app.css", "text/css")
