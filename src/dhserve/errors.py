"""Errors with stable codes; the edges (CLI, HTTP) turn them into answers."""

from __future__ import annotations


class DhserveError(Exception):
    """Base of every error dhserve reports to a user; `code` is stable, `message` is human."""

    code = "internal"

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text: what a log line or a message can carry of a
    library's multi-line report (ONNX Runtime, database drivers)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class InputError(DhserveError):
    """The user's input cannot be rendered; the message says which input and why."""

    def __init__(self, code: str, field: str, reason: str):
        super().__init__(code, f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Canceled(DhserveError):
    """The render was asked to stop; raised at the next batch boundary."""

    def __init__(self, message: str = "render canceled"):
        super().__init__("render.canceled", message)


class StorageFull(DhserveError):
    """The data dir has less free space than DHSERVE_MIN_FREE_MB, or ran out while writing:
    new work is refused until space returns (nothing needs a restart)."""

    def __init__(self, message: str):
        super().__init__("storage.full", message)


class AccessRefused(DhserveError):
    """A request without the API key, from where the key is needed."""

    def __init__(self, message: str):
        super().__init__("auth.required", message)
