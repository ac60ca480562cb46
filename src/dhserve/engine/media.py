"""Media I/O through PyAV: probe, decode frames as arrays, encode H.264 + AAC MP4.

No picture is decoded before its size is known to be within the limit: images are measured
from their header, video streams from what the container and parser declare (FFmpeg's stream
analysis may decode audio only), and every decoder is told the largest picture it may make.
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from dhserve.config import Settings
from dhserve.errors import InputError, StorageFull

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
DEFAULT_MAX_PIXELS = Settings.max_video_pixels
# Work a template may ask for: its pixels times its frame rate, at most the pixel limit at
# this rate (4K at 60 frames/s by default), so a small picture at 10000 frames/s is refused
# like a huge one; the duration limit bounds the rest.
LIMIT_FPS = 60
# Decoders refuse a picture over this many times the limit (a stream that grows midway, or
# lies in its header); the exact limit is checked on the declared and decoded sizes.
DECODER_GUARD = 2
# Sample rates the AAC encoder takes; others are resampled to 48 kHz.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME_SIZE = 1024
# Undecodable audio packets skipped before a stream counts as damaged (when they are also
# over a tenth of the good ones).
MAX_BAD_AUDIO_PACKETS = 8
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


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


def shown_name(path: Path) -> str:
    """What a message may say of a path: its name only, never the server's folders."""
    return Path(path).name or "that path"


def ffmpeg_reason(exc: BaseException) -> str:
    """An FFmpeg error's reason without the file name PyAV appends to it (a server path)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota), in Python or in FFmpeg (PyAV's errors
    carry the errno too)."""
    return (isinstance(exc, (OSError, av.error.FFmpegError))
            and getattr(exc, "errno", None) in NO_SPACE)


def disk_full() -> StorageFull:
    return StorageFull("the data disk is full: no space left to write the result")


def check_file(path: Path, field: str, max_mb: float | None = None) -> Path:
    """The input exists, is a regular non-empty file, and is within the size limit."""
    path = Path(path)
    if not path.exists():
        raise InputError("input.not_found", field, f"no such file: {shown_name(path)}")
    if not path.is_file():
        raise InputError("input.not_found", field, f"not a regular file: {shown_name(path)}")
    size = path.stat().st_size
    if size == 0:
        raise InputError("input.empty_file", field, "file is empty (0 bytes)")
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


@lru_cache(maxsize=1)
def audio_decoders() -> str:
    """FFmpeg's audio decoders, as a codec_whitelist."""
    names = set()
    for name in av.codecs_available:
        try:
            codec = av.codec.Codec(name, "r")
        except (av.error.FFmpegError, ValueError):
            continue                         # an encoder's name
        if codec.type == "audio":
            names.add(codec.name)
    return ",".join(sorted(names))


def open_input(path: Path, field: str) -> av.container.InputContainer:
    """Opens an input with the allowed demuxers. FFmpeg's stream analysis may decode audio
    only (codec_whitelist): it would otherwise decode up to 7 pictures of whatever size a
    header declares (a 16000x16000 PNG: 4 s and 780 MB) before anyone looked at the size."""
    try:
        return av.open(str(path), container_options={**INPUT_OPTIONS,
                                                     "codec_whitelist": audio_decoders()})
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if _looks_like_media(path):
            raise InputError("input.corrupt", field, "media file is damaged and cannot be "
                             f"read ({ffmpeg_reason(exc)})") from None
        raise InputError("input.not_media", field,
                         "not an audio, video or image file that can be read") from None


