"""The REST API: /v1/jobs. JSON in (URLs or paths) or a multipart upload of the files (video,
audio, and an optional background image); jobs as JSON documents; errors as problem details
(dhserve.api.problems)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, send_file, url_for
from sqlalchemy.exc import DBAPIError

from dhserve import metrics
from dhserve.api.context import (
    check_job_id,
    context,
    iso_time,
    json_body,
    parse_json,
    public_path,
)
from dhserve.api.inputs import resolve_input, save_upload, spooled_form
from dhserve.errors import (
    DhserveError,
    JobFinished,
    JobNotReady,
    OptionsInvalid,
    RequestInvalid,
    ResultGone,
)
from dhserve.fsutil import remove_quietly
from dhserve.jobs.admission import KINDS, admit, check_free_space, public_text
from dhserve.jobs.model import (
    BACKGROUND,
    CONTENT_TYPES,
    Job,
    JobSpec,
    JobState,
    background_option,
)

blueprint = Blueprint("v1", __name__, url_prefix="/v1")

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_PRIORITY = 1000


@blueprint.post("/jobs")
def create_job() -> tuple[Response, int, dict[str, str]]:
    ctx = context()
    key = request.headers.get("Idempotency-Key")
    job_id = check_job_id(key, "Idempotency-Key") if key else uuid.uuid4().hex
    g.job_id = job_id
    fields = _request_fields()
    uploaded: list[Path] = []
    named: dict[str, str] = {}
    try:
        options, priority = _choices(fields)
        inputs = {kind: _input(kind, fields, uploaded, named) for kind in KINDS}
        spec = JobSpec(video=inputs["video"], audio=inputs["audio"], options=options,
                       priority=priority, background=_image(fields, uploaded, named))
        job, created = admit(ctx.settings, ctx.store, job_id, spec, named=named)
    except Exception:
        _discard(uploaded, job_id)
        raise
    if created:
        metrics.count_submitted("v1")
    location = url_for("v1.get_job", job_id=job.id)
    return jsonify(job_document(job)), 202 if created else 200, {"Location": location}


def _request_fields() -> dict[str, Any]:
    """The body's fields: a JSON object, or a form (whose options and priority are JSON)."""
    if request.mimetype == "multipart/form-data":
        check_free_space(context().settings)    # parsing the form spools the files to disk
        fields: dict[str, Any] = spooled_form()
        for name in ("options", "priority"):
            if name in fields:
                fields[name] = _json_field(fields[name], name)
        return fields
    fields = json_body()
    if not isinstance(fields, dict):
        raise RequestInvalid("body", "expected a JSON object or a "
                             "multipart/form-data upload")
    return fields


