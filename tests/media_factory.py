"""Media of every common kind, made by the tests themselves with PyAV's own encoders (nothing
committed): a speech-like test signal in any container and codec, and videos in any codec,
frame rate pattern, rotation or bit depth. Where PyAV lacks an encoder the case is skipped,
loudly, by `need_encoder`."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# FFmpeg's own Vorbis and Opus encoders are "experimental": they need strict=-2 to open.
FFMPEG_EXPERIMENTAL = "experimental"


def need_encoder(name: str) -> None:
    """Skips the calling test, loudly, where this PyAV build cannot encode `name`."""
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        pytest.skip(f"NOT TESTED: this PyAV ({av.__version__}, FFmpeg "
                    f"{'.'.join(map(str, av.library_versions['libavcodec']))}) has no "
                    f"{name!r} encoder")


def bursts(seconds: float, rate: int, channels: int = 1, seed: int = 7) -> np.ndarray:
    """(channels, samples) float32: noise bursts of random lengths and loudness with silent
    gaps, never periodic, so a cross-correlation of two copies peaks only where they line up.
    Kept below 3.4 kHz so every codec and rate (8 kHz telephony included) carries it whole."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    envelope = np.zeros(n, np.float32)
    at = int(0.02 * rate)
    while at < n:
        length = int(rng.uniform(0.03, 0.15) * rate)
        envelope[at:at + length] = rng.uniform(0.2, 0.6)
        at += length + int(rng.uniform(0.02, 0.12) * rate)
    noise = rng.standard_normal((channels, n)).astype(np.float32)
    # Low-pass by a moving average of 5 samples at 16 kHz-equivalent width: plenty for codecs.
    width = max(1, int(rate / 3400))
    if width > 1:
        kernel = np.ones(width, np.float32) / width
        noise = np.stack([np.convolve(row, kernel, mode="same") for row in noise])
    noise /= np.abs(noise).max() + 1e-9
    return np.clip(noise * envelope * 1.5, -0.95, 0.95).astype(np.float32)


def envelope(samples: np.ndarray, rate: int, step_ms: float = 1.0) -> np.ndarray:
    """RMS of mono samples in steps of `step_ms`: what a lag is measured on (robust to the
    phase games lossy codecs play)."""
    step = max(1, int(rate * step_ms / 1000))
    n = samples.size // step
    blocks = samples[: n * step].astype(np.float64).reshape(n, step)
    return np.sqrt((blocks ** 2).mean(axis=1))


def best_lag_ms(reference: np.ndarray, other: np.ndarray, rate: int,
                max_ms: float = 300.0) -> tuple[float, float]:
    """(lag in ms, correlation) where `other`'s envelope best matches `reference`'s;
    positive: `other` is late."""
    a, b = envelope(reference, rate), envelope(other, rate)
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    best = (0.0, -2.0)
    for lag in range(-int(max_ms), int(max_ms) + 1):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        if x.size < n // 2:
            continue
        r = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))
        if r > best[1]:
            best = (float(lag), r)
    return best


def _audio_frames(signal: np.ndarray, rate: int, layout: str, stream) -> list:
    """The signal as frames in the encoder's sample format and rate (the encoder cuts them
    to its frame size itself)."""
    ctx = stream.codec_context
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal.T.reshape(1, -1)),
                                       format="flt", layout=layout)
    frame.sample_rate = rate
    frame.pts, frame.time_base = 0, Fraction(1, rate)
    resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=ctx.sample_rate)
    frames, done = [], 0
    for out in resampler.resample(frame) + resampler.resample(None):
        out.pts, out.time_base = done, Fraction(1, ctx.sample_rate)
        done += out.samples
        frames.append(out)
    return frames


def write_audio(path: Path, codec: str, rate: int, channels: int = 1, *,
                container: str | None = None, sample_format: str | None = None,
                bit_rate: int | None = None, options: dict | None = None,
                seconds: float = 1.6, signal: np.ndarray | None = None) -> np.ndarray:
    """Writes the bursts signal (or `signal`, (channels, samples) at `rate`) as `codec` in
    `container` (default: from the suffix); returns the signal written."""
    need_encoder(codec)
    layout = "mono" if channels == 1 else "stereo"
    signal = bursts(seconds, rate, channels) if signal is None else signal
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if sample_format:
            stream.codec_context.format = sample_format
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        stream.codec_context.options = {"strict": FFMPEG_EXPERIMENTAL, **(options or {})}
        for frame in _audio_frames(signal, rate, layout, stream):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return signal


