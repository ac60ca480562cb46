"""Errors with stable codes, one class per code (as Werkzeug's exceptions.py): each declares
its code, its HTTP status and what HeyGem's /easy/submit answers for it, once. The edges
(CLI, HTTP) turn them into answers; code branches with `except`/`isinstance`, never by
comparing code strings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

# What /easy/submit answers (HeyGem's envelope codes): an envelope code, or RECORDED: the job
# is stored as failed at once and /easy/query tells it (status 3), for clients that only
# learn outcomes by polling.
ACCEPTED, BUSY, MISSING, NOT_FOUND, EXISTS, SYSTEM = 10000, 10001, 10002, 10004, 10005, 9999
RECORDED = 0


class DhserveError(Exception):
    """Base of every error dhserve reports to a user; `code` is stable, `message` is human."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    heygem: ClassVar[int] = SYSTEM

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def first_line(exc: BaseException | None, limit: int = 300) -> str:
    """The first line of an exception's text: what a log line or a message can carry of a
    library's multi-line report (ONNX Runtime, database drivers)."""
    if exc is None:
        return ""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class InputError(DhserveError):
    """The user's input cannot be rendered; the message says which input and why."""

    code = "input.invalid"
    http_status = 422
    heygem = RECORDED

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- the request itself -------------------------------------------------------------------

class RequestInvalid(InputError):
    """A malformed request: a missing or mistyped field, a body that is not a JSON object."""
    code, http_status, heygem = "request.invalid", 400, MISSING


class RequestTooLarge(DhserveError):
    """A body over the limit: an upload over 2 x DHSERVE_MAX_INPUT_MB, any other over 1 MiB."""
    code, http_status = "request.too_large", 413


class AccessRefused(DhserveError):
    """A request without the API key, from where the key is needed."""
    code, http_status, heygem = "auth.required", 401, SYSTEM


class OptionsInvalid(InputError):
    """A job option that is unknown, of the wrong JSON type, or out of range."""
    code = "options.invalid"       # /easy: recorded, like every input (its fields are flags)


class UnknownBackend(InputError):
    """A backend name the service does not have."""
    code = "options.unknown_backend"


class OutputInvalid(InputError):
    """The output path cannot be written (a missing folder, a name that is not a file)."""
    code = "output.invalid"


# -- inputs: where they come from ---------------------------------------------------------

class InputNotFound(InputError):
    """No such file (named as the client named it)."""
    code = "input.not_found"


class InputPathNotAllowed(InputError):
    """A path outside the data dir and DHSERVE_INPUT_ROOTS, '..', or control characters."""
    code = "input.path_not_allowed"


class InputSchemeNotAllowed(InputError):
    """A scheme other than http(s) (file://, ftp://, data:)."""
    code = "input.scheme_not_allowed"


class InputInvalidUrl(InputError):
    """An http(s) URL without a host."""
    code = "input.invalid_url"


class InputUrlNotAllowed(InputError):
    """A URL that resolves to a loopback, private, link-local, ... address."""
    code = "input.url_not_allowed"


class DownloadFailed(InputError):
    """A URL input that could not be downloaded, or broke off."""
    code = "input.download_failed"


class InputTooLarge(InputError):
    """An input file over DHSERVE_MAX_INPUT_MB."""
    code, http_status = "input.too_large", 413


class InputEmpty(InputError):
    """An empty input file."""
    code = "input.empty_file"


# -- inputs: what they hold ---------------------------------------------------------------

class NotMedia(InputError):
    """A file that is not media FFmpeg may open (a playlist, a text file)."""
    code = "input.not_media"


class CorruptInput(InputError):
    """Media that cannot be decoded."""
    code = "input.corrupt"


class NoVideoStream(InputError):
    """The avatar input has no picture."""
    code = "video.no_video_stream"


class NoAudioStream(InputError):
    """The speech input has no sound."""
    code = "audio.no_audio_stream"


class VideoTooLong(InputError):
    """A template longer than DHSERVE_MAX_VIDEO_SECONDS."""
    code = "video.too_long"