def _choices(fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
    options = fields.get("options") or {}
    if not isinstance(options, dict):
        raise RequestInvalid("options", "must be an object")
    priority = fields.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or \
            not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise RequestInvalid("priority",
                             f"must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}")
    return options, priority


def _discard(created: list[Path], job_id: str) -> None:
    """Removes the files a refused request created, except those a job with this id names
    (a concurrent request with the same Idempotency-Key may have won). What a crash leaves
    is swept by the workers' housekeeping."""
    try:
        spec = context().store.get(job_id).spec
        keep = {spec.video, spec.audio, spec.background}
    except (DhserveError, DBAPIError):  # no such job, or the store is down: none names them
        keep = set()
    for path in created:
        if str(path.resolve()) not in keep:
            remove_quietly(path)
    with contextlib.suppress(OSError):      # only when empty
        (context().settings.uploads_dir / job_id).rmdir()


def _json_field(value: str, name: str) -> Any:
    return parse_json(value, name)


def _image(fields: dict[str, Any], uploaded: list[Path], named: dict[str, str]) -> str | None:
    """The optional background image, an input like the others; None when not given. A
    colour or `transparent` in its place is an option, said so."""
    upload = request.files.get(BACKGROUND) if request.files else None
    if (upload is None or not upload.filename) and fields.get(BACKGROUND) in (None, ""):
        return None
    given = fields.get(BACKGROUND)
    if isinstance(given, str) and background_option(given.strip()):
        raise OptionsInvalid(BACKGROUND, f"the input `background` is an image (a file, an "
                             f"http(s) URL or a path); {given.strip()!r} goes in "
                             "options.background")
    return _input(BACKGROUND, fields, uploaded, named)


def _input(kind: str, fields: dict[str, Any], uploaded: list[Path],
           named: dict[str, str]) -> str:
    """The uploaded file `kind`, else the URL or path given in the field; `named` learns
    what the client called it (the upload's file name, or the text it gave)."""
    settings = context().settings
    upload = request.files.get(kind) if request.files else None
    if upload is not None and upload.filename:
        check_free_space(settings)          # before writing: an upload fills a disk
        path, created = save_upload(upload.stream, upload.filename, kind,
                                    settings.uploads_dir / g.job_id, settings.max_input_mb)
        if created:         # a replayed request's files belong to the job that exists
            uploaded.append(path)
        named[str(path.resolve())] = Path(upload.filename).name
        return str(path.resolve())
    if fields.get(kind) in (None, ""):
        raise RequestInvalid(kind, "missing: give a URL, a path or a file")
    local = resolve_input(fields[kind], kind, settings)
    named[local] = str(fields[kind]).strip()
    return local


@blueprint.get("/jobs")
def list_jobs() -> Response:
    state = request.args.get("state") or None
    if state is not None and state not in {s.value for s in JobState}:
        raise RequestInvalid("state",
                             f"must be one of {', '.join(s.value for s in JobState)}")
    try:
        limit = int(request.args.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise RequestInvalid("limit", f"must be an integer 1..{MAX_LIMIT}")
    jobs = context().store.list(JobState(state) if state else None, limit)
    return jsonify({"jobs": [job_document(job) for job in jobs]})


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    g.job_id = job_id
    return jsonify(job_document(context().store.get(job_id)))


@blueprint.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> tuple[Response, int]:
    """A queued job ends at once (200); a running one stops at its next frame batch
    (202: accepted, not yet done)."""
    g.job_id = job_id
    job = context().store.cancel(job_id)
    return jsonify(job_document(job)), 200 if job.state.finished else 202


@blueprint.get("/jobs/<job_id>/result")
def job_result(job_id: str) -> Response:
    """The video (mp4, or webm/mov with alpha), with Range support (206) so a player can
    seek."""
    g.job_id = job_id
    job = context().store.get(job_id)
    if job.state is not JobState.SUCCEEDED:
        if job.state.finished:
            raise JobFinished(f"job {job_id!r} {job.state.value}: "
                              f"{job.error_message or 'no result'}")
        raise JobNotReady(f"job {job_id!r} is {job.state.value} "
                          f"({job.progress} %); the result is not ready")
    path = Path(job.result or "")
    if not path.is_file():
        raise ResultGone(f"the result of job {job_id!r} no longer exists")
    container = job.spec.container
    return send_file(path, mimetype=CONTENT_TYPES[container], conditional=True, etag=True,
                     download_name=f"{job_id}.{container}", max_age=0)


def job_document(job: Job) -> dict[str, Any]:
    """A job as /v1 shows it."""
    result: dict[str, Any] | None = None
    if job.state is JobState.SUCCEEDED:
        info = job.result_info
        result = {"url": url_for("v1.job_result", job_id=job.id),
                  "container": job.spec.container,
                  "content_type": CONTENT_TYPES[job.spec.container],
                  **{k: info[k] for k in ("frames", "width", "height", "fps", "duration",
                                          "elapsed", "backend", "analysis_cached", "warnings")
                     if k in info}}
    settings = context().settings
    inputs = {kind: public_path(getattr(job.spec, kind), settings, named_outside=True)
              for kind in KINDS}
    if job.spec.background is not None:
        inputs[BACKGROUND] = public_path(job.spec.background, settings, named_outside=True)
    error = ({"code": job.error_code,
              "message": public_text(job.error_message or "", settings)}
             if job.error_code else None)
    return {"id": job.id, "state": job.state.value, "progress": int(job.progress),
            "stage": job.stage, "attempts": job.attempts, "priority": job.spec.priority,
            "inputs": inputs,
            "options": job.spec.options, "created_at": iso_time(job.created_at),
            "started_at": iso_time(job.started_at), "finished_at": iso_time(job.finished_at),
            "cancel_requested": job.cancel_requested, "error": error, "result": result,
            "links": {"self": url_for("v1.get_job", job_id=job.id)}}
