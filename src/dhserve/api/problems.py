"""Errors as HTTP answers: RFC 9457 problem details carrying dhserve's stable codes."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from dhserve.api.context import context
from dhserve.api.heygem import http_error_envelope
from dhserve.errors import (
    DhserveError,
    InputError,
    QueueFull,
    RequestTooLarge,
    StoreUnreachable,
    first_line,
)
from dhserve.jobs.admission import public_text

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
          409: "Conflict", 410: "Gone", 413: "Content too large", 416: "Range not satisfiable",
          422: "Unprocessable input",
          429: "Too many requests", 500: "Internal error", 503: "Service unavailable",
          507: "Insufficient storage"}
RETRY_AFTER_S = 5


def problem(status: int, code: str, detail: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"type": f"urn:dhserve:error:{code}",
                            "title": TITLES.get(status, "Error"), "status": status,
                            "code": code, "detail": detail}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_TYPE
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dhserve"'
    return response


def problem_for(exc: DhserveError, detail: str | None = None) -> Response:
    """The error as a problem document with the status its class declares."""
    field = exc.field if isinstance(exc, InputError) else None
    if detail is None:
        detail = exc.reason if isinstance(exc, InputError) else exc.message
    response = problem(exc.http_status, exc.code, detail, field)
    if isinstance(exc, QueueFull):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def error_response(exc: DhserveError) -> Response:
    detail = exc.reason if isinstance(exc, InputError) else exc.message
    return problem_for(exc, public_text(detail, context().settings))   # no path of this server


def install(app: Flask) -> None:
    """Every error leaves as a problem document, HTTP's own (404, 405, 413) included."""

    @app.errorhandler(DhserveError)
    def _dhserve_error(exc: DhserveError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)      # a blueprint's own handler (HeyGem's) comes first
    def _http_error(exc: HTTPException) -> Response:
        if request.path.startswith("/easy/"):     # routing errors come before blueprints
            return http_error_envelope(exc)
        status = exc.code or 500
        if isinstance(exc, RequestEntityTooLarge):
            response = problem_for(RequestTooLarge(
                "request body is over the limit of "
                f"{(request.max_content_length or 0) / 2**20:g} MB"))
        else:
            response = problem(status, f"http.{status}", exc.description or exc.name)
        for name, value in exc.get_response().headers.items():   # Allow, Content-Range
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, DBAPIError):
            log.error("job store unreachable: %s", first_line(exc))
            return problem_for(StoreUnreachable("the job store cannot be reached; "
                                                "retry later"))
        log.exception("unexpected error")
        return problem_for(DhserveError(f"internal error: {type(exc).__name__}"))
