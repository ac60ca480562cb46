"""HeyGem's video API (/easy/submit, /easy/query), answered exactly as its clients expect.

Every answer is HTTP 200 with an envelope {code, data, msg, success} whose `code` carries the
outcome: 10000 accepted, 10001 busy, 10002 a missing or malformed parameter, 10004 no such
task, 10005 the task exists, 9999 a system failure (README.md, "HTTP API"; errors.py declares
which error answers which). Jobs are the queue's jobs: the HeyGem `code` is the job id, the
result is written to <data dir>/temp/<code>-r.mp4.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from dhserve import metrics
from dhserve.api.context import check_job_id, context, json_body, public_path
from dhserve.api.inputs import input_text, resolve_input, spooled_form
from dhserve.config import Settings
from dhserve.errors import (
    ACCEPTED,
    BUSY,
    EXISTS,
    MISSING,
    NOT_FOUND,
    SYSTEM,
    DhserveError,
    InputError,
    JobNotFound,
    OptionsInvalid,
    RequestInvalid,
    StorageFull,
    first_line,
)
from dhserve.jobs.admission import admit, public_text
from dhserve.jobs.model import (
    BACKGROUND,
    TRANSPARENT,
    Job,
    JobSpec,
    JobState,
    background_option,
)
from dhserve.stages import Stage

log = logging.getLogger(__name__)

blueprint = Blueprint("heygem", __name__, url_prefix="/easy")

OK = ACCEPTED
MSG_BUSY = "忙碌中"
MSG_NOT_FOUND = "任务不存在"
MSG_EXISTS = "任务已存在，正在执行中"
MSG_SYSTEM = "系统异常"
# The refusals HeyGem's contract has a code of its own for (errors.py declares which).
MESSAGES = {BUSY: MSG_BUSY, EXISTS: MSG_EXISTS}
REQUIRED = ("audio_url", "video_url", "code")       # checked in the vendor's order
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = 1, 2, 3
FLAGS = {"chaofen": "face_restore", "watermark_switch": "watermark", "digital_auth": "ai_label"}
# The engine names inputs and options by its own names; HeyGem clients know these.
# A running job's stage as HeyGem's users write it (the vendor's service answers in Chinese);
# a stage not named here is answered in English as stored.
STAGE_NAMES = {
    Stage.QUEUED: "排队中",
    Stage.STARTING: "准备中",
    Stage.DOWNLOADING: "下载中",
    Stage.PROBING: "检查素材",
    Stage.DECODING_AUDIO: "音频特征提取中",
    Stage.ANALYSING_FACE: "人脸分析中",
    Stage.LIP_SYNC: "口型同步中",
    Stage.ENCODING: "视频合成中",
    Stage.CANCELING: "取消中",
    Stage.REQUEUED_STOPPED: "重新排队（进程已停止）",
    Stage.REQUEUED_LOST: "重新排队（进程失联）",
    Stage.CANCELED: "已取消",
    Stage.FAILED: "失败",
    Stage.DONE: "完成",
}
TRANSPARENT_REFUSAL = "HeyGem's result is an .mp4; use /v1/jobs with container webm or mov"
FIELD_NAMES = {"video": "video_url", "audio": "audio_url", "loop": "pn",
               **{option: flag for flag, option in FLAGS.items()}}


def envelope(code: int, msg: Any = "", data: dict[str, Any] | None = None) -> Response:
    g.outcome = code            # the access log shows it: HTTP says 200 whatever happened
    return jsonify({"code": code, "data": data or {}, "msg": msg, "success": True})


def refused_envelope(exc: DhserveError) -> Response:
    """A refusal HeyGem's contract has no code for (no key; a full disk): 9999, the vendor's
    own failure code, which every client shows as failed, with dhserve's code in `msg`."""
    return envelope(SYSTEM, f"{exc.code}: {exc.message}")


def heygem_message(message: str) -> str:
    """An engine message ("video: no face found") with the field named as HeyGem names it."""
    field, sep, reason = message.partition(": ")
    return f"{FIELD_NAMES[field]}: {reason}" if sep and field in FIELD_NAMES else message


@blueprint.post("/submit")
def submit() -> Response:
    try:
        body = _body()
    except InputError as exc:
        return envelope(MISSING, heygem_message(exc.message))
    except StorageFull as exc:          # a multipart body spools to the data dir
        return refused_envelope(exc)
    for name in REQUIRED:
        if body.get(name) in (None, ""):
            return envelope(MISSING, f"{name}参数缺失")
    ctx = context()
    try:
        if isinstance(body["code"], bool) or not isinstance(body["code"], (str, int)):
            raise RequestInvalid("code", "must be a string")
        code = check_job_id(str(body["code"]), "code")
        g.job_id = code
        spec, refused, named = _spec(code, body)
        # admit() checks the job and queues it in the job store (a refused one is stored as
        # failed, for /easy/query to tell); a render worker (jobs/worker.py) claims and renders
        # it, writing <data dir>/temp/<code>-r.mp4.
        _, created = admit(ctx.settings, ctx.store, code, spec, record_refusal=True,
                           refused=refused, named=named)
        if created:
            metrics.count_submitted("heygem")
    except InputError as exc:
        return envelope(MISSING, heygem_message(public_text(exc.message, ctx.settings)))
    except DhserveError as exc:
        if exc.heygem in MESSAGES:          # busy, or the id exists with another payload
            return envelope(exc.heygem, MESSAGES[exc.heygem])
        if isinstance(exc, StorageFull):    # not even a failed job could be recorded
            return refused_envelope(exc)
        log.error("submit %s: %s %s", g.get("job_id"), exc.code, exc.message)
        return envelope(SYSTEM, MSG_SYSTEM)
    return envelope(OK, OK)


