"""Media I/O through PyAV: probe, decode frames as arrays, encode H.264 + AAC MP4."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from dhserve.errors import InputError

# Demuxers of single pictures (an animated GIF or an MJPEG video is a video, not one of these).
IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe"}
STILL_IMAGE_FPS = Fraction(25)
FULL_RANGE = 2  # AVCOL_RANGE_JPEG
# First bytes of containers FFmpeg reads; a file with one of these that fails to open is
# corrupt, a file with none of them is not media at all.
MEDIA_SIGNATURES = ((4, b"ftyp"), (0, b"RIFF"), (0, b"ID3"), (0, b"\xff\xfb"), (0, b"\xff\xf3"),
                    (0, b"\xff\xf1"), (0, b"\xff\xf9"), (0, b"OggS"), (0, b"fLaC"),
                    (0, b"\x1aE\xdf\xa3"), (0, b"\x89PNG"), (0, b"\xff\xd8\xff"), (0, b"FLV"),
                    (0, b"\x00\x00\x01\xba"), (0, b"GIF8"), (4, b"moov"), (4, b"mdat"))


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


def check_file(path: Path, field: str, max_mb: float | None = None) -> Path:
    """The input exists, is a regular non-empty file, and is within the size limit."""
    path = Path(path)
    if not path.exists():
        raise InputError("input.not_found", field, f"no such file: {path}")
    if not path.is_file():
        raise InputError("input.not_found", field, f"not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InputError("input.empty_file", field, f"file is empty (0 bytes): {path}")
    if max_mb is not None and size > max_mb * 1024 * 1024:
        raise InputError("input.too_large", field,
                         f"file is {size / 2**20:.1f} MB, over the limit of {max_mb:g} MB")
    return path


def _looks_like_media(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[at:at + len(magic)] == magic for at, magic in MEDIA_SIGNATURES)


# Demuxers an input may use. FFmpeg would otherwise also take playlists and scripts (hls,
# concat, dash, ...) that open further files and URLs named inside them: a "video" that
# reads /etc/... or an internal address.
DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "flv", "asf", "mpeg", "mpegts",
            "mpegvideo", "h264", "hevc", "m4v", "ivf", "mjpeg", "yuv4mpegpipe", "wav", "w64",
            "aiff", "mp3", "aac", "ac3", "eac3", "flac", "ogg", "amr", "amrnb", "amrwb", "caf",
            "wv", "au", "dv", "mxf", "nut", "image2", "png_pipe", "jpeg_pipe", "webp_pipe",
            "bmp_pipe", "tiff_pipe", "gif", "apng")
# pattern_type none: image2 would otherwise read "shot%d.png" as shot0.png, shot1.png, ...,
# files whose names (and symlinks) no one checked.
INPUT_OPTIONS = {"format_whitelist": ",".join(DEMUXERS), "pattern_type": "none"}


def open_input(path: Path, field: str) -> av.container.InputContainer:
    try:
        return av.open(str(path), container_options=INPUT_OPTIONS)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if _looks_like_media(path):
            raise InputError("input.corrupt", field,
                             f"media file is damaged and cannot be read ({exc})") from None
        raise InputError("input.not_media", field,
                         "not an audio, video or image file that can be read") from None


def probe(path: Path, field: str, max_mb: float | None = None,
          kind: str | None = None) -> MediaInfo:
    """Describes a media file. The first frame of the stream(s) of `kind` ("video", "audio",
    or None for both) is decoded to prove it reads; the other kind is not looked at, so a
    broken soundtrack does not spoil a good template."""
    path = check_file(path, field, max_mb)
    with open_input(path, field) as container:
        if not container.streams.video and not container.streams.audio:
            raise InputError("input.corrupt", field, "no audio or video stream can be read "
                             f"from this {container.format.name} file")
        video = audio = None
        if container.streams.video and kind in (None, "video"):
            video = _probe_video(container, field)
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


def _first_frame(container, stream, field: str):
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InputError("input.corrupt", field, f"{stream.type} stream cannot be decoded "
                         f"({exc})") from None
    raise InputError("input.corrupt", field, f"{stream.type} stream has no decodable frames")


def _probe_video(container, field: str) -> VideoInfo:
    stream = container.streams.video[0]
    is_image = container.format.name in IMAGE_FORMATS
    first = _first_frame(container, stream, field)
    rotation = round(getattr(first, "rotation", 0) or 0) % 360
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    # Variable frame rate: the average, as a rate an encoder takes (30000/1001 stays exact).
    fps = STILL_IMAGE_FPS if is_image else Fraction(
        stream.average_rate or stream.guessed_rate or STILL_IMAGE_FPS).limit_denominator(1001)
    duration = 1 / float(fps) if is_image else _stream_duration(stream, container)
    frames = 1 if is_image else int(stream.frames or 0)
    return VideoInfo(stream.codec_context.name, width, height, fps, frames, duration,
                     rotation, is_image)


def _probe_audio(container, field: str) -> AudioInfo:
    stream = container.streams.audio[0]
    first = _first_frame(container, stream, field)
    return AudioInfo(stream.codec_context.name, first.sample_rate,
                     first.layout.nb_channels, _stream_duration(stream, container))


def read_frames(path: Path, rotation: int = 0, field: str = "video") -> Iterator[np.ndarray]:
    """Decodes the first video stream as RGB uint8 arrays (H, W, 3), upright. Every frame has
    the first frame's size: a stream that changes resolution midway is scaled back to it."""
    size = None
    with open_input(path, field) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                raise InputError("input.corrupt", field,
                                 f"video stream breaks off while decoding ({exc})") from None
            if frame is None:
                return
            rgb = frame_to_rgb(frame)
            if rotation:
                rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
            if size is None:
                size = rgb.shape
            elif rgb.shape != size:
                rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            yield rgb


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB uint8 of a decoded frame. The common case, limited-range yuv420p with even sides,
    goes through OpenCV's I420 conversion: the same BT.601 maths as swscale's default, at a
    fraction of its cost. Full-range and other formats go through swscale."""
    if (frame.format.name == "yuv420p" and frame.color_range != FULL_RANGE
            and frame.width % 2 == 0 and frame.height % 2 == 0):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


def rgb_to_frame(rgb: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame for the encoder (sides must be even), converted by OpenCV."""
    return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: an odd template loses its last row/column."""
    return width - width % 2, height - height % 2


class Mp4Writer:
    """Streams RGB frames into H.264 (yuv420p) and the speech into AAC, MP4 with faststart.

    Encoding runs on a thread of its own behind a short queue: x264 and PyAV release the GIL,
    so the caller's decoding and animation overlap with the encoder (on 2 cores at 720p this
    took the `superfast` preset from 45 to 72 frames/s). Only that thread touches the
    container. Audio is encoded alongside the video (never far ahead of it), so the file is
    interleaved and the whole speech track is never held encoded in memory.
    """

    AUDIO_LEAD_SECONDS = 0.5
    QUEUE_FRAMES = 8

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, audio: Path | None,
                 preset: str = "superfast", crf: int = 18):
        self.path = Path(path)
        self.width, self.height = even_size(width, height)
        self.fps = Fraction(fps)
        self._container = av.open(str(self.path), "w", format="mp4",
                                  options={"movflags": "+faststart"})
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = 1 / self.fps
        self._video.options = {"crf": str(crf), "preset": preset}
        self._audio_in = None
        if audio is not None:
            self._open_audio(audio)
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._failure: Exception | None = None
        self._aborting = False
        self._thread = threading.Thread(target=self._encode_loop, name="dhserve-encoder",
                                        daemon=True)
        self._thread.start()

    def _open_audio(self, audio: Path) -> None:
        self._audio_in = av.open(str(audio), container_options=INPUT_OPTIONS)
        source = self._audio_in.streams.audio[0]
        rate = source.codec_context.sample_rate or 48000
        if rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
            rate = 48000
        layout = "mono" if (source.codec_context.channels or 1) == 1 else "stereo"
        self._audio = self._container.add_stream("aac", rate=rate, layout=layout)
        self._audio.bit_rate = 128_000 if layout == "stereo" else 96_000
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._audio_frames = self._audio_in.decode(source)
        self._audio_samples = 0
        self._audio_rate = rate

    def write(self, rgb: np.ndarray) -> None:
        """Queues one frame; the array must not be modified afterwards."""
        self._raise_failure()
        self._queue.put(rgb)

    def _encode_loop(self) -> None:
        index = 0
        try:
            while (rgb := self._queue.get()) is not None:
                if self._aborting:
                    continue
                if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
                    rgb = np.ascontiguousarray(rgb[: self.height, : self.width])
                frame = rgb_to_frame(rgb)
                frame.pts = index
                self._container.mux(self._video.encode(frame))
                index += 1
                self._pump_audio(index / self.fps + self.AUDIO_LEAD_SECONDS)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._failure = exc
            while self._queue.get() is not None:  # unblock a producer waiting on put()
                pass

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _pump_audio(self, until_seconds: float | None) -> None:
        """Encodes source audio up to `until_seconds` (None: to the end)."""
        if self._audio_in is None:
            return
        while until_seconds is None or self._audio_samples < until_seconds * self._audio_rate:
            frame = next(self._audio_frames, None)
            for out in self._resampler.resample(frame):
                out.pts = self._audio_samples
                self._audio_samples += out.samples
                self._container.mux(self._audio.encode(out))
            if frame is None:
                self._container.mux(self._audio.encode(None))
                self._audio_in.close()
                self._audio_in = None
                return

    def close(self) -> None:
        """Finishes the file: flushes the encoder, writes the rest of the speech."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._raise_failure()
            self._container.mux(self._video.encode(None))
            self._pump_audio(None)
            self._container.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stops without finishing; the caller removes the partial file."""
        self._aborting = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        for resource in (self._audio_in, self._container):
            try:
                if resource is not None:
                    resource.close()
            except av.error.FFmpegError:
                pass
        self._audio_in = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
