"""The format matrix: speech in every common container and codec, and templates in every
awkward video form, each rendered end to end (classic backend, a 128x128 template) and the
output decoded and measured the way a viewer would notice a fault: how long the sound and
the picture last, whether the sound sits where it was (lag 0 within one frame), and the
picture's size and orientation. All media are made here with PyAV's own encoders; a case
whose encoder this PyAV lacks is skipped, saying so."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_factory import best_lag_ms, bursts, write_audio, write_video

from dhserve.engine import audio
from dhserve.engine.face import AnalysisCache
from dhserve.engine.media import even_size, read_frames
from dhserve.engine.pipeline import RenderOptions, render

FPS = 25
FRAME_S = 1 / FPS
SECONDS = 1.6                      # speech length: 40 output frames
OPTIONS = RenderOptions(backend="classic", x264_preset="ultrafast")


@pytest.fixture(scope="session")
def small_frames(template_frames) -> list[np.ndarray]:
    """1 s of the example avatar at 128x128."""
    return [cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in template_frames[:25]]


@pytest.fixture(scope="session")
def small_template(tmp_path_factory, small_frames) -> Path:
    return write_video(tmp_path_factory.mktemp("formats") / "small.mp4", small_frames)


@pytest.fixture(scope="session")
def format_cache(tmp_path_factory) -> AnalysisCache:
    """One analysis cache for the matrix: the speech cases share the template's analysis."""
    return AnalysisCache(tmp_path_factory.mktemp("format-cache"))


def _render(template: Path, speech: Path, out: Path, cache: AnalysisCache):
    return render(template, speech, out, OPTIONS, cache)


