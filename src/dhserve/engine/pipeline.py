"""One render, end to end: probe → speech → face analysis (cached) → lip-sync → MP4.

Streams throughout: template frames are decoded, animated and encoded batch by batch, so
memory does not grow with the length of the video. Progress goes to a callback per batch and
cancellation is checked between batches. The result is written under a temporary name and
renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from dhserve.config import Settings, option_problem
from dhserve.engine import audio as speech_audio
from dhserve.engine.face import AnalysisCache, TemplateAnalysis, analyse_frames
from dhserve.engine.face.analysis import multiple_faces_error
from dhserve.engine.frames import looped_frames, template_index
from dhserve.engine.lipsync import FrameBatch, LipSyncBackend, check_backend, create_backend
from dhserve.engine.media import (
    MediaInfo,
    Mp4Writer,
    disk_full,
    even_size,
    is_disk_full,
    probe,
    read_frames,
    shown_name,
)
from dhserve.engine.overlay import (
    OVERLAY_KINDS,
    Overlay,
    OverlayImage,
    OverlayKind,
    apply_overlays,
    check_overlay_file,
    overlay_path,
)
from dhserve.engine.progress import Progress, no_progress
from dhserve.errors import InputError
from dhserve.fsutil import file_digest, remove_quietly
from dhserve.runtime.models import RESTORE, WAV2LIP, require_model

if TYPE_CHECKING:   # restore.py needs ONNX Runtime; imported only when a render restores
    from dhserve.engine.face.restore import FaceRestorer

# Share of the progress bar each stage takes.
SPAN_PREPARE = (0.0, 0.03)
SPAN_ANALYSE = (0.03, 0.25)
SPAN_ANIMATE = (0.25, 0.99)


@dataclass(frozen=True)
class RenderOptions:
    """What one render may vary: the job's choices and the service's limits."""

    backend: str = Settings.backend
    loop: str = Settings.loop
    x264_preset: str = Settings.x264_preset
    crf: int = Settings.crf
    batch_size: int = Settings.batch_size
    multiple_faces: str = Settings.multiple_faces
    max_input_mb: float = Settings.max_input_mb
    max_video_seconds: float = Settings.max_video_seconds
    max_audio_seconds: float = Settings.max_audio_seconds
    max_video_pixels: int = Settings.max_video_pixels
    frame_cache_mb: float = Settings.frame_cache_mb
    face_restore: bool = False     # HeyGem's chaofen=1: restore the face after lip-sync
    watermark: bool = False        # HeyGem's watermark_switch=1: Settings.watermark_image
    ai_label: bool = False         # HeyGem's digital_auth=1: Settings.ai_label_image

    def __post_init__(self) -> None:
        """A job's choices are user input: a bad one is an InputError naming the option."""
        for name in self.__dataclass_fields__:
            problem = option_problem(name, getattr(self, name))
            if problem:
                raise InputError("options.invalid", name, problem)
        for name in ("face_restore", "watermark", "ai_label"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InputError("options.invalid", name, f"must be true or false; got {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings, **choices) -> RenderOptions:
        """The service's defaults for every option Settings has, then the job's `choices`."""
        names = cls.__dataclass_fields__
        values = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
        values.update({k: v for k, v in choices.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    duration: float            # seconds of video (= the speech's, within a frame)
    elapsed: float             # wall seconds spent rendering
    analysis_cached: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def render_fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


def _span(span: tuple[float, float], fraction: float) -> float:
    return span[0] + (span[1] - span[0]) * fraction


def probe_inputs(video: Path, audio: Path, options: RenderOptions) -> tuple[MediaInfo, MediaInfo]:
    """Checks both inputs against the limits before any heavy work (the template's size from
    its header, before a picture is decoded)."""
    template = probe(video, "video", options.max_input_mb, kind="video",
                     max_pixels=options.max_video_pixels)
    if template.video is None:
        raise InputError("video.no_video_stream", "video", "file has no video stream")
    v = template.video
    if not v.is_image and v.duration > options.max_video_seconds:
        raise _video_too_long(v.duration, options)
    speech = probe(audio, "audio", options.max_input_mb, kind="audio")
    if speech.audio is None:
        raise InputError("audio.no_audio_stream", "audio", "file has no audio stream")
    if speech.audio.duration > options.max_audio_seconds:
        raise speech_audio.too_long("audio", speech.audio.duration, options.max_audio_seconds)
    return template, speech


def _video_too_long(seconds: float, options: RenderOptions) -> InputError:
    return InputError("video.too_long", "video", f"{seconds:.1f} s is over the limit of "
                      f"{options.max_video_seconds:g} s")


def check_models(options: RenderOptions, settings: Settings | None = None,
                 have_backend: bool = False, have_restorer: bool = False) -> None:
    """The model files the job's choices need (and the caller did not bring loaded) are
    there; InputError model.missing naming the file ("needs models/GFPGANv1.4.onnx")
    otherwise. Looks at files only (loads nothing), so a submit can be refused before it is
    queued."""
    settings = settings or Settings()
    if options.face_restore and not have_restorer:
        require_model(settings, RESTORE, "face_restore")
    if not have_backend and check_backend(options.backend, settings) == "wav2lip":
        require_model(settings, WAV2LIP, "backend")


def check_overlays(options: RenderOptions, settings: Settings | None = None
                   ) -> list[tuple[OverlayKind, Path]]:
    """The overlays the job's choices ask for, each with its image file, checked to be
    configured (overlay.not_configured) and a readable image (overlay.invalid). Like
    check_models it only looks at files, so a submit can be refused before it is queued."""
    settings = settings or Settings()
    wanted = []
    for kind in OVERLAY_KINDS:
        if getattr(options, kind.option):
            path = overlay_path(settings, kind)
            check_overlay_file(path, kind.option)
            wanted.append((kind, path))
    return wanted


def load_overlays(options: RenderOptions, settings: Settings | None = None
                  ) -> list[tuple[OverlayKind, OverlayImage]]:
    """The overlays the job asks for, decoded once for the whole render; the same refusals
    as check_overlays."""
    settings = settings or Settings()
    return [(kind, OverlayImage.read(overlay_path(settings, kind), kind.option))
            for kind in OVERLAY_KINDS if getattr(options, kind.option)]


def check_output(out: Path) -> Path:
    """The output can be written, checked before minutes of rendering rather than after."""
    out = Path(out)
    if out.is_dir():
        raise InputError("output.invalid", "out",
                         f"{shown_name(out)} is a directory, not a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full() from None
        raise InputError("output.invalid", "out", f"cannot create its folder "
                         f"{shown_name(out.parent)}: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise InputError("output.invalid", "out",
                         f"its folder {shown_name(out.parent)} is not writable")
    return out


def analyse_template(template: MediaInfo, options: RenderOptions, cache: AnalysisCache | None,
                     progress: Progress) -> tuple[TemplateAnalysis, bool]:
    """The template's face analysis, from the cache when this exact file was seen before."""
    digest = file_digest(template.path) if cache else ""
    analysis = cache.get(digest) if cache else None
    cached = analysis is not None
    if analysis is None:
        v = template.video
        fps = float(v.fps)
        expected = max(v.frame_count or round(template.duration * fps), 1)
        progress.update(SPAN_ANALYSE[0], "analysing face")

        def on_frame(done: int) -> None:
            if not v.is_image and done > options.max_video_seconds * fps + 1:
                raise _video_too_long(done / fps, options)  # the container did not say
            if done % 8 == 0:
                progress.check_cancelled()
                progress.update(_span(SPAN_ANALYSE, min(done / expected, 1.0)),
                                "analysing face")

        with closing(read_frames(template.path, v.rotation, "video",
                                 options.max_video_pixels)) as frames:
            analysis = analyse_frames(frames, "video", options.multiple_faces, on_frame)
        declared = template.video.frame_count
        if declared and analysis.frame_count < 0.9 * declared - 1:
            raise InputError("input.corrupt", "video", f"video is truncated: only "
                             f"{analysis.frame_count} of its {declared} frames can be decoded")
        if cache:
            cache.put(digest, analysis)
    elif options.multiple_faces == "error" and analysis.face_counts.max() > 1:
        frame = int(np.argmax(analysis.face_counts > 1))
        raise multiple_faces_error("video", int(analysis.face_counts[frame]), frame)
    progress.update(SPAN_ANALYSE[1], "analysing face")
    return analysis, cached


def render(video: Path, audio: Path, out: Path, options: RenderOptions = RenderOptions(),
           cache: AnalysisCache | None = None, progress: Progress = no_progress,
           backend: LipSyncBackend | None = None, restorer: FaceRestorer | None = None,
           settings: Settings | None = None) -> RenderResult:
    """Renders `video` lip-synced to `audio` into `out` (MP4, H.264 + AAC).

    `backend` and `restorer`: loaded once by a worker and shared by its renders; when None
    they are loaded for this render from `settings` (model files, device; default
    Settings()) and released after it. The restorer is used when `options.face_restore`;
    `options.watermark` and `options.ai_label` draw the images `settings` names for them over
    every output frame, last, so lip-sync and restoration never touch them.

    Bad media is an InputError naming the input; a disk that fills while the result (or a
    spill file, or the analysis cache) is written is StorageFull (storage.full), its partial
    file removed."""
    started = time.monotonic()
    try:
        return _render(video, audio, out, options, cache, progress, backend, restorer,
                       settings or Settings(), started)
    except (OSError, av.error.FFmpegError) as exc:
        # ENOSPC writing the MP4 (Python's or FFmpeg's error), a spill file or the analysis
        # cache: storage.full, not an internal error; _animate has removed the partial file.
        if is_disk_full(exc):
            raise disk_full() from None
        raise


def _render(video: Path, audio: Path, out: Path, options: RenderOptions,
            cache: AnalysisCache | None, progress: Progress, backend: LipSyncBackend | None,
            restorer: FaceRestorer | None, settings: Settings, started: float) -> RenderResult:
    out = check_output(out)
    if not options.face_restore:
        restorer = None
    check_models(options, settings, backend is not None, restorer is not None)
    images = load_overlays(options, settings)
    progress.update(0.0, "probing")
    template, _ = probe_inputs(Path(video), Path(audio), options)
    own_backend, own_restorer = backend is None, restorer is None and options.face_restore
    backend = backend or create_backend(options.backend, settings)
    try:
        if own_restorer:
            from dhserve.engine.face.restore import FaceRestorer

            restorer = FaceRestorer.from_settings(settings)
        progress.update(_span(SPAN_PREPARE, 0.3), "decoding audio")
        wav = speech_audio.decode_speech(Path(audio), "audio", options.max_input_mb,
                                         options.max_audio_seconds)
        progress.check_cancelled()
        analysis, cached = analyse_template(template, options, cache, progress)
        fps = template.video.fps
        total = speech_audio.frame_count(wav.size, float(fps))
        openness = speech_audio.mouth_openness(wav, float(fps), total)
        mel = speech_audio.mel_spectrogram(wav) if backend.needs_mel else None
        del wav
        size = even_size(analysis.width, analysis.height)   # what the encoder keeps
        overlays = [image.place(*size, kind.corner) for kind, image in images]
        done = _animate(template, analysis, backend, restorer, overlays, openness, mel,
                        Path(audio), out, options, progress)
    finally:
        if own_backend:
            backend.close()
        if own_restorer and restorer is not None:
            restorer.close()
    progress.update(1.0, "done")
    width, height = even_size(analysis.width, analysis.height)
    return RenderResult(out, done, fps, width, height, done / float(fps),
                        time.monotonic() - started, cached, list(analysis.warnings))


def _context(analysis: TemplateAnalysis, options: RenderOptions, frames: range,
             total: int) -> np.ndarray:
    """Landmarks of output frames `frames` (those within 0..total-1), in output order."""
    indices = [template_index(i, analysis.frame_count, options.loop) for i in frames
               if 0 <= i < total]
    return analysis.landmarks[indices]


def _animate(template: MediaInfo, analysis: TemplateAnalysis, backend: LipSyncBackend,
             restorer: FaceRestorer | None, overlays: list[Overlay], openness: np.ndarray,
             mel: np.ndarray | None, audio: Path, out: Path, options: RenderOptions,
             progress: Progress) -> int:
    """Streams template frames through the backend (then the restorer and the overlays) into
    the MP4; returns frames written."""
    fps, total = template.video.fps, openness.size
    # Unique per attempt: two deliveries of one job (same pid in two containers, say) never
    # share a temporary file; the rename makes whichever finishes the result.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.part")
    done = 0
    try:
        with Mp4Writer(tmp, analysis.width, analysis.height, fps, audio, options.x264_preset,
                       options.crf) as writer, closing(looped_frames(
                template.path, template.video.rotation, analysis.frame_count, total,
                options.loop, int(options.frame_cache_mb * 2**20), out.parent,
                options.max_video_pixels)) as frames:
            while done < total:
                progress.check_cancelled()
                chunk = list(islice(frames, options.batch_size))
                if not chunk:
                    break
                count = len(chunk)
                k = backend.context_frames
                batch = FrameBatch(
                    frames=[frame for _, frame in chunk],
                    landmarks=analysis.landmarks[[index for index, _ in chunk]],
                    openness=openness[done:done + count],
                    mel=None if mel is None else speech_audio.mel_chunks(
                        mel, float(fps), done, count, total),
                    before=_context(analysis, options, range(done - k, done), total),
                    after=_context(analysis, options, range(done + count, done + count + k),
                                   total))
                animated = backend.animate(batch)
                if restorer is not None:
                    animated = restorer.restore(animated, batch.landmarks)
                if overlays:
                    animated = apply_overlays(overlays, animated)
                for frame in animated:
                    writer.write(frame)
                done += count
                progress.frames(done, total)
                progress.update(_span(SPAN_ANIMATE, done / total), "lip-sync")
            progress.update(SPAN_ANIMATE[1], "encoding")
        os.replace(tmp, out)
    except BaseException:
        remove_quietly(tmp)
        raise
    return done