class VideoTooLarge(InputError):
    """A picture over DHSERVE_MAX_VIDEO_PIXELS, judged from the header (decompression bombs)."""
    code = "video.too_large"


class NoFace(InputError):
    """No face in any frame of the template."""
    code = "video.no_face"


class MultipleFaces(InputError):
    """Several faces, with DHSERVE_MULTIPLE_FACES=error."""
    code = "video.multiple_faces"


class AudioEmpty(InputError):
    """Speech without a single sample."""
    code = "audio.empty"


class AudioTooLong(InputError):
    """Speech longer than DHSERVE_MAX_AUDIO_SECONDS."""
    code = "audio.too_long"


NO_STREAM = {"video": NoVideoStream, "audio": NoAudioStream}


# -- overlays and models ------------------------------------------------------------------

class OverlayNotConfigured(InputError):
    """watermark_switch / digital_auth asked for, but no image is configured."""
    code = "overlay.not_configured"


class OverlayInvalid(InputError):
    """The configured overlay image cannot be read as an image."""
    code = "overlay.invalid"


class ModelError(InputError):
    """A model file is missing, unreadable, or not the model its setting names; or a job asks
    for a model the server lacks. `field` names the file (its path for the operator's tools;
    answers strip the data dir) or the option that needs it."""

    def __init__(self, where: str | os.PathLike[str], reason: str):
        super().__init__(str(where), reason)
        self.path = Path(where)


class ModelMissing(ModelError):
    """A model file that is not in the models folder (a job's option needs it)."""
    code = "model.missing"


class ModelCorrupt(ModelError):
    """Not loadable as ONNX at all."""
    code = "model.corrupt"


class ModelBadSignature(ModelError):
    """An ONNX file, but not the model its setting names (other tensors)."""
    code = "model.bad_signature"


# -- jobs and the queue -------------------------------------------------------------------

class QueueFull(DhserveError):
    """More jobs wait than DHSERVE_MAX_QUEUED allows."""
    code, http_status, heygem = "queue.full", 429, BUSY


class JobNotFound(DhserveError):
    """No job with this id."""
    code, http_status, heygem = "job.not_found", 404, NOT_FOUND


class JobConflict(DhserveError):
    """The id exists with another payload."""
    code, http_status, heygem = "job.conflict", 409, EXISTS


class JobFinished(DhserveError):
    """Cancel of a job that already finished."""
    code, http_status = "job.finished", 409


class JobNotReady(DhserveError):
    """The result of a job that has not succeeded (yet)."""
    code, http_status = "job.not_ready", 409


class ResultGone(DhserveError):
    """The job succeeded, but its result file is gone (retention, removed by hand)."""
    code, http_status = "result.gone", 410


class StoreUnreachable(DhserveError):
    """The job store (SQLite file, PostgreSQL) does not answer."""
    code, http_status = "store.unreachable", 503


class StorageFull(DhserveError):
    """The data dir has less free space than DHSERVE_MIN_FREE_MB, or ran out while writing:
    new work is refused until space returns (nothing needs a restart)."""
    code, http_status, heygem = "storage.full", 507, RECORDED


class WorkerLost(DhserveError):
    """A job whose worker stopped heartbeating more often than DHSERVE_MAX_ATTEMPTS allows."""
    code = "worker.lost"


# -- rendering and runtime ----------------------------------------------------------------

class Canceled(DhserveError):
    """The render was asked to stop; raised at the next batch boundary."""
    code = "render.canceled"

    def __init__(self, message: str = "render canceled"):
        super().__init__(message)


class RenderInternal(DhserveError):
    """Anything unexpected while rendering: the traceback goes to the log, not the user."""
    code = "render.internal"


def error_classes() -> list[type[DhserveError]]:
    """Every error class that declares a code of its own, one per code (errors.py's when
    another module's class shares its code), for the status table and the docs."""
    found: dict[str, type[DhserveError]] = {}
    pending: list[type[DhserveError]] = [DhserveError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "code" not in cls.__dict__:
            continue
        if cls.code not in found or cls.__module__ == __name__:
            found[cls.code] = cls
    return sorted(found.values(), key=lambda c: c.code)
