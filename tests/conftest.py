"""Shared fixtures: the bundled example media, one cold render of it, small media builders."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


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
