"""Where a client's inputs may come from: http(s) URLs, files inside the allowed folders, and
uploads. Nothing outside the allowed folders is opened, not even to say whether it exists."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urlsplit

from dhserve.config import Settings
from dhserve.errors import (
    InputEmpty,
    InputInvalidUrl,
    InputPathNotAllowed,
    InputSchemeNotAllowed,
    InputTooLarge,
    RequestInvalid,
    StorageFull,
)
from dhserve.fsutil import remove_quietly

CHUNK = 1 << 20
MAX_INPUT_CHARS = 4096
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A scheme is "name://", or one of the few URI schemes written without slashes. A bare name
# with a colon ("take:1.mp4") is a file name.
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://|(data|javascript|mailto):", re.IGNORECASE)


def input_text(value: object, field: str) -> str:
    """The input as a request must give it: a non-empty string of sane length."""
    if not isinstance(value, str) or not value.strip():
        raise RequestInvalid(field, "must be a non-empty string")
    if len(value.strip()) > MAX_INPUT_CHARS:
        raise RequestInvalid(field, f"is {len(value.strip())} characters "
                             f"long; the limit is {MAX_INPUT_CHARS}")
    return value.strip()


def resolve_input(value: object, field: str, settings: Settings) -> str:
    """An http(s) URL as given, or the absolute path of a file inside the allowed folders.
    A bare name is looked up in the data dir's temp/ (where HeyGem clients put files); a
    relative path is taken from the data dir."""
    value = input_text(value, field)
    if CONTROL.search(value):
        raise InputPathNotAllowed(field, "contains control characters")
    match = SCHEME.match(value)
    scheme = (match.group(1) or match.group(2)).lower() if match else ""
    if scheme in ("http", "https"):
        if not urlsplit(value).hostname:
            raise InputInvalidUrl(field, f"URL has no host: {value[:200]}")
        return value
    if scheme:
        raise InputSchemeNotAllowed(field, f"{scheme}: inputs are not accepted; give an "
                                    "http(s) URL or a file inside the data dir")
    if ".." in PurePosixPath(value).parts:
        raise InputPathNotAllowed(field, "'..' is not allowed in a path")
    path = Path(value)
    if not path.is_absolute():
        base = settings.temp_dir if len(path.parts) == 1 else settings.data_dir
        path = base / path
    real = Path(os.path.realpath(path))      # symlinks followed before the check
    roots = [Path(os.path.realpath(root)) for root in settings.input_root_paths]
    if not any(real.is_relative_to(root) for root in roots):
        raise InputPathNotAllowed(field,
                                  f"{value} is outside the folders inputs may come from "
                                  "(the data dir, or DHSERVE_INPUT_ROOTS)")
    return str(real)


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextmanager
def _storage_errors() -> Iterator[None]:
    """A disk (or quota) that fills while writing is storage.full, not an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise StorageFull("the server's storage filled up while saving the upload; "
                              "try again later") from None
        raise


def spooled_form() -> dict[str, str]:
    """The request's form fields; its files spool into the data dir as it is parsed, so a
    disk that fills meanwhile is storage.full (what was spooled goes with the request)."""
    from flask import request

    with _storage_errors():
        request.files       # noqa: B018 - parses the body: form and files
        return request.form.to_dict()


def save_upload(stream: IO[bytes], filename: str, field: str, folder: Path,
                max_mb: float) -> tuple[Path, bool]:
    """Stores an upload in the job's own folder, named by its content hash, so a retried
    request names the same file (an idempotent resubmit is the same job). Over `max_mb` it is
    refused and removed. Returns (path, whether this call created the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".upload-{uuid.uuid4().hex}.part"
    digest, size, limit = hashlib.sha256(), 0, max_mb * 2**20
    try:
        with _storage_errors(), open(part, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise InputTooLarge(field,
                                        f"upload is over the limit of {max_mb:g} MB")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InputEmpty(field, "uploaded file is empty")
        suffix = re.sub(r"[^A-Za-z0-9]", "", Path(filename or "").suffix)[:8].lower()
        path = folder / f"{field}-{digest.hexdigest()[:24]}{'.' + suffix if suffix else ''}"
        try:
            os.link(part, path)         # atomic: of two identical uploads, one creates it
            return path, True
        except FileExistsError:
            return path, False          # the same bytes are there already: same file
        except OSError:                 # a file system without hard links
            if path.exists():
                return path, False
            os.replace(part, path)
            return path, True
    finally:
        remove_quietly(part)