def _output(path: Path) -> dict:
    """What the output holds, decoded: picture size, frames and rate; the sound's declared
    and decoded lengths."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        got = {"size": (video.width, video.height), "fps": video.average_rate,
               "frames": sum(1 for _ in container.decode(video))}
    with av.open(str(path)) as container:
        sound = container.streams.audio[0]
        samples = sum(f.samples for f in container.decode(sound))
        got.update(audio_declared_s=float(sound.duration * sound.time_base),
                   audio_decoded_s=samples / sound.rate, audio_rate=sound.rate)
    got["video_s"] = got["frames"] / float(got["fps"])
    return got


def _ideal_16k(signal: np.ndarray, rate: int) -> np.ndarray:
    """The written signal as decode_speech would give it: 16 kHz mono."""
    layout = "mono" if signal.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal.T.reshape(1, -1)),
                                       format="flt", layout=layout)
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
    return np.concatenate([f.to_ndarray().reshape(-1)
                           for f in resampler.resample(frame) + resampler.resample(None)])


def _check_sound(out: Path, speech: Path, written: np.ndarray | None, rate: int) -> dict:
    """The output's sound lasts as long as the speech and lines up with it at lag 0 (within
    a frame); the speech itself decodes to what was written."""
    heard = audio.decode_speech(speech)
    speech_s = heard.size / audio.SAMPLE_RATE
    if written is not None:
        ideal = _ideal_16k(written, rate)
        assert abs(speech_s - ideal.size / audio.SAMPLE_RATE) < 0.06, "speech decodes short/long"
        lag, r = best_lag_ms(ideal, heard, audio.SAMPLE_RATE)
        assert abs(lag) <= 1000 * FRAME_S and r > 0.9, f"speech decodes shifted {lag} ms, r={r}"
    got = _output(out)
    assert abs(got["video_s"] - speech_s) <= FRAME_S + 1e-6, got
    assert abs(got["audio_declared_s"] - speech_s) <= FRAME_S + 1e-6, got
    # Decoders do not trim AAC's last frame padding: up to 1024 samples more.
    padding = 1024 / got["audio_rate"]
    assert -FRAME_S <= got["audio_decoded_s"] - speech_s <= FRAME_S + padding, got
    lag, r = best_lag_ms(heard, audio.decode_speech(out), audio.SAMPLE_RATE)
    assert abs(lag) <= 1000 * FRAME_S and r > 0.9, f"output sound shifted {lag} ms, r={r}"
    return got


# (case, suffix, codec, rate, channels, keyword arguments of write_audio)
VBR = {"flags": "+qscale", "global_quality": str(4 * 118)}       # LAME -V 4
SPEECH_CASES = [
    ("wav-u8-8k-mono", "wav", "pcm_u8", 8000, 1, {}),
    ("wav-s16-16k-mono", "wav", "pcm_s16le", 16000, 1, {}),
    ("wav-s16-44.1k-stereo", "wav", "pcm_s16le", 44100, 2, {}),
    ("wav-s24-96k-stereo", "wav", "pcm_s24le", 96000, 2, {}),
    ("wav-s32-48k-mono", "wav", "pcm_s32le", 48000, 1, {}),
    ("wav-f32-22.05k-stereo", "wav", "pcm_f32le", 22050, 2, {}),
    ("wav-f32-11.025k-mono", "wav", "pcm_f32le", 11025, 1, {}),
    ("mp3-cbr-24k-mono", "mp3", "libmp3lame", 24000, 1, {"bit_rate": 48_000}),
    ("mp3-cbr-44.1k-stereo", "mp3", "libmp3lame", 44100, 2, {"bit_rate": 128_000}),
    ("mp3-vbr-44.1k-stereo", "mp3", "libmp3lame", 44100, 2, {"options": VBR}),
    ("mp3-vbr-32k-mono", "mp3", "libmp3lame", 32000, 1, {"options": VBR}),
    ("m4a-aac-44.1k-mono", "m4a", "aac", 44100, 1, {}),
    ("mp4-aac-48k-stereo", "mp4", "aac", 48000, 2, {}),
    ("m4a-alac-44.1k-stereo", "m4a", "alac", 44100, 2, {}),
    ("mov-pcm_s16le-48k-stereo", "mov", "pcm_s16le", 48000, 2, {}),
    ("mov-pcm_s24le-96k-mono", "mov", "pcm_s24le", 96000, 1, {}),
    ("mp4-pcm_s16le-16k-mono", "mp4", "pcm_s16le", 16000, 1, {}),
    ("aac-adts-44.1k-stereo", "aac", "aac", 44100, 2, {"container": "adts"}),
    ("aac-adts-48k-mono", "aac", "aac", 48000, 1, {"container": "adts"}),
    ("ogg-vorbis-44.1k-stereo", "ogg", "vorbis", 44100, 2, {}),
    ("ogg-opus-48k-mono", "ogg", "libopus", 48000, 1, {}),
    ("ogg-flac-44.1k-mono", "ogg", "flac", 44100, 1, {}),
    ("opus-48k-stereo", "opus", "libopus", 48000, 2, {}),
    ("opus-16k-mono", "opus", "libopus", 16000, 1, {}),
    ("flac-s16-44.1k-stereo", "flac", "flac", 44100, 2, {}),
    ("flac-s24-96k-mono", "flac", "flac", 96000, 1, {"sample_format": "s32"}),  # 24-bit
    ("webm-opus-48k-stereo", "webm", "libopus", 48000, 2, {}),
    ("webm-vorbis-48k-stereo", "webm", "vorbis", 48000, 2, {}),
    ("mkv-aac-44.1k-mono", "mkv", "aac", 44100, 1, {}),
    ("mkv-mp3-48k-stereo", "mkv", "libmp3lame", 48000, 2, {}),
]


@pytest.mark.parametrize("case, suffix, codec, rate, channels, kwargs", SPEECH_CASES,
                         ids=[c[0] for c in SPEECH_CASES])
def test_speech_format(tmp_path, small_template, format_cache, case, suffix, codec, rate,
                       channels, kwargs):
    speech = tmp_path / f"speech.{suffix}"
    written = write_audio(speech, codec, rate, channels, seconds=SECONDS, **kwargs)
    out = tmp_path / "out.mp4"
    _render(small_template, speech, out, format_cache)
    got = _check_sound(out, speech, written, rate)
    assert got["size"] == (128, 128) and got["fps"] == FPS


# Files joined end to end (`cat a.mp3 b.mp3`): the format changes midway, and MP3's second
# ID3 tag is a packet no decoder takes. (case, suffix, container, parts: codec, rate, channels)
JOINED_CASES = [
    ("mp3-joined-mono+stereo", "mp3", None, [("libmp3lame", 44100, 1), ("libmp3lame", 44100, 2)]),
    ("mp3-joined-24k+44.1k", "mp3", None, [("libmp3lame", 24000, 1), ("libmp3lame", 44100, 2)]),
    ("adts-joined-44.1k+48k", "aac", "adts", [("aac", 44100, 2), ("aac", 48000, 1)]),
]


@pytest.mark.parametrize("case, suffix, container, parts", JOINED_CASES,
                         ids=[c[0] for c in JOINED_CASES])
def test_joined_speech(tmp_path, small_template, format_cache, case, suffix, container,
                       parts):
    speech = tmp_path / f"joined.{suffix}"
    with open(speech, "wb") as joined:
        for i, (codec, rate, channels) in enumerate(parts):
            part = tmp_path / f"part{i}.{suffix}"
            write_audio(part, codec, rate, channels, container=container, seconds=SECONDS / 2)
            joined.write(part.read_bytes())
    out = tmp_path / "out.mp4"
    _render(small_template, speech, out, format_cache)
    heard = audio.decode_speech(speech).size / audio.SAMPLE_RATE
    assert abs(heard - SECONDS) < 0.08                  # both parts, whole
    _check_sound(out, speech, None, 0)


# A video's soundtrack as the speech: (case, suffix, video codec, audio codec, rate, channels)
SOUNDTRACK_CASES = [
    ("mp4-h264+aac", "mp4", "libx264", "aac", 44100, 2),
    ("webm-vp9+opus", "webm", "libvpx-vp9", "libopus", 48000, 1),
    ("mov-h264+pcm_s16le", "mov", "libx264", "pcm_s16le", 48000, 2),
    ("mkv-h264+mp3", "mkv", "libx264", "libmp3lame", 44100, 2),
]


@pytest.mark.parametrize("case, suffix, vcodec, acodec, rate, channels", SOUNDTRACK_CASES,
                         ids=[c[0] for c in SOUNDTRACK_CASES])
def test_soundtrack_of_a_video_as_speech(tmp_path, small_template, small_frames, format_cache,
                                        case, suffix, vcodec, acodec, rate, channels):
    speech = write_video(tmp_path / f"clip.{suffix}", small_frames * 2, vcodec,
                         audio=(acodec, rate, channels))           # 2 s of picture and sound
    out = tmp_path / "out.mp4"
    _render(small_template, speech, out, format_cache)
    written = bursts(2.0, rate, channels)                          # what write_video put in
    _check_sound(out, speech, written, rate)


# -- templates ------------------------------------------------------------------------------

def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def _portrait(frames):
    """96 wide, 128 tall: the face kept, so the orientation of the output shows."""
    return [np.ascontiguousarray(f[:, 16:112]) for f in frames]


def _odd(frames):
    return [np.ascontiguousarray(f[:95, :127]) for f in frames]


def _vfr_pts(n: int) -> list[int]:
    """Milliseconds of a phone's variable frame rate: 30 and 50 ms frames, 25/s on average."""
    return [sum(30 if k % 2 else 50 for k in range(i)) for i in range(n)]