def write_video(path: Path, frames: Sequence[np.ndarray], codec: str = "libx264", *,
                container: str | None = None, pix_fmt: str = "yuv420p",
                rate: Fraction | int = 25, pts: Sequence[int] | None = None,
                time_base: Fraction | None = None, rotation: int = 0,
                options: dict | None = None, audio: tuple | None = None) -> Path:
    """A video of RGB `frames`. `pts` in `time_base` gives each frame its own time (a
    variable frame rate); `rotation` stores a display rotation (degrees counter-clockwise, as
    phones write it) and the frames are stored turned the other way, so a player that applies
    it shows them as given. `audio`: (codec, rate, channels) adds a bursts soundtrack as long
    as the video; returns the path."""
    need_encoder(codec)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stored = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) if rotation else f
                  for f in frames]
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        if options:
            stream.options = dict(options)
        sound = None
        if audio is not None:
            acodec, arate, achannels = audio
            need_encoder(acodec)
            layout = "mono" if achannels == 1 else "stereo"
            sound = out.add_stream(acodec, rate=arate, layout=layout)
            sound.codec_context.options = {"strict": FFMPEG_EXPERIMENTAL}
        for i, rgb in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts = pts[i] if pts is not None else i
            if time_base is not None:
                frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            seconds = len(frames) / float(rate)
            signal = bursts(seconds, arate, achannels)
            for frame in _audio_frames(signal, arate, layout, sound):
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


# -- decompression bombs: small files that declare huge pictures ----------------------------

def _zeros_zlib(size: int) -> bytes:
    """A zlib stream of `size` zero bytes, made in a blink: one fully flushed deflate block
    of 16 MiB of zeros repeats byte for byte, so it is compressed once and repeated."""
    chunk_size = 1 << 24
    whole, rest = divmod(size, chunk_size)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    block = deflate.compress(bytes(chunk_size)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    end = tail.compress(bytes(rest)) + tail.flush()
    adler = (((size % 65521) << 16) | 1).to_bytes(4, "big")   # adler32 of zeros
    return b"\x78\xda" + block * whole + end + adler


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_bomb(width: int, height: int) -> bytes:
    """A valid, all-black RGB PNG of width x height: ~750 KB at 16000x16000, 768 MB decoded."""
    raw = height * (1 + 3 * width)                  # a filter byte, then the row
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", _zeros_zlib(raw)) + _png_chunk(b"IEND", b""))


def jpeg_bomb(width: int, height: int) -> bytes:
    """A valid, flat grey baseline JPEG of width x height (multiples of 32): OpenCV's tables
    for an 8x8 grey picture, the frame rewritten to the size, and a scan in which every
    block is "DC unchanged (00), end of block (1010)", 6 bits a block: 3 MB at 16000x16000,
    256 MB decoded."""
    import cv2

    _, encoded = cv2.imencode(".jpg", np.full((8, 8), 128, np.uint8))
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    sos = data.index(b"\xff\xda")
    headers = data[:sos + 2 + struct.unpack(">H", data[sos + 2:sos + 4])[0]]
    blocks = (width // 8) * (height // 8)
    return bytes(headers) + b"\x28\xa2\x8a" * (blocks // 4) + b"\xff\xd9"


def gif_bomb(width: int, height: int) -> bytes:
    """A one-pixel GIF on a logical screen of width x height (the canvas a decoder fills)."""
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
            + b"\x00\x00\x00\xff\xff\xff"                       # two-colour palette
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"          # a 1x1 image at 0,0
            + b"\x02\x02\x44\x01\x00;")


def video_of_packets(path: Path, codec: str, width: int, height: int,
                     packets: Sequence[bytes], rate: int = 25, pix_fmt: str = "rgb24",
                     container: str | None = None, audio: tuple | None = None) -> Path:
    """A video whose stream declares `codec` at width x height, holding `packets` as they
    are (no encoder runs: a PNG bomb becomes a movie of bombs); `audio`: (codec, rate,
    channels) adds a soundtrack of bursts."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        sound = None
        if audio is not None:
            acodec, arate, achannels = audio
            sound = out.add_stream(acodec, rate=arate,
                                   layout="mono" if achannels == 1 else "stereo")
        out.start_encoding()
        for i, data in enumerate(packets):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = i
            packet.time_base = Fraction(1, rate)
            packet.is_keyframe = True
            out.mux(packet)
        if sound is not None:
            signal = bursts(len(packets) / rate, arate, audio[2])
            for frame in _audio_frames(signal, arate, sound.codec_context.layout.name, sound):
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path
