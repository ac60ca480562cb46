"""The optional API key: with DHSERVE_API_KEY set, every route but /livez and the web page's
own files (which hold no data) needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from dhserve.api import ui
from dhserve.api.problems import problem

OPEN_ENDPOINTS = frozenset({"health.livez", *ui.OPEN_ENDPOINTS})


def install(app: Flask, api_key: str) -> None:
    if not api_key:
        return
    expected = api_key.encode()

    @app.before_request
    def _require_key() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              expected):
            return None
        return problem(401, "auth.required", "this server needs an API key: send "
                       "'Authorization: Bearer <key>'")
