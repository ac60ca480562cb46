"""Shared fixtures: the bundled example media, one cold render of it, small media builders."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["api_support"]      # the HTTP API's fixtures

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def pytest_collection_modifyitems(config, items):
    """`-m gpu` tests run where NVML sees a GPU and are skipped, saying so, elsewhere."""
    from dhserve.runtime.gpu import gpu_summary

    gpu = gpu_summary()
    if gpu["available"]:
        return
    skip = pytest.mark.skip(reason=f"no GPU: {gpu.get('reason', 'NVML sees none')}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    """The predicate's first truthy value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A real, small file system (tmpfs of `size`, "300k", "8m") mounted on `folder` for the
    test's life, to fill up for real; skipped, loudly, where this process may not mount one
    (CI runs as root)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"FULL DISK NOT TESTED: cannot mount a tmpfs here (needs root): "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """16-bit mono PCM wav from float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def speech_excerpt(path: Path, start: float, seconds: float) -> Path:
    """A piece of the example speech, as a 16 kHz wav."""
    from dhserve.engine.audio import decode_speech

    wav = decode_speech(EXAMPLES / "speech.wav")
    return write_wav(path, wav[int(start * 16000):int((start + seconds) * 16000)])


def encode_video(path: Path, frames: list[np.ndarray], rate: int = 25) -> Path:
    """An H.264 MP4 from RGB frames, written with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def example_avatar() -> Path:
    return EXAMPLES / "avatar.mp4"


@pytest.fixture(scope="session")
def example_speech() -> Path:
    return EXAMPLES / "speech.wav"


@pytest.fixture(scope="session")
def short_speech(tmp_path_factory) -> Path:
    """2 s of real speech: enough to exercise a render, quick to run."""
    return speech_excerpt(tmp_path_factory.mktemp("speech") / "short.wav", 0.3, 2.0)


@pytest.fixture(scope="session")
def template_frames(example_avatar) -> list[np.ndarray]:
    from dhserve.engine.media import read_frames

    return list(read_frames(example_avatar))


@pytest.fixture(scope="session")
def rendered_example(tmp_path_factory, example_avatar, example_speech):
    """The example rendered once (cold cache, ping-pong): many tests inspect this output."""
    from dhserve.engine.face import AnalysisCache
    from dhserve.engine.pipeline import RenderOptions, render
    from dhserve.engine.progress import CallbackProgress

    work = tmp_path_factory.mktemp("render")
    updates: list[tuple[float, str]] = []
    cache = AnalysisCache(work / "templates")
    result = render(example_avatar, example_speech, work / "out.mp4",
                    RenderOptions(loop="pingpong"), cache,
                    CallbackProgress(lambda f, s: updates.append((f, s))))
    return result, cache, updates


@pytest.fixture(scope="session")
def output_landmarks(rendered_example):
    """Face Mesh re-run on every output frame: what a viewer would see the mouth do."""
    from dhserve.engine.face.detect import MediaPipeFaceDetector
    from dhserve.engine.media import read_frames

    result, _, _ = rendered_example
    detector = MediaPipeFaceDetector()
    try:
        return [detector.detect(frame).landmarks for frame in read_frames(result.path)]
    finally:
        detector.close()


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory, template_frames) -> Path:
    """1 s of the example avatar at 256x256: the analysis and the render take a blink."""
    import cv2

    frames = [cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA)
              for frame in template_frames[:25]]
    return encode_video(tmp_path_factory.mktemp("tiny") / "tiny.mp4", frames)


@pytest.fixture(scope="session")
def tiny_speech(tmp_path_factory) -> Path:
    """0.6 s of real speech."""
    return speech_excerpt(tmp_path_factory.mktemp("speech") / "tiny.wav", 0.5, 0.6)


# -- PostgreSQL -----------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("DHSERVE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's URL; skipped, loudly, only where none can be reached."""
    import psycopg

    plain = POSTGRES_URL.replace("+psycopg", "")
    try:
        psycopg.connect(plain, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: cannot reach {plain}: {exc}")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A URL whose tables live in a fresh schema of their own, dropped afterwards."""
    import psycopg

    plain = postgres_server.replace("+psycopg", "")
    schema = f"dhserve_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{postgres_server}?options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each job store test runs on both engines."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dhserve.db'}"
    return request.getfixturevalue("postgres_url")


def dhserve_process(*args: str, env: dict[str, str] | None = None, log: Path | None = None
                    ) -> subprocess.Popen:
    """`dhserve ARGS` as a fresh interpreter, the way an operator starts it."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (lives with the process)
    return subprocess.Popen([sys.executable, "-m", "dhserve.cli", *args],
                            env={**os.environ, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT)