def _body() -> dict[str, Any]:
    """The submit's fields: a form's, or a JSON object's (HeyGem's clients send JSON)."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return spooled_form()
    if not request.get_data(cache=True).strip():
        return {}                           # as the vendor: "audio_url参数缺失"
    body = json_body()
    if not isinstance(body, dict):
        raise RequestInvalid("body", "must be a JSON object with audio_url, "
                             "video_url and code")
    return body


def _spec(code: str, body: dict[str, Any]
          ) -> tuple[JobSpec, InputError | None, dict[str, str]]:
    """The job a submit asks for, and its inputs' local paths -> the names the client gave.
    A malformed request raises (10002); an input that may not be used (outside the roots,
    another scheme) comes back as the refusal to record: the client learns it from
    /easy/query, status 3, as it learns every other input problem. So does a transparent
    background, which HeyGem's .mp4 result cannot hold."""
    settings = context().settings
    options = _options(body)
    background = _background(body)
    image = None
    if background_option(background):
        options[BACKGROUND] = background
    elif background is not None:
        image = background      # an image, given as video_url is: a URL, name or path
    output = str((settings.temp_dir / f"{code}-r.mp4").resolve())
    given = {name: input_text(body[name], name) for name in ("video_url", "audio_url")}
    if image is not None:
        given[BACKGROUND] = image
    try:
        located = {name: resolve_input(text, name, settings) for name, text in given.items()}
    except InputError as exc:
        return JobSpec(given["video_url"], given["audio_url"], output, options,
                       background=image), exc, {}
    named = {located[name]: text for name, text in given.items()}
    spec = JobSpec(located["video_url"], located["audio_url"], output, options,
                   background=located.get(BACKGROUND))
    if background == TRANSPARENT:
        return spec, OptionsInvalid(BACKGROUND, TRANSPARENT_REFUSAL), named
    return spec, None, named


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


def _background(body: dict[str, Any]) -> str | None:
    """dhserve's own `background` field (HeyGem's clients never send it): keep, a #rrggbb
    colour, or an image's URL, name or path; None when not given."""
    background = body.get(BACKGROUND)
    if background in (None, ""):
        return None
    if not isinstance(background, str):
        raise RequestInvalid(BACKGROUND, f"must be a string; got {background!r}")
    return background.strip() or None


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value in (None, ""):
        return default
    if str(value).strip().lower() in ("1", "true"):
        return True
    if str(value).strip().lower() in ("0", "false"):
        return False
    raise RequestInvalid(name, f"must be 0 or 1; got {value!r}")


@blueprint.get("/query")
def query() -> Response:
    code = request.args.get("code", "")
    if not code:
        return envelope(MISSING, "code参数缺失")
    g.job_id = code
    try:
        job = context().store.get(code)
    except JobNotFound:
        return envelope(NOT_FOUND, MSG_NOT_FOUND)
    return envelope(OK, "", task_status(job, context().settings))


def task_status(job: Job, settings: Settings) -> dict[str, Any]:
    """A job as HeyGem's `data` object; no path of this server in it (the result relative
    to temp/ as HeyGem's clients join it, else relative to the data dir)."""
    data: dict[str, Any] = {"code": job.id, "progress": int(job.progress), "result": ""}
    if job.state is JobState.SUCCEEDED:
        result = Path(job.result or "")
        if not result.is_file():
            data.update(status=STATUS_FAILED, msg="the result file no longer exists")
            return data
        info = job.result_info
        data.update(status=STATUS_DONE, progress=100, msg="完成",
                    result=_result_path(result, settings),
                    cost=round(float(info.get("elapsed", 0.0)), 2),
                    video_duration=round(float(info.get("duration", 0.0)) * 1000),
                    width=int(info.get("width", 0)), height=int(info.get("height", 0)))
    elif job.state.finished:
        data.update(status=STATUS_FAILED,
                    msg=heygem_message(public_text(job.error_message or job.state.value,
                                                   settings)))
    else:
        data.update(status=STATUS_RUNNING, msg=stage_name(job.stage))
    return data


def stage_name(stage: str | None) -> str:
    """A stage's Chinese name for /easy/query; an unknown stage as the English text."""
    try:
        return STAGE_NAMES[Stage(stage)]
    except ValueError:
        return stage or ""


def _result_path(result: Path, settings: Settings) -> str:
    """Relative to temp/ with a leading slash, as clients join it onto their temp folder;
    a result elsewhere (a /v1 job's) relative to the data dir, never an absolute path."""
    temp = os.path.realpath(settings.temp_dir)
    if Path(os.path.realpath(result)).is_relative_to(temp):
        return "/" + Path(os.path.realpath(result)).relative_to(temp).as_posix()
    return public_path(str(result), settings) or ""
