"""Decompression bombs: small files that declare huge pictures are refused from their
headers, before a pixel is decoded, fast and in little memory (measured in a fresh process:
the high-water mark of its resident memory). Before this guard a 746 KB PNG declaring
16000x16000 took 7.4 s and 740 MB to probe here, a 35-byte GIF 1.4 s and 980 MB."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_factory import (
    gif_bomb,
    jpeg_bomb,
    png_bomb,
    video_of_packets,
    write_audio,
    write_video,
)

from dhserve.engine import media
from dhserve.engine.face import AnalysisCache
from dhserve.engine.image_header import image_size
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.errors import InputError

MAX_SECONDS = 1.0
MAX_GROWTH_MB = 48       # over the process's own high-water mark after a normal probe


def _h264(path: Path, width: int, height: int, frames: int = 1, rate: int = 25,
          container: str | None = None) -> Path:
    """A flat grey H.264 video (ultrafast: a 4096x4096 frame takes a third of a second)."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        planes = np.full((height * 3 // 2, width), 128, np.uint8)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _webp_header(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) declaring a width x height canvas, with nothing in it."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + len(vp8x).to_bytes(4, "little") + vp8x
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.fixture(scope="session")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    png = png_bomb(16000, 16000)
    files = {
        "png-16000x16000": ("bomb.png", png),
        "jpeg-16000x16000": ("bomb.jpg", jpeg_bomb(16000, 16000)),
        "gif-16000x16000": ("bomb.gif", gif_bomb(16000, 16000)),
        "webp-16000x16000": ("bomb.webp", _webp_header(16000, 16000)),
    }
    paths = {}
    for name, (file, data) in files.items():
        paths[name] = folder / file
        paths[name].write_bytes(data)
    paths["mp4-png-16000x16000"] = video_of_packets(folder / "pngs.mp4", "png", 16000,
                                                    16000, [png] * 3)
    paths["mp4-h264-4096x4096"] = _h264(folder / "big.mp4", 4096, 4096)
    paths["flv-h264-4096x4096"] = _h264(folder / "big.flv", 4096, 4096, container="flv")
    paths["mp4-720p-1000fps"] = _h264(folder / "fast.mp4", 1280, 720, frames=3, rate=1000)
    # Speech in a file whose video track is a bomb: only the sound is ever decoded.
    paths["speech-with-png-bomb-video"] = video_of_packets(
        folder / "speech.mov", "png", 16000, 16000, [png] * 10, audio=("aac", 44100, 1))
    return paths


MEASURE = """
import json, resource, sys, time
from pathlib import Path
from dhserve.engine import audio, media

def high_water():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

media.probe(Path(sys.argv[1]), "warm-up")          # codecs loaded, buffers made once
for name, kind, path in json.loads(sys.argv[2]):
    before, started = high_water(), time.monotonic()
    try:
        if kind == "speech":
            audio.decode_speech(Path(path), "audio")
        else:
            media.probe(Path(path), "video", kind=kind)
        code = "ok"
    except Exception as exc:
        code = getattr(exc, "code", type(exc).__name__)
    print(json.dumps({"name": name, "code": code, "seconds": time.monotonic() - started,
                      "grew_mb": high_water() - before}), flush=True)
"""


@pytest.fixture(scope="session")
def measured(bombs, tmp_path_factory) -> dict[str, dict]:
    """Each bomb probed in one fresh process, in turn: what it answered, how long it took,
    and how far it raised the process's memory high-water mark."""
    normal = write_video(tmp_path_factory.mktemp("normal") / "normal.mp4",
                         [np.full((64, 64, 3), 100, np.uint8)] * 3)
    work = [(name, "audio" if name.startswith("speech") else "video", str(path))
            for name, path in bombs.items()]
    work.append(("speech-with-png-bomb-video:decode", "speech",
                 str(bombs["speech-with-png-bomb-video"])))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(normal), json.dumps(work)],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(work), done.stderr[-3000:]
    return {line["name"]: line for line in lines}


@pytest.mark.parametrize("name", ["png-16000x16000", "jpeg-16000x16000", "gif-16000x16000",
                                  "webp-16000x16000", "mp4-png-16000x16000",
                                  "mp4-h264-4096x4096", "flv-h264-4096x4096",
                                  "mp4-720p-1000fps"])
def test_bomb_is_refused_from_its_header(measured, name):
    got = measured[name]
    assert got["code"] == "video.too_large"
    assert got["seconds"] < MAX_SECONDS, got
    assert got["grew_mb"] < MAX_GROWTH_MB, got


@pytest.mark.parametrize("name", ["speech-with-png-bomb-video",
                                  "speech-with-png-bomb-video:decode"])
def test_speech_whose_video_track_is_a_bomb_decodes_only_the_sound(measured, name):
    got = measured[name]
    assert got["code"] == "ok"
    assert got["seconds"] < MAX_SECONDS, got
    assert got["grew_mb"] < MAX_GROWTH_MB, got


def test_refusal_names_the_field_and_the_size(bombs):
    with pytest.raises(InputError) as err:
        media.probe(bombs["png-16000x16000"], "video_url")
    assert (err.value.code, err.value.field) == ("video.too_large", "video_url")
    assert err.value.message == ("video_url: 16000x16000 is over the limit of "
                                 f"{media.DEFAULT_MAX_PIXELS} pixels")
    with pytest.raises(InputError) as err:
        media.probe(bombs["mp4-720p-1000fps"], "video")
    assert "1280x720 at 1000 frames/s is over the limit" in err.value.reason


def test_a_render_is_refused_as_fast(tmp_path, bombs, short_speech):
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        render(bombs["png-16000x16000"], short_speech, tmp_path / "o.mp4", RenderOptions(),
               AnalysisCache(tmp_path / "cache"))
    assert err.value.code == "video.too_large"
    assert time.monotonic() - started < MAX_SECONDS
    assert list(tmp_path.iterdir()) == []


def test_the_limit_is_the_callers(bombs):
    """An operator who allows bigger templates gets them probed (headers only here)."""
    info = media.probe(bombs["mp4-h264-4096x4096"], "video", max_pixels=4096 * 4096)
    assert (info.video.width, info.video.height) == (4096, 4096)
    with pytest.raises(InputError) as err:
        media.probe(bombs["gif-16000x16000"], "video", max_pixels=4096 * 4096)
    assert err.value.code == "video.too_large"


def test_a_stream_that_grows_midway_is_stopped_by_the_decoder(tmp_path):
    """The header said 64x64; a 2048x2048 picture later is over the decoder's guard (twice
    the limit given here): the decoder drops it instead of decoding it."""
    small = _h264(tmp_path / "a.h264", 64, 64, frames=2, container="h264")
    big = _h264(tmp_path / "b.h264", 2048, 2048, container="h264")
    joined = tmp_path / "joined.h264"
    joined.write_bytes(small.read_bytes() + big.read_bytes())
    assert media.probe(joined, "video", max_pixels=64 * 64 * 100).video.width == 64
    frames = list(media.read_frames(joined, max_pixels=64 * 64 * 100))
    assert [f.shape for f in frames] == [(64, 64, 3)] * 2
    assert len(list(media.read_frames(joined))) == 3          # under the default limit


@pytest.mark.parametrize("suffix, params", [
    (".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    (".bmp", []),
])
def test_header_sizes_are_read_right(tmp_path, suffix, params):
    """No false refusal: the header reader agrees with the encoder on real files."""
    picture = np.random.default_rng(3).integers(0, 255, (37, 53, 3), np.uint8)
    _, data = cv2.imencode(suffix, picture, params)
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(data.tobytes())
    assert image_size(path) == (53, 37)
    assert media.probe(path, "video").video.width == 53


def test_jpeg_with_exif_first_and_gif_sizes(tmp_path):
    _, data = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8))
    data = data.tobytes()
    app1 = b"\xff\xe1" + (2 + 6 + 500).to_bytes(2, "big") + b"Exif\x00\x00" + bytes(500)
    exif = tmp_path / "exif.jpg"
    exif.write_bytes(data[:2] + app1 + data[2:])
    assert image_size(exif) == (30, 20)
    gif = tmp_path / "small.gif"
    gif.write_bytes(gif_bomb(7, 5))
    assert image_size(gif) == (7, 5)
    wav = tmp_path / "speech.wav"
    write_audio(wav, "pcm_s16le", 16000, seconds=0.1)
    assert image_size(wav) is None
