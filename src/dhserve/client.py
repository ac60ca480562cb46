"""A Python client for dhserve's REST API (/v1/jobs): submit (uploading local files), follow,
cancel and download jobs.

    from dhserve.client import Client

    client = Client("http://127.0.0.1:8383", api_key=None)
    job = client.submit("avatar.mp4", "speech.wav", loop="restart")
    job = client.wait(job, on_progress=lambda j: print(j.progress, j.stage))
    client.download(job, "talking.mp4")
    clear = client.submit("avatar.mp4", "speech.wav", background="transparent")   # a .webm
    over = client.submit("avatar.mp4", "speech.wav", background=Path("beach.jpg"))

Built on the standard library (urllib) on purpose: an upload is streamed from disk as a
multipart body of known length (requests would read each file into memory to encode it, and
would be a new dependency of the server package for the sake of its client).
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from dhserve.errors import DhserveError
from dhserve.jobs.model import CONTENT_TYPES, background_option

CHUNK = 1 << 20
FINISHED = frozenset({"succeeded", "failed", "canceled"})
TEMPORARY = frozenset({502, 503, 504})    # a restarting service or a proxy without it: retried
CONTAINERS = {media: container for container, media in CONTENT_TYPES.items()}
Input = str | os.PathLike


class ClientError(DhserveError):
    """The server refused a request (its problem document's `code`, `detail`, `field`), or
    could not be reached (`client.unreachable`), answered with something that is not the API
    (`client.bad_response`), redirected a request the client will not resend
    (`client.redirect`), or was waited for in vain (`client.timeout`)."""

    def __init__(self, code: str, detail: str, field: str | None = None,
                 status: int | None = None):
        super().__init__(f"{field}: {detail}" if field else detail)
        vars(self)["code"] = code       # the server's code (data it sent), over the class's
        self.detail, self.field, self.status = detail, field, status

    @property
    def temporary(self) -> bool:
        """Likely to pass: the service is restarting, or a proxy lost sight of it."""
        return self.status in TEMPORARY


class ClientUnreachable(ClientError):
    """The service could not be reached, or its answer broke off: temporary, retried."""

    def __init__(self, detail: str):
        super().__init__("client.unreachable", detail)

    @property
    def temporary(self) -> bool:
        return True


@dataclass(frozen=True)
class JobResult:
    """A finished job's video: where to fetch it and what it is."""

    url: str
    container: str = "mp4"        # mp4, or webm / mov (a transparent background)
    content_type: str = "video/mp4"
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration: float | None = None
    elapsed: float | None = None
    backend: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobStatus:
    """A job as the server last showed it."""

    id: str
    state: str                    # queued, running, succeeded, failed, canceled
    progress: int                 # 0..100
    stage: str
    video: str
    audio: str
    options: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool
    error_code: str | None
    error_message: str | None
    result: JobResult | None
    document: dict[str, Any] = field(repr=False, compare=False)
    background: str | None = None           # the background image, when one was given

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> JobStatus:
        error = doc.get("error") or {}
        result = doc.get("result")
        return cls(
            id=doc["id"], state=doc["state"], progress=int(doc["progress"]),
            stage=doc.get("stage") or "", video=doc["inputs"]["video"],
            audio=doc["inputs"]["audio"], options=doc.get("options") or {},
            created_at=doc["created_at"], started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            cancel_requested=bool(doc.get("cancel_requested")),
            error_code=error.get("code"), error_message=error.get("message"),
            result=JobResult(**{**{k: result[k] for k in JobResult.__dataclass_fields__
                                   if k in result},
                                "warnings": tuple(result.get("warnings") or ())})
            if result else None,
            document=doc, background=doc["inputs"].get("background"))


class Client:
    """dhserve's /v1 API over HTTP. `api_key` is sent as `Authorization: Bearer`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError("client.invalid_url", f"not an http(s) URL: {base_url!r}",
                              "server")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_Redirects)

    # -- jobs

    def submit(self, video: Input, audio: Input, *, job_id: str | None = None,
               priority: int = 0, **options: Any) -> JobStatus:
        """Queues a render. A `Path`, or a string naming an existing local file, is uploaded
        (streamed from disk); a `ServerFile`, or any other string (an http(s) URL, a name in
        the server's temp/, a path inside its data dir), is passed for the server to
        resolve. `options` are render options: backend, loop, x264_preset, crf,
        multiple_faces, face_restore, watermark, ai_label, background, and the result's
        container (mp4; webm or mov for a transparent background, webm by default).
        `background` is keep, transparent or a #rrggbb colour, or else an image, given as
        the inputs are (a Path or local file is uploaded). `job_id` makes the submit
        idempotent (Idempotency-Key)."""
        inputs: dict[str, Input] = {"video": video, "audio": audio}
        if options.get("background") is not None and not _background_choice(
                options["background"]):
            inputs["background"] = options.pop("background")
        headers = {"Idempotency-Key": job_id} if job_id else {}
        uploads = {kind: _local_file(value, kind) for kind, value in inputs.items()}
        if not any(uploads.values()):
            body = json.dumps({**{kind: str(value) for kind, value in inputs.items()},
                               "options": options, "priority": priority}).encode()
            return self._job(self._json("POST", "/v1/jobs", body,
                                        {**headers, "Content-Type": "application/json"}))
        fields: list[tuple[str, str | Path]] = [
            (kind, uploads[kind] or str(inputs[kind])) for kind in inputs]
        fields += [("options", json.dumps(options)), ("priority", json.dumps(priority))]
        form = _Multipart(fields)
        return self._job(self._json("POST", "/v1/jobs", form, {**headers, **form.headers}))

    def get(self, job: JobStatus | str) -> JobStatus:
        return self._job(self._json("GET", f"/v1/jobs/{_job_id(job)}"))

    def list(self, state: str | None = None, limit: int = 50) -> list[JobStatus]:
        """Recent jobs, newest first."""
        query = urlencode({k: v for k, v in {"state": state, "limit": limit}.items() if v})
        doc = self._json("GET", f"/v1/jobs?{query}")
        if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
            raise self._bad_response(f"no job list in {str(doc)[:200]!r}")
        return [self._job(d) for d in doc["jobs"]]

    def cancel(self, job: JobStatus | str) -> JobStatus:
        """A queued job ends at once; a running one stops at its next frame batch (the job
        returned is then still running, with cancel_requested set)."""
        return self._job(self._json("DELETE", f"/v1/jobs/{_job_id(job)}"))

    def wait(self, job: JobStatus | str, on_progress: Callable[[JobStatus], None] | None = None,
             timeout: float | None = None, interval: float = 0.5,
             on_retry: Callable[[ClientError], None] | None = None,
             max_outage: float | None = 300.0) -> JobStatus:
        """Polls until the job has finished and returns it, whatever its outcome (check
        `state`). `on_progress` gets the job each time its state, progress or stage change,
        the last time with the final job. Raises `client.timeout` after `timeout` seconds.

        A poll that fails for a temporary reason (`ClientError.temporary`: the service is
        restarting or unreachable) does not end the wait: `on_retry` gets the error and the
        poll is tried again every `interval`, until the deadline or until the failures have
        lasted `max_outage` seconds (None: no limit); then that error is raised. Once the
        service answers again, `on_progress` gets the job again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        failing_since: float | None = None
        while True:
            try:
                current = self.get(job)
            except ClientError as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if (not exc.temporary or (deadline is not None and now >= deadline)
                        or (max_outage is not None and now - failing_since >= max_outage)):
                    raise
                if on_retry is not None:
                    on_retry(exc)
                seen = None                     # on_progress hears again once it is back
                time.sleep(interval)
                continue
            failing_since = None
            shown = (current.state, current.progress, current.stage)
            if on_progress is not None and shown != seen:
                on_progress(current)
            seen = shown
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientError("client.timeout", f"job {current.id} is still "
                                  f"{current.state} ({current.progress} %) after {timeout:g} s")
            time.sleep(interval)

    def download(self, job: JobStatus | str, path: str | os.PathLike) -> Path:
        """Streams the job's video to `path` (a folder: `<job id>.<container>` in it, .mp4,
        or .webm / .mov as the server sends it), written under a temporary name, then
        renamed, so `path` is never a partial file."""
        path = Path(path)
        with self._open("GET", f"/v1/jobs/{_job_id(job)}/result") as response:
            if path.is_dir():
                container = CONTAINERS.get(response.headers.get_content_type(), "mp4")
                path = path / f"{job.id if isinstance(job, JobStatus) else job}.{container}"
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                with open(partial, "wb") as out:
                    out.writelines(_received(response, self.base_url))
                os.replace(partial, path)
            except OSError as exc:          # the local side: folder, permissions, space
                raise ClientError("output.invalid", f"cannot write {path}: "
                                  f"{exc.strerror or exc}") from None
            finally:
                partial.unlink(missing_ok=True)
        return path

    def health(self) -> dict[str, Any]:
        """The service's /health document: status, workers, queue, GPU."""
        return self._json("GET", "/health")

    # -- HTTP

    def _json(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> Any:
        with self._open(method, path, body, headers) as response:
            raw = b"".join(_received(response, self.base_url))
        try:
            return json.loads(raw)
        except ValueError:                      # not JSON, or not text at all
            raise self._bad_response(f"{method} {path} answered {response.status} with "
                                     f"something that is not JSON: {raw[:200]!r}") from None

    def _job(self, doc: Any) -> JobStatus:
        try:
            return JobStatus.from_document(doc)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._bad_response(f"not a job document: {str(doc)[:200]!r}") from None

    def _bad_response(self, detail: str) -> ClientError:
        return ClientError("client.bad_response", f"{self.base_url} is not a dhserve API "
                           f"(or not this version of it): {detail}")

    def _open(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None):
        headers = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=body, method=method,
                                         headers=headers)
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _problem(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClientUnreachable(f"cannot reach {self.base_url}: {reason}") from None
        except http.client.HTTPException as exc:     # BadStatusLine, LineTooLong …
            raise self._bad_response(f"not an HTTP answer ({exc!r})") from None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(
        parts.scheme)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects as a careful client takes them. urllib alone copies the Authorization header
    to wherever a redirect points (another host, https to http) and resends a redirected POST
    as a GET without its body. Here a GET or HEAD follows, with the API key only to the same
    scheme, host and port; any other method is refused (`client.redirect`)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        method = req.get_method()
        if method not in ("GET", "HEAD"):
            fp.close()
            raise ClientError("client.redirect", f"{method} {req.full_url} was redirected "
                              f"({code}) to {newurl}; not sent again: give the service's own "
                              "URL (--server, DHSERVE_SERVER)", status=code)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _problem(exc: urllib.error.HTTPError) -> ClientError:
    """The server's problem document as a ClientError; any other error answer by its status."""
    try:
        text = exc.read(64 * 1024).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):     # the body broke off: the status stays
        text = ""
    try:
        doc = json.loads(text)
        return ClientError(str(doc["code"]), str(doc.get("detail", "")), doc.get("field"),
                           exc.code)
    except (ValueError, KeyError, TypeError):
        detail = " ".join(text.split())[:300] or exc.reason
        return ClientError(f"http.{exc.code}", f"HTTP {exc.code}: {detail}", status=exc.code)


def _received(response: Any, base_url: str) -> Iterator[bytes]:
    """The body in chunks. A connection lost on the way is the server's side, not ours; so is
    a body shorter than its Content-Length (read(n) then just returns b"" early, while a cut
    chunked body raises IncompleteRead)."""
    expected = response.headers.get("Content-Length")
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise ClientUnreachable(f"the answer from {base_url} broke off "
                                    f"after {received} bytes: {exc!r}") from None
        if not chunk:
            break
        received += len(chunk)
        yield chunk
    if expected is not None and expected.strip().isdigit() and received != int(expected):
        raise ClientUnreachable(f"the answer from {base_url} broke off after "
                                f"{received} of {int(expected)} bytes")


def _job_id(job: JobStatus | str) -> str:
    return quote(job.id if isinstance(job, JobStatus) else str(job), safe="")


class ServerFile(str):
    """An input the server resolves (a name in its temp/, a path in its data dir), never
    uploaded, even where a local file has the same name: `ServerFile("avatar.mp4")`."""


def _background_choice(value: Any) -> bool:
    """A background that is an option (keep, transparent, #rrggbb), not an image input."""
    return not isinstance(value, ServerFile) and background_option(value)


def _local_file(value: Input, kind: str) -> Path | None:
    """The file to upload for this input, or None when the server is to resolve it."""
    if isinstance(value, ServerFile):
        return None
    if isinstance(value, os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise ClientError("input.not_found", f"no such file: {path}", kind)
        return path
    text = str(value)
    if urlsplit(text).scheme in ("http", "https"):
        return None
    return Path(text) if Path(text).is_file() else None


class _Multipart:
    """A multipart/form-data body read from disk as it is sent, with its length known up
    front (urllib then sends Content-Length, not chunks, which every server accepts)."""

    def __init__(self, fields: list[tuple[str, str | Path]]):
        self.boundary = f"dhserve-{uuid.uuid4().hex}"
        self._parts: list[bytes | Path] = []
        for name, value in fields:
            if isinstance(value, Path):
                kind = mimetypes.guess_type(value.name)[0] or "application/octet-stream"
                filename = value.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
                self._parts.append(self._head(name, f'; filename="{filename}"', kind))
                self._parts.append(value)
            else:
                self._parts.append(self._head(name, "", None) + value.encode())
            self._parts.append(b"\r\n")
        self._parts.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(p.stat().st_size if isinstance(p, Path) else len(p)
                          for p in self._parts)
        self.headers = {"Content-Type": f"multipart/form-data; boundary={self.boundary}",
                        "Content-Length": str(self.length)}

    def _head(self, name: str, extra: str, kind: str | None) -> bytes:
        head = f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n'
        if kind:
            head += f"Content-Type: {kind}\r\n"
        return (head + "\r\n").encode()

    def __iter__(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
                continue
            with open(part, "rb") as stream:
                yield from _chunks(stream)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk
