"""Opening a user's media file through PyAV, safely, and reading its audio: the one door every
input goes through (probe, frame reading, speech decoding, the writer's soundtrack).

Why one door: FFmpeg left to itself takes playlists and scripts that open further files and
URLs named inside them, guesses numbered image sequences from a file name, and decodes
pictures of any declared size while it analyses the streams. Here the demuxers are a fixed
list, stream analysis decodes audio only, and decoders are told the largest picture they may
make. Messages name the file, never the server's folders.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import av

from dhserve.errors import (
    CorruptInput,
    InputEmpty,
    InputNotFound,
    InputTooLarge,
    NotMedia,
)

BYTES_PER_MB = 2**20
# First bytes of containers FFmpeg reads; a file with one of these that fails to open is
# corrupt, a file with none of them is not media at all.
MEDIA_SIGNATURES = ((4, b"ftyp"), (0, b"RIFF"), (0, b"ID3"), (0, b"\xff\xfb"), (0, b"\xff\xf3"),
                    (0, b"\xff\xf1"), (0, b"\xff\xf9"), (0, b"OggS"), (0, b"fLaC"),
                    (0, b"\x1aE\xdf\xa3"), (0, b"\x89PNG"), (0, b"\xff\xd8\xff"), (0, b"FLV"),
                    (0, b"\x00\x00\x01\xba"), (0, b"GIF8"), (4, b"moov"), (4, b"mdat"))
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
# Decoders refuse a picture over this many times the limit (a stream that grows midway, or
# lies in its header); the exact limit is checked on the declared and decoded sizes.
DECODER_GUARD = 2
# Undecodable audio packets skipped before a stream counts as damaged (when they are also
# over a tenth of the good ones).
MAX_BAD_AUDIO_PACKETS = 8


def shown_name(path: Path) -> str:
    """What a message may say of a path: its name only, never the server's folders."""
    return Path(path).name or "that path"


def ffmpeg_reason(exc: BaseException) -> str:
    """An FFmpeg error's reason without the file name PyAV appends to it (a server path)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def check_file(path: Path, field: str, max_mb: float | None = None) -> Path:
    """The input exists, is a regular non-empty file, and is within the size limit."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(field, f"no such file: {shown_name(path)}")
    if not path.is_file():
        raise InputNotFound(field, f"not a regular file: {shown_name(path)}")
    size = path.stat().st_size
    if size == 0:
        raise InputEmpty(field, "file is empty (0 bytes)")
    if max_mb is not None and size > max_mb * BYTES_PER_MB:
        raise InputTooLarge(field,
                            f"file is {size / BYTES_PER_MB:.1f} MB, over the limit of "
                            f"{max_mb:g} MB")
    return path


def _looks_like_media(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[at:at + len(magic)] == magic for at, magic in MEDIA_SIGNATURES)


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
            raise CorruptInput(field, "media file is damaged and cannot be "
                               f"read ({ffmpeg_reason(exc)})") from None
        raise NotMedia(field,
                       "not an audio, video or image file that can be read") from None


def guard_decoder(stream: av.stream.Stream, max_pixels: int) -> None:
    """The stream's decoder refuses pictures over DECODER_GUARD times the limit instead of
    allocating them."""
    stream.codec_context.options = {**stream.codec_context.options,
                                    "max_pixels": str(int(max_pixels * DECODER_GUARD))}


def decode_audio(container, stream, field: str) -> Iterator[av.AudioFrame]:
    """The audio stream's decoded frames. A packet the decoder refuses as invalid data (the
    ID3 tag between two joined MP3s, a damaged frame) is skipped, as players do; a stream of
    mostly such packets is input.corrupt, and so is any other decoding error."""
    if stream.codec_context is None:
        raise CorruptInput(field, "audio stream cannot be decoded: no "
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
                raise CorruptInput(field, "audio stream cannot be decoded "
                                   f"({ffmpeg_reason(exc)})") from None
            continue
        except av.error.FFmpegError as exc:
            raise CorruptInput(field, "audio stream cannot be decoded "
                               f"({ffmpeg_reason(exc)})") from None
        good += 1
        yield from frames


class SteadyResampler:
    """av.AudioResampler for a source whose sample format, layout or rate may change midway
    (joined files, some captures). PyAV's own raises ValueError at a frame unlike its first,
    or, when the first needed no conversion, passes later frames through unconverted; this
    one starts a new resampler at each change, after flushing the last."""

    def __init__(self, format: str, layout: str, rate: int):
        self.format, self.layout, self.rate = format, layout, rate
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
            self._resampler = av.AudioResampler(format=self.format, layout=self.layout,
                                                rate=self.rate)
            self._source = source
        assert self._resampler is not None      # made above for this frame's source
        return out + self._resampler.resample(frame)
