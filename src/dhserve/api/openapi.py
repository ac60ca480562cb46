"""/openapi.json: the OpenAPI 3.1 description of what the app does (the test suite checks
the app's responses against it)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from dhserve import __version__
from dhserve.jobs.model import CONTENT_TYPES

blueprint = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, media: str = "application/json",
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {media: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Problem"), "problem details", "application/problem+json",
                          PROBLEM_HEADERS.get(s)) for s in statuses}


NULLABLE_STR = {"type": ["string", "null"]}
PROBLEM_HEADERS: dict[int, dict[str, Any]] = {429: {"Retry-After": {"schema": {"type": "string"}}},
                   416: {"Content-Range": {"schema": {"type": "string"},
                                           "description": "bytes */<size>"}}}
JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}}
FLAG = {"type": ["integer", "string", "boolean"], "description": "0 or 1"}
UNAUTHORIZED = _problems(401)

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "code", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"},
                       "code": {"type": "string", "description": "stable error code"},
                       "detail": {"type": "string"},
                       "field": {"type": "string", "description": "the input at fault"}}},
    "HeyGemSubmit": {
        "type": "object", "required": ["audio_url", "video_url", "code"],
        "properties": {"audio_url": {"type": "string"}, "video_url": {"type": "string"},
                       "code": {"type": "string"}, "chaofen": FLAG, "watermark_switch": FLAG,
                       "digital_auth": FLAG, "pn": FLAG,
                       "background": {"type": "string", "description": "dhserve's own: keep, "
                                      "#rrggbb, or an image (URL, name or path, resolved as "
                                      "video_url is); transparent is refused (the result is "
                                      "an .mp4)"}}},
    "HeyGemEnvelope": {
        "type": "object", "required": ["code", "data", "msg", "success"],
        "properties": {"code": {"enum": [10000, 10001, 10002, 10003, 10004, 10005, 9999]},
                       "data": {"type": "object"},
                       "msg": {"type": ["string", "integer"]},
                       "success": {"type": "boolean"}}},
    "HeyGemQueryEnvelope": {
        "allOf": [_ref("HeyGemEnvelope"), {"properties": {
            "data": {"oneOf": [{"type": "object", "maxProperties": 0}, _ref("HeyGemTask")]}}}]},
    "HeyGemTask": {
        "type": "object", "required": ["code", "status", "progress", "result", "msg"],
        "properties": {"code": {"type": "string"},
                       "status": {"enum": [1, 2, 3],
                                  "description": "1 running (or queued), 2 done, 3 failed"},
                       "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                       "result": {"type": "string",
                                  "description": "on success: /<code>-r.mp4, relative to the "
                                                 "data dir's temp/"},
                       "msg": {"type": "string"},
                       "cost": {"type": "number", "description": "render seconds"},
                       "video_duration": {"type": "integer", "description": "milliseconds"},
                       "width": {"type": "integer"}, "height": {"type": "integer"}}},
    "JobRequest": {
        "type": "object", "required": ["video", "audio"],
        "properties": {"video": {"type": "string", "description": "http(s) URL, or a path "
                                 "inside the data dir (a bare name: in temp/)"},
                       "audio": {"type": "string"},
                       "background": {"type": "string", "description": "optional background "
                                      "image (PNG, JPEG, WebP, BMP, GIF): http(s) URL or a "
                                      "path, as video"},
                       "options": {"type": "object", "description": "backend, loop, "
                                   "x264_preset, crf, multiple_faces, face_restore, "
                                   "watermark, ai_label, background (keep, transparent or "
                                   "#rrggbb), container (mp4, webm or mov; webm and mov only "
                                   "for transparent, which defaults to webm)"},
                       "priority": {"type": "integer"}}},
    "JobUpload": {
        "type": "object",
        "properties": {"video": {"type": "string", "contentMediaType": "application/octet-stream"},
                       "audio": {"type": "string", "contentMediaType": "application/octet-stream"},
                       "background": {"type": "string", "description": "an image file, or "
                                      "its URL or path"},
                       "options": {"type": "string", "description": "JSON object"},
                       "priority": {"type": "string", "description": "JSON integer"}}},
    "Job": {
        "type": "object",
        "required": ["id", "state", "progress", "stage", "attempts", "priority", "inputs",
                     "options", "created_at", "started_at", "finished_at", "cancel_requested",
                     "error", "result", "links"],
        "properties": {
            "id": {"type": "string"},
            "state": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "stage": {"type": "string"}, "attempts": {"type": "integer"},
            "priority": {"type": "integer"},
            "inputs": {"type": "object", "required": ["video", "audio"],
                       "properties": {"video": {"type": "string"},
                                      "audio": {"type": "string"},
                                      "background": {"type": "string",
                                                     "description": "the background image, "
                                                                    "when one was given"}}},
            "options": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_STR, "finished_at": NULLABLE_STR,
            "cancel_requested": {"type": "boolean"},
            "error": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"},
                               "message": NULLABLE_STR}}]},
            "result": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["url"],
                "properties": {"url": {"type": "string"},
                               "container": {"enum": list(CONTENT_TYPES)},
                               "content_type": {"enum": list(CONTENT_TYPES.values())},
                               "frames": {"type": "integer"},
                               "width": {"type": "integer"}, "height": {"type": "integer"},
                               "fps": {"type": "number"}, "duration": {"type": "number"},
                               "elapsed": {"type": "number"}, "backend": {"type": "string"},
                               "analysis_cached": {"type": "boolean"},
                               "warnings": {"type": "array", "items": {"type": "string"}}}}]},
            "links": {"type": "object", "required": ["self"],
                      "properties": {"self": {"type": "string"}}}}},
    "JobList": {"type": "object", "required": ["jobs"],
                "properties": {"jobs": {"type": "array", "items": _ref("Job")}}},
    "Health": {
        "type": "object",
        "required": ["status", "version", "device", "backend", "queue", "workers", "serving",
                     "gpu"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]}, "version": {"type": "string"},
            "device": {"type": "string"}, "backend": {"type": "string"},
            "queue": {"type": "object", "required": ["depth", "jobs"],
                      "properties": {"depth": {"type": "integer"}, "jobs": {"type": "object"}}},
            "workers": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "device", "state", "ready", "last_heartbeat",
                             "heartbeat_age_seconds"],
                "properties": {"id": {"type": "string"}, "host": {"type": "string"},
                               "pid": {"type": "integer"}, "device": {"type": "string"},
                               "backend": {"type": "string"}, "state": {"type": "string"},
                               "job": NULLABLE_STR, "ready": {"type": "boolean"},
                               "last_heartbeat": {"type": "string"},
                               "heartbeat_age_seconds": {"type": "number"}}}},
            "serving": {"type": "object", "description": "layout and GPU profile",
                        "properties": {
                            "layout": {"enum": ["split", "all-in-one"]},
                            "profile": {"enum": ["cpu", "12gb", "24gb", "48gb"]},
                            "profile_reason": {"type": "string"},
                            "web_workers": {"type": "integer"}, "threads": {"type": "integer"},
                            "worker_class": {"type": "string"},
                            "batch_size": {"type": "integer"},
                            "max_memory_mb": {"type": "number"},
                            "render_devices": {"type": "array", "items": {"type": "string"}},
                            "error": {"type": "string"}}},
            "gpu": {"type": "object", "required": ["available"],
                    "properties": {"available": {"type": "boolean"},
                                   "reason": {"type": "string"},
                                   "driver": {"type": "string"},
                                   "devices": {"type": "array"}}}}},
    "Status": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"}, "reason": {"type": "string"},
                              "workers": {"type": "integer"}}},
}

HEYGEM = _json(_ref("HeyGemEnvelope"), "HeyGem envelope; the outcome is in `code`")
HEYGEM_QUERY = _json(_ref("HeyGemQueryEnvelope"), "HeyGem envelope; `data` is the task")
JOB = _json(_ref("Job"), "the job")
VIDEOS: dict[str, Any] = {media: {} for media in CONTENT_TYPES.values()}
LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}


HEYGEM_ACCESS = ("Every answer is an envelope, HTTP 200. With DHSERVE_API_KEY set, clients on "
                 "DHSERVE_HEYGEM_NETWORKS (default: this machine; never through a proxy) "
                 "need no key; others without it get code 9999, msg 'auth.required: ...'.")


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "dhserve", "version": __version__,
                 "description": "Talking-head video synthesis: HeyGem-compatible /easy API "
                                "and the /v1 REST API."},
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "when DHSERVE_API_KEY "
                                                                     "is set"}}},
        "security": [{}, {"bearer": []}],
        "paths": {
            "/easy/submit": {"post": {
                "summary": "HeyGem: queue a video synthesis task",
                "description": HEYGEM_ACCESS,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("HeyGemSubmit")},
                    "application/x-www-form-urlencoded": {"schema": _ref("HeyGemSubmit")}}},
                "responses": {"200": HEYGEM}}},
            "/easy/query": {"get": {
                "summary": "HeyGem: a task's status, progress and result",
                "description": HEYGEM_ACCESS,
                "parameters": [{"name": "code", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": HEYGEM_QUERY}}},
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a job (JSON with URLs/paths, or a multipart upload)",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "schema": JOB_ID["schema"],
                                    "description": "becomes the job id; a retry with the "
                                                   "same request returns the same job"}],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("JobRequest")},
                        "multipart/form-data": {"schema": _ref("JobUpload")}}},
                    "responses": {
                        "202": {**JOB, "description": "queued", "headers": LOCATION},
                        "200": {**JOB, "description": "the job this Idempotency-Key made",
                                "headers": LOCATION},
                        **_problems(400, 401, 409, 413, 422, 429, 503, 507)}},
                "get": {
                    "summary": "Recent jobs, newest first",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _json(_ref("JobList"), "jobs"),
                                  **_problems(400, 401, 503)}}},
            "/v1/jobs/{job_id}": {
                "parameters": [JOB_ID],
                "get": {"summary": "One job", "responses": {"200": JOB,
                                                            **_problems(401, 404, 503)}},
                "delete": {"summary": "Cancel: at once when queued, at the next frame batch "
                                      "when running",
                           "responses": {
                               "200": {**JOB, "description": "canceled (it was queued)"},
                               "202": {**JOB, "description": "the running render stops at "
                                                             "its next frame batch"},
                               **_problems(401, 404, 409, 503)}}},
            "/v1/jobs/{job_id}/result": {
                "parameters": [JOB_ID],
                "get": {"summary": "The video: mp4, or webm / mov with alpha (Range "
                                   "requests answer 206)",
                        "responses": {
                            "200": {"description": "the video",
                                    "content": VIDEOS},
                            "206": {"description": "part of the video (Content-Range)",
                                    "content": VIDEOS},
                            "304": {"description": "not modified"},
                            **_problems(401, 404, 409, 410, 416, 503)}}},
            "/health": {"get": {"summary": "Status, version, device, queue, workers, GPU",
                                "responses": {"200": _json(_ref("Health"), "health"),
                                              **_problems(401, 503)}}},
            "/livez": {"get": {"summary": "The process is up", "security": [{}],
                               "responses": {"200": _json(_ref("Status"), "alive")}}},
            "/readyz": {"get": {"summary": "A render worker is ready",
                                "responses": {"200": _json(_ref("Status"), "ready"),
                                              "503": {"description": "not ready (or the job "
                                                                     "store is unreachable)",
                                                      "content": {
                                                          "application/json": {
                                                              "schema": _ref("Status")},
                                                          "application/problem+json": {
                                                              "schema": _ref("Problem")}}},
                                              **UNAUTHORIZED}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1",
                                                            "content": {"application/json": {
                                                                "schema": {"type": "object"}}}},
                                                    **UNAUTHORIZED}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format 0.0.4): jobs, queue, render "
                           "workers, HTTP requests, process memory, GPUs",
                "responses": {"200": {"description": "the metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_problems(401)}}},
            **PAGE_PATHS,
        },
    }


def _page_file(summary: str, media: str) -> dict[str, Any]:
    """The web page's files: open without the API key (they hold no data)."""
    return {"get": {"summary": summary, "security": [{}],
                    "responses": {"200": {"description": summary,
                                          "content": {media: {}}},
                                  "304": {"description": "not modified"}}}}


PAGE_PATHS = {"/": _page_file("The web page: submit, follow and watch jobs", "text/html"),
              "/ui/app.js": _page_file("The web page's script", "text/javascript"),
              "/ui/app.css": _page_file("The web page's style sheet", "text/css")}


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document())