# (case, suffix, codec, frames transform, write_video keyword arguments, min PSNR of the top)
TEMPLATE_CASES = [
    ("h264-rotation-90", "mp4", "libx264", _portrait, {"rotation": 90}, 30),
    ("h264-rotation-270", "mp4", "libx264", _portrait, {"rotation": 270}, 30),
    ("h264-rotation-180", "mp4", "libx264", _portrait, {"rotation": 180}, 30),
    ("h264-vfr", "mp4", "libx264", None,
     {"pts": _vfr_pts(25), "time_base": Fraction(1, 1000)}, 30),
    ("h264-10bit", "mp4", "libx264", None, {"pix_fmt": "yuv420p10le"}, 30),
    ("h264-odd-127x95", "mp4", "libx264", _odd, {"pix_fmt": "yuv444p"}, 30),
    ("vp9-odd-127x95", "webm", "libvpx-vp9", _odd, {}, 28),
    ("hevc", "mp4", "libx265", None, {"options": {"x265-params": "log-level=error"}}, 28),
    ("hevc-10bit", "mkv", "libx265", None,
     {"pix_fmt": "yuv420p10le", "options": {"x265-params": "log-level=error"}}, 28),
    ("vp9", "webm", "libvpx-vp9", None, {}, 28),
    ("vp8", "webm", "libvpx", None, {}, 25),
    ("av1", "mp4", "libsvtav1", None, {}, 25),
    ("prores-422-10bit", "mov", "prores_ks", None, {"pix_fmt": "yuv422p10le"}, 30),
    ("mjpeg-full-range", "avi", "mjpeg", None, {"pix_fmt": "yuvj420p"}, 28),
    ("gif", "gif", "gif", None, {"pix_fmt": "rgb8"}, 18),
    ("webp-still", "webp", "libwebp", lambda f: f[:1], {}, 28),
]


@pytest.mark.parametrize("case, suffix, codec, transform, kwargs, min_psnr", TEMPLATE_CASES,
                         ids=[c[0] for c in TEMPLATE_CASES])
