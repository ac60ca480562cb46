"""Admission: every check a new job passes before it is queued, in one place.

/easy/submit, /v1/jobs and `dhserve jobs submit` all call `admit`, so a refusal reads the
same everywhere and nothing is checked twice. It runs in the web tier (or the CLI): it looks
at files and headers only (free space, options, model files, overlay images, the inputs'
media headers, a background image), loads no model and never imports the render pipeline.
Needs no Flask: the caller counts what it admitted.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from dhserve.config import Settings
from dhserve.engine.background import load_image
from dhserve.engine.image_header import image_size
from dhserve.engine.media_input import check_file
from dhserve.engine.preflight import RenderOptions, check_models, check_overlays
from dhserve.engine.probe import probe
from dhserve.errors import (
    NO_STREAM,
    InputError,
    InputNotFound,
    OptionsInvalid,
    RequestInvalid,
    StorageFull,
)
from dhserve.fsutil import free_mb
from dhserve.jobs.downloads import is_url
from dhserve.jobs.model import BACKGROUND, Job, JobSpec
from dhserve.jobs.options import job_container, job_render_options
from dhserve.jobs.store import JobStore

KINDS = ("video", "audio")     # and the optional BACKGROUND: an image behind the person
# A background image may have this many times the pixels of the largest template allowed
# (a 12 MP photo fits at the default); a bigger header is refused before decoding a pixel.
BACKGROUND_PIXELS_FACTOR = 4


def admit(settings: Settings, store: JobStore, job_id: str, spec: JobSpec,
          record_refusal: bool = False, refused: InputError | None = None,
          named: dict[str, str] | None = None) -> tuple[Job, bool]:
    """Queues the job `spec` as `job_id` once it passed every check; returns (job, created).

    A replay (the id exists) is answered by the store alone: the same spec is the same job
    even if its input files are gone by now; only a storage.full job is not queued again
    while the space is still short. Otherwise: free space, the options and the model and
    overlay files they need, then each local input read as media by its header. A refused
    input (found here, or `refused` by the caller) raises, or with `record_refusal` becomes a
    job that failed at once, for clients that only learn outcomes by polling (HeyGem's).
    `named`: each input's local path -> the text the client gave for it, so that a refusal
    names the input as the client did, not by its place on this server."""
    if store.exists(job_id):
        try:
            check_free_space(settings)
        except StorageFull as full:     # the store would requeue a storage.full job
            return store.submit(job_id, spec, failed=full)
        return store.submit(job_id, spec)
    try:
        if refused is not None:
            raise refused
        check_free_space(settings)
        check_job(settings, spec)          # cheap, before any input is opened
        for kind in KINDS:
            try:
                check_media(getattr(spec, kind), kind, kind, settings.max_input_mb,
                            settings.max_video_pixels)
            except InputError as exc:
                raise public_error(exc, settings, named) from None
        if spec.background is not None and not is_url(spec.background):
            try:
                check_background_image(Path(spec.background), settings)
            except InputError as exc:
                raise public_error(exc, settings, named) from None
    except (InputError, StorageFull) as exc:
        if not record_refusal or isinstance(exc, RequestInvalid):
            raise
        if isinstance(exc, StorageFull):    # the job store may share the full disk
            try:
                return store.submit(job_id, spec, failed=exc)
            except DBAPIError:
                raise exc from None
        return store.submit(job_id, spec, failed=exc)
    return store.submit(job_id, spec)


def check_free_space(settings: Settings) -> None:
    """StorageFull when the data dir has less free space than DHSERVE_MIN_FREE_MB: a new job
    would fail anyway, and a full disk is worse for the jobs already there."""
    free = free_mb(settings.data_dir)
    if free < settings.min_free_mb:
        raise StorageFull(f"the server's storage is full ({free:.0f} MB free, "
                          f"{settings.min_free_mb:g} MB needed for new jobs); "
                          "try again later")


def check_job(settings: Settings, spec: JobSpec) -> RenderOptions:
    """What a submit checks before queueing: the options, that the model files they need are
    present ("needs models/GFPGANv1.4.onnx"), and that the overlays they ask for are
    configured and readable images. Reads files only; loads no model."""
    options = job_render_options(settings, spec.options)
    job_container(spec)
    check_models(options, settings)
    check_overlays(options, settings)
    return options


def check_media(value: str, field: str, kind: str, max_mb: float, max_pixels: int) -> None:
    """A local input reads as media of `kind`, judged by its content (URLs are checked by
    the worker after downloading); a picture over `max_pixels` is refused from its header,
    before any of it is decoded."""
    if is_url(value):
        return
    try:
        info = probe(Path(value), field, max_mb, kind=kind, max_pixels=max_pixels)
    except OSError as exc:          # a name too long for the file system, say
        raise InputNotFound(field, f"cannot use this path: "
                            f"{exc.strerror or exc}") from None
    if getattr(info, kind) is None:
        raise NO_STREAM[kind](field, f"file has no {kind} stream")


def check_background_image(path: Path, settings: Settings, decode: bool = False) -> None:
    """A background image file can be used: it exists (input.not_found as for the other
    inputs), is within the size limit, is a PNG, JPEG, WebP, BMP or GIF whose header
    declares no more than BACKGROUND_PIXELS_FACTOR times the template pixel limit (read
    before any decoding: a decompression bomb; a format whose size cannot be read first is
    refused), and with `decode` decodes (options.invalid naming `background` otherwise).
    A submit, and the worker after downloading a URL, read the header only (a web thread
    decodes nothing); the render decodes it once, before any heavy work (check_background)."""
    try:
        check_file(path, BACKGROUND, settings.max_input_mb)
        size = image_size(path)
    except OSError as exc:          # a name too long for the file system, say
        raise InputNotFound(BACKGROUND, f"cannot use this path: "
                            f"{exc.strerror or exc}") from None
    if size is None:
        raise OptionsInvalid(BACKGROUND, f"{path.name}: not an image of a kind accepted "
                             "here (PNG, JPEG, WebP, BMP or GIF)")
    limit = BACKGROUND_PIXELS_FACTOR * settings.max_video_pixels
    if size[0] * size[1] > limit:
        raise OptionsInvalid(BACKGROUND, f"{path.name}: the image is {size[0]}x{size[1]}, "
                             f"over the limit of {limit} pixels")
    if decode:
        load_image(path)


def public_error(exc: InputError, settings: Settings,
                 named: dict[str, str] | None = None) -> InputError:
    """`exc` with no path of this server in it: the inputs as the client named them,
    other files relative to the data dir."""
    reason = public_text(exc.reason, settings, named)
    return exc if reason == exc.reason else type(exc)(exc.field, reason)


def data_roots(settings: Settings) -> list[str]:
    """The data dir's absolute spellings (as configured, and with symlinks resolved)."""
    roots = {os.path.abspath(settings.data_dir), os.path.realpath(settings.data_dir)}
    return sorted((r for r in roots if r != os.sep), key=len, reverse=True)


def public_text(text: str, settings: Settings, named: dict[str, str] | None = None) -> str:
    """A message with the paths of this server taken out: the inputs' local paths become
    the names the client gave (`named`), the data dir's prefix goes (relative paths)."""
    for local, given in sorted((named or {}).items(), key=lambda kv: -len(kv[0])):
        if local and local != given:
            text = text.replace(local, given)
    for root in data_roots(settings):
        text = text.replace(root + os.sep, "").replace(root, "<data dir>")
    return text
