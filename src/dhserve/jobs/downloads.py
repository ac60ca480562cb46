"""Fetches http(s) inputs for a job, within a size and a time limit."""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dhserve import __version__
from dhserve.engine.media import remove_quietly
from dhserve.errors import InputError

CHUNK = 1 << 20


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// too; an input may only ever be http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl.split(':')[0]}:"
                                         " refused (http and https only)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def is_url(value: str) -> bool:
    return urlsplit(value).scheme.lower() in ("http", "https")


def download(url: str, field: str, folder: Path, max_bytes: int, timeout_s: float) -> Path:
    """Saves `url` into `folder`; errors name the field and the reason, partial files go."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(urlsplit(url).path).name))[-100:]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{field}-{name or 'input'}"
    part = path.with_name(path.name + ".part")
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": f"dhserve/{__version__}"})
    try:
        with _opener.open(request, timeout=min(timeout_s, 30.0)) as response, \
                open(part, "wb") as out:
            declared = response.headers.get("Content-Length", "")
            expected = int(declared) if declared.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise _too_big(field, max_bytes)
            size = 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_big(field, max_bytes)
                if time.monotonic() > deadline:
                    raise InputError("input.download_failed", field,
                                     f"download took longer than {timeout_s:g} s")
                out.write(chunk)
            if expected is not None and size < expected:
                # read() answers b"" when the server closes early: a cut-off file would be
                # rendered as if it were whole
                raise InputError("input.download_failed", field,
                                 f"download of {url} broke off after {size} of {expected} bytes")
        part.replace(path)
        return path
    except urllib.error.HTTPError as exc:
        raise InputError("input.download_failed", field,
                         f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError("input.download_failed", field,
                         f"cannot download {url}: {reason}") from None
    finally:
        remove_quietly(part)


def _too_big(field: str, max_bytes: int) -> InputError:
    return InputError("input.too_large", field,
                      f"download is over the limit of {max_bytes / 2**20:g} MB")
