"""Errors with stable codes, one class per code (as Werkzeug's exceptions.py): each declares
its code, its HTTP status and what HeyGem's /easy/submit answers for it, once. The edges
(CLI, HTTP) turn them into answers; code branches with `except`/`isinstance`, never by
comparing code strings."""

from __future__ import annotations

from typing import ClassVar

# What /easy/submit answers (reference/heygem-api.md): an envelope code, or RECORDED: the job
# is stored as failed at once and /easy/query tells it (status 3), for clients that only
# learn outcomes by polling.
ACCEPTED, BUSY, MISSING, NOT_FOUND, EXISTS, SYSTEM = 10000, 10001, 10002, 10004, 10005, 9999
RECORDED = 0


class DhserveError(Exception):
    """Base of every error dhserve reports to a user; `code` is stable, `message` is human."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    heygem: ClassVar[int] = SYSTEM

    def __init__(self, *args: str):
        # (message), or, until every raise names its class, the older (code, message)
        if len(args) == 2:
            self.code = args[0]      # type: ignore[misc]
        message = args[-1]
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

    def __init__(self, *args: str):
        # (field, reason), or, until every raise names its class, the older (code, field, reason)
        if len(args) == 3:
            self.code = args[0]      # type: ignore[misc]
        field, reason = args[-2], args[-1]
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- the request itself -------------------------------------------------------------------

class RequestInvalid(InputError):
    """A malformed request: a missing or mistyped field, a body that is not a JSON object."""
    code, http_status, heygem = "request.invalid", 400, MISSING


class RequestTooLarge(DhserveError):
    code, http_status = "request.too_large", 413


class AccessRefused(DhserveError):
    """A request without the API key, from where the key is needed."""
    code, http_status, heygem = "auth.required", 401, SYSTEM


class OptionsInvalid(InputError):
    """A job option that is unknown, of the wrong JSON type, or out of range."""
    code, heygem = "options.invalid", MISSING


class UnknownBackend(InputError):
    code, heygem = "options.unknown_backend", MISSING


class OutputInvalid(InputError):
    """The output path cannot be written (a missing folder, a name that is not a file)."""
    code = "output.invalid"


# -- inputs: where they come from ---------------------------------------------------------

class InputNotFound(InputError):
    code = "input.not_found"


class InputPathNotAllowed(InputError):
    code = "input.path_not_allowed"


class InputSchemeNotAllowed(InputError):
    code = "input.scheme_not_allowed"


class InputInvalidUrl(InputError):
    code = "input.invalid_url"


class InputUrlNotAllowed(InputError):
    """A URL that resolves to a loopback, private, link-local, ... address."""
    code = "input.url_not_allowed"


class DownloadFailed(InputError):
    code = "input.download_failed"


class InputTooLarge(InputError):
    code, http_status = "input.too_large", 413


class InputEmpty(InputError):
    code = "input.empty_file"


# -- inputs: what they hold ---------------------------------------------------------------

class NotMedia(InputError):
    code = "input.not_media"


class CorruptInput(InputError):
    code = "input.corrupt"


class NoVideoStream(InputError):
    code = "video.no_video_stream"


class NoAudioStream(InputError):
    code = "audio.no_audio_stream"


class VideoTooLong(InputError):
    code = "video.too_long"


class VideoTooLarge(InputError):
    """A picture over DHSERVE_MAX_VIDEO_PIXELS, judged from the header (decompression bombs)."""
    code = "video.too_large"


class NoFace(InputError):
    code = "video.no_face"


class MultipleFaces(InputError):
    code = "video.multiple_faces"


class AudioEmpty(InputError):
    code = "audio.empty"


class AudioTooLong(InputError):
    code = "audio.too_long"


NO_STREAM = {"video": NoVideoStream, "audio": NoAudioStream}


# -- overlays and models ------------------------------------------------------------------

class OverlayNotConfigured(InputError):
    code = "overlay.not_configured"


class OverlayInvalid(InputError):
    code = "overlay.invalid"


class ModelMissing(InputError):
    code = "model.missing"


class ModelCorrupt(InputError):
    code = "model.corrupt"


class ModelBadSignature(InputError):
    code = "model.bad_signature"


# -- jobs and the queue -------------------------------------------------------------------

class QueueFull(DhserveError):
    """More jobs wait than DHSERVE_MAX_QUEUED allows."""
    code, http_status, heygem = "queue.full", 429, BUSY


class JobNotFound(DhserveError):
    code, http_status, heygem = "job.not_found", 404, NOT_FOUND


class JobConflict(DhserveError):
    """The id exists with another payload."""
    code, http_status, heygem = "job.conflict", 409, EXISTS


class JobFinished(DhserveError):
    code, http_status = "job.finished", 409


class JobNotReady(DhserveError):
    code, http_status = "job.not_ready", 409


class ResultGone(DhserveError):
    code, http_status = "result.gone", 410


class StoreUnreachable(DhserveError):
    code, http_status = "store.unreachable", 503


class StorageFull(DhserveError):
    """The data dir has less free space than DHSERVE_MIN_FREE_MB, or ran out while writing:
    new work is refused until space returns (nothing needs a restart)."""
    code, http_status, heygem = "storage.full", 507, SYSTEM


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