def guard_decoder(stream: av.stream.Stream, max_pixels: int) -> None:
    """The stream's decoder refuses pictures over DECODER_GUARD times the limit instead of
    allocating them."""
    stream.codec_context.options = {**stream.codec_context.options,
                                    "max_pixels": str(int(max_pixels * DECODER_GUARD))}


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) an image file declares in its header (PNG/APNG, JPEG, GIF, WebP, BMP),
    read without decoding a pixel; None for anything else."""
    with open(path, "rb") as f:
        head = f.read(64).ljust(64, b"\0")     # a cut header reads as size 0: FFmpeg judges
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            chunk = head[12:16]
            if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", head[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L" and head[20] == 0x2F:
                bits = int.from_bytes(head[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return (int.from_bytes(head[24:27], "little") + 1,
                        int.from_bytes(head[27:30], "little") + 1)
            return None
        if head[:2] == b"BM":
            if struct.unpack("<I", head[14:18])[0] == 12:          # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", head[18:22])
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
        if head[:3] == b"\xff\xd8\xff":
            f.seek(2)
            return _jpeg_size(f)
    return None


# Start-of-frame markers: every one but DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(f, max_segments: int = 256) -> tuple[int, int] | None:
    """The first start-of-frame's size, walking the marker segments (EXIF and other APPn
    blocks come first); None when the scan starts without one."""
    for _ in range(max_segments):
        byte = f.read(1)
        while byte == b"\xff":                  # fill bytes before the marker code
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # TEM, RSTn, SOI: no length
            continue
        length = f.read(2)
        if len(length) < 2 or marker in (0xD9, 0xDA):  # EOI or start of scan
            return None
        if marker in JPEG_SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            height, width = struct.unpack(">HH", sof[1:5])
            return width, height
        f.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)
        nxt = f.read(1)
        if nxt != b"\xff":
            return None
    return None


def check_pixels(width: int, height: int, field: str, max_pixels: int,
                 fps: Fraction | None = None) -> None:
    """video.too_large when a picture is over the pixel limit, or the stream's pixels a
    second are over the limit's at LIMIT_FPS."""
    if width * height > max_pixels:
        raise InputError("video.too_large", field, f"{width}x{height} is over the limit of "
                         f"{max_pixels} pixels")
    if fps and width * height * float(fps) > max_pixels * LIMIT_FPS:
        raise InputError("video.too_large", field,
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
            raise InputError("input.corrupt", field, "no audio or video stream can be read "
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
        raise InputError("input.corrupt", field, f"{stream.type} stream cannot be decoded: "
                         "no decoder for its codec")
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InputError("input.corrupt", field, f"{stream.type} stream cannot be decoded "
                         f"({ffmpeg_reason(exc)}{unsure})") from None
    raise InputError("input.corrupt", field, f"{stream.type} stream has no decodable frames")


def _probe_video(container, field: str, max_pixels: int,
                 declared: tuple[int, int] | None = None) -> VideoInfo:
    stream = container.streams.video[0]
    is_image = container.format.name in IMAGE_FORMATS
    # Variable frame rate: the average, as a rate an encoder takes (30000/1001 stays exact).
    fps = STILL_IMAGE_FPS if is_image else Fraction(
        stream.average_rate or stream.guessed_rate or STILL_IMAGE_FPS).limit_denominator(1001)
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


def decode_audio(container, stream, field: str) -> Iterator[av.AudioFrame]:
    """The audio stream's decoded frames. A packet the decoder refuses as invalid data (the
    ID3 tag between two joined MP3s, a damaged frame) is skipped, as players do; a stream of
    mostly such packets is input.corrupt, and so is any other decoding error."""
    if stream.codec_context is None:
        raise InputError("input.corrupt", field, "audio stream cannot be decoded: no "
                         "decoder for its codec")
    good = bad = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
            if packet is None:
                return
            frames = packet.decode()
        except av.error.InvalidDataError as exc:
            bad += 1
            if bad > MAX_BAD_AUDIO_PACKETS and bad * 10 > good:
                raise InputError("input.corrupt", field, "audio stream cannot be decoded "
                                 f"({ffmpeg_reason(exc)})") from None
            continue
        except av.error.FFmpegError as exc:
            raise InputError("input.corrupt", field, "audio stream cannot be decoded "
                             f"({ffmpeg_reason(exc)})") from None
        good += 1
        yield from frames


def _probe_audio(container, field: str) -> AudioInfo:
    stream = container.streams.audio[0]
    first = next(decode_audio(container, stream, field), None)
    if first is None:
        raise InputError("input.corrupt", field, "audio stream has no decodable frames")
    return AudioInfo(stream.codec_context.name, first.sample_rate,
                     first.layout.nb_channels, _stream_duration(stream, container))


def read_frames(path: Path, rotation: int = 0, field: str = "video",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray]:
    """Decodes the first video stream as RGB uint8 arrays (H, W, 3), upright. Every frame has
    the first frame's size: a stream that changes resolution midway is scaled back to it (a
    picture over DECODER_GUARD times `max_pixels` is refused by the decoder)."""
    size = None
    with open_input(path, field) as container:
        if not container.streams.video or container.streams.video[0].codec_context is None:
            raise InputError("video.no_video_stream", field, "file has no video stream "
                             "that can be decoded")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        guard_decoder(stream, max_pixels)
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                raise InputError("input.corrupt", field, "video stream breaks off while "
                                 f"decoding ({ffmpeg_reason(exc)})") from None
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


class SteadyResampler:
    """av.AudioResampler for a source whose sample format, layout or rate may change midway
    (joined files, some captures). PyAV's own raises ValueError at a frame unlike its first,
    or, when the first needed no conversion, passes later frames through unconverted; this
    one starts a new resampler at each change, after flushing the last."""

    def __init__(self, format: str, layout: str, rate: int):
        self.target = {"format": format, "layout": layout, "rate": rate}
        self._resampler: av.AudioResampler | None = None
        self._source: tuple | None = None

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        if frame is None:
            return self._resampler.resample(None) if self._resampler else []
        source = (frame.format.name, frame.layout.name, frame.layout.nb_channels,
                  frame.sample_rate)
        out: list[av.AudioFrame] = []
        if source != self._source:
            if self._resampler is not None:
                out = self._resampler.resample(None)
            self._resampler, self._source = av.AudioResampler(**self.target), source
        return out + self._resampler.resample(frame)


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
                 preset: str = "superfast", crf: int = 18, audio_field: str = "audio"):
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
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._failure: Exception | None = None
        self._aborting = False
        self._thread = threading.Thread(target=self._encode_loop, name="dhserve-encoder",
                                        daemon=True)
        self._audio_in = None
        if audio is not None:
            try:
                self._open_audio(audio, audio_field)
            except BaseException:
                self.abort()
                raise
        self._thread.start()

    def _open_audio(self, audio: Path, field: str) -> None:
        """Opens the speech and decodes its first frame: the AAC stream takes its rate and
        layout (the container's figures may be missing before decoding)."""
        self._audio_in = open_input(audio, field)
        if not self._audio_in.streams.audio:
            raise InputError("audio.no_audio_stream", field, "file has no audio stream")
        source = self._audio_in.streams.audio[0]
        self._audio_frames = decode_audio(self._audio_in, source, field)
        first = next(self._audio_frames, None)
        if first is None:
            raise InputError("audio.empty", field, "audio stream is empty (no samples to speak)")
        rate = first.sample_rate if first.sample_rate in AAC_RATES else 48000
        layout = "mono" if first.layout.nb_channels == 1 else "stereo"
        self._audio = self._container.add_stream("aac", rate=rate, layout=layout)
        self._audio.bit_rate = 128_000 if layout == "stereo" else 96_000
        self._resampler = SteadyResampler(format="fltp", layout=layout, rate=rate)
        self._fifo = av.AudioFifo()
        self._pending = first
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
        """Encodes source audio up to `until_seconds` (None: to the end).

        The decoded speech is converted to the encoder's format, layout and rate, then cut
        into AAC's 1024-sample frames, each stamped in samples (time base 1/rate). Without
        the time base, a frame the resampler passed through kept the source's (MP3:
        1/14112000, Matroska: 1/1000) and the encoder read the stamps in it: MP3 failed,
        ADTS kept 0.03 s, WebM claimed minutes."""
        if self._audio_in is None:
            return
        while until_seconds is None or self._audio_samples < until_seconds * self._audio_rate:
            frame, self._pending = self._pending, None
            if frame is None:
                frame = next(self._audio_frames, None)
            for out in self._resampler.resample(frame):
                out.pts, out.time_base = None, Fraction(1, self._audio_rate)  # as the FIFO's
                self._fifo.write(out)
            ending = frame is None
            while self._fifo.samples >= AAC_FRAME_SIZE or (ending and self._fifo.samples):
                self._encode_audio(self._fifo.read(min(AAC_FRAME_SIZE, self._fifo.samples)))
            if ending:
                self._container.mux(self._audio.encode(None))
                self._audio_in.close()
                self._audio_in = None
                return

    def _encode_audio(self, frame: av.AudioFrame) -> None:
        frame.pts = self._audio_samples
        frame.time_base = Fraction(1, self._audio_rate)
        self._audio_samples += frame.samples
        self._container.mux(self._audio.encode(frame))

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

