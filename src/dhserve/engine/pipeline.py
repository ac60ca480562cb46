"""One render, end to end: probe → speech → face analysis (cached) → lip-sync → face restore →
background (person masks, cached) → overlays → MP4 (or WebM/MOV with alpha).
What a render may vary and its file-only checks are in preflight.py (the web tier uses them).

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

import av
import numpy as np

from dhserve.config import Settings
from dhserve.engine import audio as speech_audio
from dhserve.engine.alpha_writer import check_container, writer_class
from dhserve.engine.background import KEEP, Compositor, apply_over, check_background, edge_rows
from dhserve.engine.face import AnalysisCache, TemplateAnalysis, analyse_frames
from dhserve.engine.face.analysis import multiple_faces_error
from dhserve.engine.face.restore import FaceRestorer
from dhserve.engine.face.segmentation import TemplateMasks, masks_with_frames
from dhserve.engine.frames import looped_frames, template_index
from dhserve.engine.lipsync import FrameBatch, LipSyncBackend, create_backend
from dhserve.engine.media import (
    MediaInfo,
    VideoInfo,
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
    overlay_path,
)
from dhserve.engine.preflight import RenderOptions, check_models
from dhserve.engine.progress import Progress, no_progress
from dhserve.errors import (
    CorruptInput,
    InputError,
    NoAudioStream,
    NoVideoStream,
    OutputInvalid,
    VideoTooLong,
)
from dhserve.fsutil import file_digest, remove_quietly
from dhserve.stages import Stage

DEFAULTS = RenderOptions()
# Share of the progress bar each stage takes.
SPAN_PREPARE = (0.0, 0.03)
SPAN_ANALYSE = (0.03, 0.25)
SPAN_ANIMATE = (0.25, 0.99)


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


def template_video(template: MediaInfo) -> VideoInfo:
    """The template's video stream; NoVideoStream for a file without one (probe_inputs
    refuses such a template before the render starts)."""
    if template.video is None:
        raise NoVideoStream("video", "file has no video stream")
    return template.video


def probe_inputs(video: Path, audio: Path, options: RenderOptions) -> tuple[MediaInfo, MediaInfo]:
    """Checks both inputs against the limits before any heavy work (the template's size from
    its header, before a picture is decoded)."""
    template = probe(video, "video", options.max_input_mb, kind="video",
                     max_pixels=options.max_video_pixels)
    v = template_video(template)
    if not v.is_image and v.duration > options.max_video_seconds:
        raise _video_too_long(v.duration, options)
    speech = probe(audio, "audio", options.max_input_mb, kind="audio")
    if speech.audio is None:
        raise NoAudioStream("audio", "file has no audio stream")
    if speech.audio.duration > options.max_audio_seconds:
        raise speech_audio.too_long("audio", speech.audio.duration, options.max_audio_seconds)
    return template, speech


def _video_too_long(seconds: float, options: RenderOptions) -> InputError:
    return VideoTooLong("video", f"{seconds:.1f} s is over the limit of "
                        f"{options.max_video_seconds:g} s")


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
        raise OutputInvalid("out",
                            f"{shown_name(out)} is a directory, not a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full() from None
        raise OutputInvalid("out", f"cannot create its folder "
                            f"{shown_name(out.parent)}: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise OutputInvalid("out",
                            f"its folder {shown_name(out.parent)} is not writable")
    return out


def analyse_template(template: MediaInfo, options: RenderOptions, cache: AnalysisCache | None,
                     progress: Progress, digest: str
                     ) -> tuple[TemplateAnalysis, bool]:
    """The template's face analysis, from the cache when this exact file was seen before
    (`digest`: its content hash)."""
    analysis = cache.get(digest) if cache else None
    cached = analysis is not None
    if analysis is None:
        v = template_video(template)
        fps = float(v.fps)
        expected = max(v.frame_count or round(template.duration * fps), 1)
        progress.update(SPAN_ANALYSE[0], Stage.ANALYSING_FACE)

        def on_frame(done: int) -> None:
            if not v.is_image and done > options.max_video_seconds * fps + 1:
                raise _video_too_long(done / fps, options)  # the container did not say
            if done % 8 == 0:
                progress.check_canceled()
                progress.update(_span(SPAN_ANALYSE, min(done / expected, 1.0)),
                                Stage.ANALYSING_FACE)

        with closing(read_frames(template.path, v.rotation, "video",
                                 options.max_video_pixels)) as frames:
            analysis = analyse_frames(frames, "video", options.multiple_faces, on_frame)
        declared = v.frame_count
        if declared and analysis.frame_count < 0.9 * declared - 1:
            raise CorruptInput("video", f"video is truncated: only "
                               f"{analysis.frame_count} of its {declared} frames can be decoded")
        if cache:
            cache.put(digest, analysis)
    elif options.multiple_faces == "error" and analysis.face_counts.max() > 1:
        frame = int(np.argmax(analysis.face_counts > 1))
        raise multiple_faces_error("video", int(analysis.face_counts[frame]), frame)
    progress.update(SPAN_ANALYSE[1], Stage.ANALYSING_FACE)
    return analysis, cached


def render(video: Path, audio: Path, out: Path, options: RenderOptions = DEFAULTS,
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
    check_container(options.background, out)
    background_image = check_background(options.background)
    if not options.face_restore:
        restorer = None
    check_models(options, settings, backend is not None, restorer is not None)
    images = load_overlays(options, settings)
    progress.update(0.0, Stage.PROBING)
    template, _ = probe_inputs(Path(video), Path(audio), options)
    own_backend, own_restorer = backend is None, restorer is None and options.face_restore
    backend = backend or create_backend(options.backend, settings)
    try:
        if own_restorer:
            restorer = FaceRestorer.from_settings(settings)
        progress.update(_span(SPAN_PREPARE, 0.3), Stage.DECODING_AUDIO)
        wav = speech_audio.decode_speech(Path(audio), "audio", options.max_input_mb,
                                         options.max_audio_seconds)
        progress.check_canceled()
        digest = file_digest(template.path) if cache else ""
        analysis, cached = analyse_template(template, options, cache, progress, digest)
        masks = None
        if options.background != KEEP:
            masks, _ = segment_template(template, analysis, digest, cache, options, progress)
        fps = template_video(template).fps
        total = speech_audio.frame_count(wav.size, float(fps))
        openness = speech_audio.mouth_openness(wav, float(fps), total)
        mel = speech_audio.mel_spectrogram(wav) if backend.needs_mel else None
        del wav
        size = even_size(analysis.width, analysis.height)   # what the encoder keeps
        overlays = [image.place(*size, kind.corner) for kind, image in images]
        done = _animate(template, analysis, masks, backend, restorer, overlays, openness,
                        mel, Path(audio), out, options, progress, background_image)
    finally:
        if own_backend:
            backend.close()
        if own_restorer and restorer is not None:
            restorer.close()
    progress.update(1.0, Stage.DONE)
    width, height = even_size(analysis.width, analysis.height)
    return RenderResult(out, done, fps, width, height, done / float(fps),
                        time.monotonic() - started, cached, list(analysis.warnings))


def segment_template(template: MediaInfo, analysis: TemplateAnalysis, digest: str,
                     cache: AnalysisCache | None, options: RenderOptions,
                     progress: Progress) -> tuple[TemplateMasks, bool]:
    """The template's person masks and edge cells, one per analysed frame: from the cache
    (memory-mapped) when this file was segmented before (by content hash `digest`), else
    segmented now and stored there as they come."""
    video = template_video(template)
    masks = cache.get_masks(digest) if cache else None
    if masks is not None:
        return masks, True

    def on_frame(done: int) -> None:
        if done % 8 == 0:
            progress.check_canceled()
            progress.update(SPAN_ANALYSE[1], Stage.ANALYSING_FACE)

    with closing(read_frames(template.path, video.rotation, "video",
                             options.max_video_pixels)) as frames:
        pairs = ((mask, edge_rows(frame, mask))
                 for frame, mask in masks_with_frames(frames, on_frame))
        if cache:
            return cache.store_masks(digest, pairs, analysis.frame_count), False
        return TemplateMasks.gather(pairs, analysis.frame_count), False


def _context(analysis: TemplateAnalysis, options: RenderOptions, frames: range,
             total: int) -> np.ndarray:
    """Landmarks of output frames `frames` (those within 0..total-1), in output order."""
    indices = [template_index(i, analysis.frame_count, options.loop) for i in frames
               if 0 <= i < total]
    return analysis.landmarks[indices]


def _animate(template: MediaInfo, analysis: TemplateAnalysis, masks: TemplateMasks | None,
             backend: LipSyncBackend, restorer: FaceRestorer | None, overlays: list[Overlay], openness: np.ndarray,
             mel: np.ndarray | None, audio: Path, out: Path, options: RenderOptions,
             progress: Progress, background_image: np.ndarray | None = None) -> int:
    """Streams template frames through the backend (then the restorer and the overlays) into
    the MP4 (with `masks`, the background step before the overlays, into the output its
    background needs); returns frames written."""
    video = template_video(template)
    compositor = None if masks is None else Compositor.create(
        options.background, analysis.width, analysis.height, background_image)
    fps, total = video.fps, openness.size
    # Unique per attempt: two deliveries of one job (same pid in two containers, say) never
    # share a temporary file; the rename makes whichever finishes the result.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.part")
    done = 0
    try:
        with writer_class(options.background, out)(tmp, analysis.width, analysis.height, fps, audio, options.x264_preset,
                       options.crf) as writer, closing(looped_frames(
                template.path, video.rotation, analysis.frame_count, total,
                options.loop, int(options.frame_cache_mb * 2**20), out.parent,
                options.max_video_pixels)) as frames:
            while done < total:
                progress.check_canceled()
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
                if compositor is not None and masks is not None:
                    shown = [index for index, _ in chunk]
                    animated = compositor.apply(animated, [masks.mask(i) for i in shown],
                                                batch.landmarks,
                                                [masks.edge_rows(i) for i in shown])
                    masks.release()
                if overlays:
                    animated = apply_over(lambda f: apply_overlays(overlays, f), animated)
                for frame in animated:
                    writer.write(frame)
                done += count
                progress.frames(done, total)
                progress.update(_span(SPAN_ANIMATE, done / total), Stage.LIP_SYNC)
            progress.update(SPAN_ANIMATE[1], Stage.ENCODING)
        os.replace(tmp, out)
    except BaseException:
        remove_quietly(tmp)
        raise
    return done
