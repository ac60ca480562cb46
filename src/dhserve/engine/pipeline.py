"""One render, end to end: probe → speech → face analysis (cached) → lip-sync → MP4.

Streams throughout: template frames are decoded, animated and encoded batch by batch, so
memory does not grow with the length of the video. Progress goes to a callback per batch and
cancellation is checked between batches. The result is written under a temporary name and
renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from pathlib import Path

import numpy as np

from dhserve.config import Settings
from dhserve.engine import audio as speech_audio
from dhserve.engine.face import AnalysisCache, TemplateAnalysis, analyse_frames, file_digest
from dhserve.engine.face.analysis import multiple_faces_error
from dhserve.engine.frames import looped_frames
from dhserve.engine.lipsync import FrameBatch, LipSyncBackend, create_backend
from dhserve.engine.media import MediaInfo, Mp4Writer, even_size, probe, read_frames, remove_quietly
from dhserve.engine.progress import Progress, no_progress
from dhserve.errors import InputError

log = logging.getLogger(__name__)

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

    @classmethod
    def from_settings(cls, settings: Settings, **choices) -> RenderOptions:
        names = cls.__dataclass_fields__
        values = {name: getattr(settings, name) for name in names}
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
    """Checks both inputs against the limits before any heavy work."""
    template = probe(video, "video", options.max_input_mb)
    if template.video is None:
        raise InputError("video.no_video_stream", "video", "file has no video stream")
    v = template.video
    if v.width * v.height > options.max_video_pixels:
        raise InputError("video.too_large", "video",
                         f"{v.width}x{v.height} is over the limit of "
                         f"{options.max_video_pixels} pixels")
    if not v.is_image and v.duration > options.max_video_seconds:
        raise InputError("video.too_long", "video", f"{v.duration:.1f} s is over the limit of "
                         f"{options.max_video_seconds:g} s")
    speech = probe(audio, "audio", options.max_input_mb)
    if speech.audio is None:
        raise InputError("audio.no_audio_stream", "audio", "file has no audio stream")
    if speech.audio.duration > options.max_audio_seconds:
        raise InputError("audio.too_long", "audio", f"{speech.audio.duration:.1f} s is over the "
                         f"limit of {options.max_audio_seconds:g} s")
    return template, speech


def analyse_template(template: MediaInfo, options: RenderOptions, cache: AnalysisCache | None,
                     progress: Progress) -> tuple[TemplateAnalysis, bool]:
    """The template's face analysis, from the cache when this exact file was seen before."""
    digest = file_digest(template.path) if cache else ""
    analysis = cache.get(digest) if cache else None
    cached = analysis is not None
    if analysis is None:
        expected = max(template.video.frame_count, 1)
        progress.update(SPAN_ANALYSE[0], "analysing face")

        def on_frame(done: int) -> None:
            if done % 8 == 0:
                progress.check_cancelled()
                progress.update(_span(SPAN_ANALYSE, min(done / expected, 1.0)),
                                "analysing face")

        analysis = analyse_frames(read_frames(template.path, template.video.rotation), "video",
                                  options.multiple_faces, on_frame)
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
           backend: LipSyncBackend | None = None) -> RenderResult:
    """Renders `video` lip-synced to `audio` into `out` (MP4, H.264 + AAC)."""
    started = time.monotonic()
    out = Path(out)
    progress.update(0.0, "probing")
    template, _ = probe_inputs(Path(video), Path(audio), options)
    progress.update(_span(SPAN_PREPARE, 0.3), "decoding audio")
    wav = speech_audio.decode_speech(Path(audio), "audio", options.max_input_mb)
    if wav.size / speech_audio.SAMPLE_RATE > options.max_audio_seconds:
        raise InputError("audio.too_long", "audio", f"{wav.size / 16000:.1f} s is over the "
                         f"limit of {options.max_audio_seconds:g} s")
    progress.check_cancelled()
    analysis, cached = analyse_template(template, options, cache, progress)

    fps = template.video.fps
    total = speech_audio.frame_count(wav.size, float(fps))
    openness = speech_audio.mouth_openness(wav, float(fps), total)
    own_backend = backend is None
    backend = backend or create_backend(options.backend)
    mel = speech_audio.mel_spectrogram(wav) if backend.needs_mel else None
    del wav

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    width, height = even_size(analysis.width, analysis.height)
    try:
        with Mp4Writer(tmp, width, height, fps, Path(audio), options.x264_preset,
                       options.crf) as writer:
            frames = looped_frames(template.path, template.video.rotation,
                                   analysis.frame_count, total, options.loop,
                                   int(options.frame_cache_mb * 2**20), out.parent)
            done = 0
            while done < total:
                progress.check_cancelled()
                chunk = list(islice(frames, options.batch_size))
                if not chunk:
                    break
                count = len(chunk)
                indices = [index for index, _ in chunk]
                batch = FrameBatch(
                    frames=[frame for _, frame in chunk],
                    landmarks=analysis.landmarks[indices],
                    openness=openness[done:done + count],
                    mel=None if mel is None else speech_audio.mel_chunks(
                        mel, float(fps), done, count, total))
                for frame in backend.animate(batch):
                    writer.write(frame)
                done += count
                progress.update(_span(SPAN_ANIMATE, done / total), "lip-sync")
            progress.update(SPAN_ANIMATE[1], "encoding")
        os.replace(tmp, out)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        if own_backend:
            backend.close()
    progress.update(1.0, "done")
    return RenderResult(out, done, fps, width, height, done / float(fps),
                        time.monotonic() - started, cached, list(analysis.warnings))

