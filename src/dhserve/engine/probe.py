"""What a media file holds (streams, size, frame rate, duration), and the limits it must keep
before anything renders it.

Why here, before decoding: a template is refused for its size from what it declares (an
image's header, the container's and parser's figures), before a picture is decoded, so a
decompression bomb costs nothing; its pixels a second are bounded too, so a small picture at
10000 frames/s is refused like a huge one. Only the first frame of the stream(s) asked for is
decoded, to prove it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from dhserve.config import Settings
from dhserve.engine.image_header import image_size
from dhserve.engine.media_input import (
    DECODER_GUARD,
    check_file,
    decode_audio,
    ffmpeg_reason,
    guard_decoder,
    open_input,
)
from dhserve.errors import CorruptInput, VideoTooLarge

# Demuxers of single pictures (an animated GIF or an MJPEG video is a video, not one of these).
IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe"}
STILL_IMAGE_FPS = Fraction(25)
DEFAULT_MAX_PIXELS = Settings.max_video_pixels
# Work a template may ask for: its pixels times its frame rate, at most the pixel limit at
# this rate (4K at 60 frames/s by default), so a small picture at 10000 frames/s is refused
# like a huge one; the duration limit bounds the rest.
LIMIT_FPS = 60
# A variable frame rate is given as its average, limited to a rate an encoder takes
# (30000/1001 stays exact).
FPS_MAX_DENOMINATOR = 1001


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int        # as displayed, i.e. after rotation
    height: int
    fps: Fraction
    frame_count: int  # from the container; 0 when it does not say
    duration: float
    rotation: int     # degrees counter-clockwise applied to decoded frames for display
    is_image: bool


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int
    channels: int
    duration: float


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    format_name: str
    size_bytes: int
    duration: float
    video: VideoInfo | None
    audio: AudioInfo | None


def check_pixels(width: int, height: int, field: str, max_pixels: int,
                 fps: Fraction | None = None) -> None:
    """video.too_large when a picture is over the pixel limit, or the stream's pixels a
    second are over the limit's at LIMIT_FPS."""
    if width * height > max_pixels:
        raise VideoTooLarge(field, f"{width}x{height} is over the limit of "
                            f"{max_pixels} pixels")
    if fps and width * height * float(fps) > max_pixels * LIMIT_FPS:
        raise VideoTooLarge(field,
                            f"{width}x{height} at {float(fps):g} frames/s is over the limit of "
                            f"{max_pixels * LIMIT_FPS} pixels a second ({max_pixels} pixels at "
                            f"{LIMIT_FPS} frames/s)")


def probe(path: Path, field: str, max_mb: float | None = None,
          kind: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> MediaInfo:
    """Describes a media file. The first frame of the stream(s) of `kind` ("video", "audio",
    or None for both) is decoded to prove it reads; the other kind is not looked at, so a
    broken soundtrack does not spoil a good template.

    A video (or image) over `max_pixels` is refused (video.too_large) from its header,
    before any picture is decoded; so is one whose pixels a second exceed the limit's at
    LIMIT_FPS."""
    path = check_file(path, field, max_mb)
    declared = None
    if kind in (None, "video"):
        declared = image_size(path)
        if declared:
            check_pixels(*declared, field, max_pixels)
    with open_input(path, field) as container:
        if not container.streams.video and not container.streams.audio:
            raise CorruptInput(field, "no audio or video stream can be read "
                               f"from this {container.format.name} file")
        video = audio = None
        if container.streams.video and kind in (None, "video"):
            video = _probe_video(container, field, max_pixels, declared)
        if container.streams.audio and kind in (None, "audio"):
            audio = _probe_audio(container, field)
        duration = container.duration / av.time_base if container.duration else 0.0
        return MediaInfo(path, container.format.name, path.stat().st_size,
                         max(duration, video.duration if video else 0.0,
                             audio.duration if audio else 0.0), video, audio)


def _stream_duration(stream: av.stream.Stream, container) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else 0.0


def _first_frame(container, stream, field: str, unsure: str = ""):
    """The stream's first decoded frame; `unsure` is added to the reason a decode failed
    (a picture whose size no header told may have been refused by the decoder's guard)."""
    if stream.codec_context is None:
        raise CorruptInput(field, f"{stream.type} stream cannot be decoded: "
                           "no decoder for its codec")
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise CorruptInput(field, f"{stream.type} stream cannot be decoded "
                           f"({ffmpeg_reason(exc)}{unsure})") from None
    raise CorruptInput(field, f"{stream.type} stream has no decodable frames")


def _probe_video(container, field: str, max_pixels: int,
                 declared: tuple[int, int] | None = None) -> VideoInfo:
    stream = container.streams.video[0]
    is_image = container.format.name in IMAGE_FORMATS
    fps = STILL_IMAGE_FPS if is_image else Fraction(
        stream.average_rate or stream.guessed_rate or STILL_IMAGE_FPS
    ).limit_denominator(FPS_MAX_DENOMINATOR)
    context = stream.codec_context
    if context is not None and context.width and context.height:
        declared = (context.width, context.height)
    if declared:
        check_pixels(*declared, field, max_pixels, fps)
    unsure = ""
    if context is not None:
        guard_decoder(stream, max_pixels)
        if not declared:
            unsure = f"; or a picture over {DECODER_GUARD * max_pixels} pixels"
    first = _first_frame(container, stream, field, unsure)
    check_pixels(first.width, first.height, field, max_pixels, fps)
    rotation = round(getattr(first, "rotation", 0) or 0) % 360
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    duration = 1 / float(fps) if is_image else _stream_duration(stream, container)
    frames = 1 if is_image else int(stream.frames or 0)
    return VideoInfo(stream.codec_context.name, width, height, fps, frames, duration,
                     rotation, is_image)


def _probe_audio(container, field: str) -> AudioInfo:
    stream = container.streams.audio[0]
    first = next(decode_audio(container, stream, field), None)
    if first is None:
        raise CorruptInput(field, "audio stream has no decodable frames")
    return AudioInfo(stream.codec_context.name, first.sample_rate,
                     first.layout.nb_channels, _stream_duration(stream, container))
