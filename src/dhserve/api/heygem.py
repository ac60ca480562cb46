"""HeyGem's video API (/easy/submit, /easy/query), answered exactly as its clients expect.

Every answer is HTTP 200 with an envelope {code, data, msg, success} whose `code` carries the
outcome; see reference/heygem-api.md. Jobs are the queue's jobs: the HeyGem `code` is the job
id, the result is written to <data dir>/temp/<code>-r.mp4.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from dhserve.api.context import check_job_id, context
from dhserve.api.inputs import input_text, resolve_input
from dhserve.errors import DhserveError, InputError, first_line
from dhserve.jobs.model import Job, JobSpec, JobState

log = logging.getLogger(__name__)

blueprint = Blueprint("heygem", __name__, url_prefix="/easy")

OK, BUSY, MISSING, NOT_FOUND, EXISTS, SYSTEM = 10000, 10001, 10002, 10004, 10005, 9999
MSG_BUSY = "忙碌中"
MSG_NOT_FOUND = "任务不存在"
MSG_EXISTS = "任务已存在，正在执行中"
MSG_SYSTEM = "系统异常"
REQUIRED = ("audio_url", "video_url", "code")       # checked in the vendor's order
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = 1, 2, 3
FLAGS = {"chaofen": "face_restore", "watermark_switch": "watermark", "digital_auth": "ai_label"}
# The engine names inputs and options by its own names; HeyGem clients know these.
FIELD_NAMES = {"video": "video_url", "audio": "audio_url", "loop": "pn",
               **{option: flag for flag, option in FLAGS.items()}}


def envelope(code: int, msg: Any = "", data: dict[str, Any] | None = None) -> Response:
    g.outcome = code            # the access log shows it: HTTP says 200 whatever happened
    return jsonify({"code": code, "data": data or {}, "msg": msg, "success": True})


def heygem_message(message: str) -> str:
    """An engine message ("video: no face found") with the field named as HeyGem names it."""
    field, sep, reason = message.partition(": ")
    return f"{FIELD_NAMES[field]}: {reason}" if sep and field in FIELD_NAMES else message


@blueprint.post("/submit")
def submit() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        body = request.form.to_dict()
    for name in REQUIRED:
        if body.get(name) in (None, ""):
            return envelope(MISSING, f"{name}参数缺失")
    ctx = context()
    try:
        code = check_job_id(str(body["code"]), "code")
        g.job_id = code
        spec, refused = _spec(code, body)
        ctx.submit(code, spec, record_refusal=True, refused=refused)
    except InputError as exc:
        return envelope(MISSING, heygem_message(exc.message))
    except DhserveError as exc:
        if exc.code == "queue.full":
            return envelope(BUSY, MSG_BUSY)
        if exc.code == "job.conflict":
            return envelope(EXISTS, MSG_EXISTS)
        log.error("submit %s: %s %s", g.get("job_id"), exc.code, exc.message)
        return envelope(SYSTEM, MSG_SYSTEM)
    return envelope(OK, OK)


def _spec(code: str, body: dict[str, Any]) -> tuple[JobSpec, InputError | None]:
    """The job a submit asks for. A malformed request raises (10002); an input that may not
    be used (outside the roots, another scheme) comes back as the refusal to record: the
    client learns it from /easy/query, status 3, as it learns every other input problem."""
    settings = context().settings
    options = _options(body)
    output = str((settings.temp_dir / f"{code}-r.mp4").resolve())
    video, audio = (input_text(body[name], name) for name in ("video_url", "audio_url"))
    try:
        return JobSpec(resolve_input(video, "video_url", settings),
                       resolve_input(audio, "audio_url", settings), output, options), None
    except InputError as exc:
        return JobSpec(video, audio, output, options), exc


@blueprint.errorhandler(HTTPException)
def http_error_envelope(exc: HTTPException) -> Response:
    """HeyGem clients read envelopes, whatever went wrong (a body too large, not JSON, a
    wrong method: the app's handler sends /easy/* routing errors here too)."""
    if isinstance(exc, RequestEntityTooLarge):
        return envelope(MISSING, "request body is over the limit of "
                        f"{(request.max_content_length or 0) / 2**20:g} MB")
    if exc.code and exc.code < 500:
        return envelope(MISSING, exc.description or exc.name)
    return envelope(SYSTEM, MSG_SYSTEM)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.path, first_line(exc),
              exc_info=not isinstance(exc, DBAPIError))
    return envelope(SYSTEM, MSG_SYSTEM)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"loop": "pingpong" if _flag(body, "pn", True) else "restart"}
    for name, option in FLAGS.items():
        if _flag(body, name, False):
            options[option] = True
    return options


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value in (None, ""):
        return default
    if str(value).strip().lower() in ("1", "true"):
        return True
    if str(value).strip().lower() in ("0", "false"):
        return False
    raise InputError("request.invalid", name, f"must be 0 or 1; got {value!r}")


@blueprint.get("/query")
def query() -> Response:
    code = request.args.get("code", "")
    if not code:
        return envelope(MISSING, "code参数缺失")
    g.job_id = code
    try:
        job = context().store.get(code)
    except DhserveError as exc:
        if exc.code == "job.not_found":
            return envelope(NOT_FOUND, MSG_NOT_FOUND)
        raise
    return envelope(OK, "", task_status(job, context().settings.temp_dir))


def task_status(job: Job, temp_dir: Path) -> dict[str, Any]:
    """A job as HeyGem's `data` object."""
    data: dict[str, Any] = {"code": job.id, "progress": int(job.progress), "result": ""}
    if job.state is JobState.SUCCEEDED:
        result = Path(job.result or "")
        if not result.is_file():
            data.update(status=STATUS_FAILED, msg="the result file no longer exists")
            return data
        info = job.result_info
        data.update(status=STATUS_DONE, progress=100, msg="完成",
                    result=_result_path(result, temp_dir),
                    cost=round(float(info.get("elapsed", 0.0)), 2),
                    video_duration=round(float(info.get("duration", 0.0)) * 1000),
                    width=int(info.get("width", 0)), height=int(info.get("height", 0)))
    elif job.state.finished:
        data.update(status=STATUS_FAILED,
                    msg=heygem_message(job.error_message or job.state.value))
    else:
        data.update(status=STATUS_RUNNING, msg=job.stage)
    return data


def _result_path(result: Path, temp_dir: Path) -> str:
    """Relative to temp/ with a leading slash, as clients join it onto their temp folder."""
    relative = os.path.relpath(result, temp_dir.resolve())
    return str(result) if relative.startswith("..") else "/" + relative