def test_template_format(tmp_path, small_frames, tiny_speech, case, suffix, codec, transform,
                         kwargs, min_psnr):
    frames = transform(small_frames) if transform else small_frames
    template = write_video(tmp_path / f"template.{suffix}", frames, codec, **kwargs)
    result = render(template, tiny_speech, tmp_path / "out.mp4", OPTIONS,
                    AnalysisCache(tmp_path / "cache"))
    height, width = frames[0].shape[:2]                 # as shown: upright
    got = _output(result.path)
    assert got["size"] == even_size(width, height)
    assert result.fps == FPS and got["fps"] == FPS
    speech_s = audio.decode_speech(tiny_speech).size / audio.SAMPLE_RATE
    assert abs(got["video_s"] - speech_s) <= FRAME_S + 1e-6, got
    assert abs(got["audio_declared_s"] - speech_s) <= FRAME_S + 1e-6, got
    # Upright and in its own colours: forehead and eyes (untouched by the mouth) as given.
    first = next(read_frames(result.path))
    top = slice(0, 40)
    expected = frames[0][: first.shape[0], : first.shape[1]]
    assert _psnr(first[top], expected[top]) > min_psnr
    if kwargs.get("rotation"):
        turned = np.rot90(expected, 2)                  # the same picture the wrong way up
        assert _psnr(first[top], turned[top]) < _psnr(first[top], expected[top]) - 6


# -- damaged media ---------------------------------------------------------------------------

def _damaged(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    """The file cut short at three places, with bytes changed at random, with a run zeroed."""
    rng = np.random.default_rng(seed)
    flipped, zeroed = bytearray(data), bytearray(data)
    for at in rng.integers(len(data) // 10, len(data), 12):
        flipped[at] = int(rng.integers(256))
    start = int(rng.integers(len(data) // 10, len(data) // 2))
    zeroed[start:start + 1500] = bytes(len(zeroed[start:start + 1500]))
    return [(f"cut-{p}", data[: len(data) * p // 100]) for p in (5, 40, 90)] + \
        [("flipped", bytes(flipped)), ("zeroed", bytes(zeroed))]


DAMAGED_SPEECH = [("mp3", "libmp3lame", 44100, 2, {}), ("aac", "aac", 44100, 1,
                  {"container": "adts"}), ("ogg", "libopus", 48000, 1, {}),
                  ("webm", "libopus", 48000, 2, {}), ("m4a", "aac", 44100, 2, {}),
                  ("wav", "pcm_s16le", 16000, 1, {}), ("flac", "flac", 44100, 1, {})]
DAMAGED_TEMPLATES = [("mp4", "libx264", {}), ("webm", "libvpx-vp9", {}),
                     ("gif", "gif", {"pix_fmt": "rgb8"}), ("mov", "prores_ks",
                                                           {"pix_fmt": "yuv422p10le"})]


@pytest.mark.parametrize("suffix, codec, rate, channels, kwargs", DAMAGED_SPEECH,
                         ids=[c[0] for c in DAMAGED_SPEECH])
def test_damaged_speech_renders_or_fails_with_a_code(tmp_path, small_template, format_cache,
                                                     suffix, codec, rate, channels, kwargs):
    """Whatever is left of it plays, or the render stops with a code (the CLI's `error
    <code>: <message>`), never a library's exception."""
    whole = tmp_path / f"whole.{suffix}"
    write_audio(whole, codec, rate, channels, seconds=1.0, **kwargs)
    for damage, data in _damaged(whole.read_bytes(), seed=len(suffix)):
        speech = tmp_path / f"{damage}.{suffix}"
        speech.write_bytes(data)
        _renders_or_refuses(small_template, speech, tmp_path / f"{damage}.mp4", format_cache)


@pytest.mark.parametrize("suffix, codec, kwargs", DAMAGED_TEMPLATES,
                         ids=[c[0] for c in DAMAGED_TEMPLATES])
def test_damaged_template_renders_or_fails_with_a_code(tmp_path, small_frames, tiny_speech,
                                                       suffix, codec, kwargs):
    whole = write_video(tmp_path / f"whole.{suffix}", small_frames, codec, **kwargs)
    for damage, data in _damaged(whole.read_bytes(), seed=len(suffix)):
        template = tmp_path / f"{damage}.{suffix}"
        template.write_bytes(data)
        _renders_or_refuses(template, tiny_speech, tmp_path / f"{damage}.mp4",
                            AnalysisCache(tmp_path / "cache"))


def _renders_or_refuses(template: Path, speech: Path, out: Path, cache: AnalysisCache):
    from dhserve.errors import DhserveError

    try:
        _render(template, speech, out, cache)
    except DhserveError as exc:
        assert exc.code.split(".")[0] in ("input", "audio", "video"), exc.code
        assert str(out.parent) not in exc.message
        assert not list(out.parent.glob(f".{out.name}.*.part"))
