"""Layers point one way: the web tier (the API and admission) loads no render pipeline, no
MediaPipe and no ONNX Runtime, however many web workers run."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("dhserve.engine.pipeline", "mediapipe", "onnxruntime")


def loaded_after(statement: str) -> list[str]:
    """Which of HEAVY a fresh interpreter holds after running `statement`."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    return done.stdout.split()


@pytest.mark.parametrize("statement", [
    "import dhserve.api",
    "from dhserve.jobs.admission import admit",
    ("from dhserve.engine.lipsync import backend_model, resolve_backend; "
     "from dhserve.config import Settings; backend_model('wav2lip'); "
     "resolve_backend('auto', Settings())"),
])
def test_the_web_tier_loads_no_model_code(statement):
    assert loaded_after(statement) == []


def test_the_app_answers_a_submit_without_loading_model_code(tmp_path):
    statement = (
        "from dhserve.api import create_app\n"
        "from dhserve.config import Settings\n"
        f"app = create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "answer = app.test_client().post('/easy/submit', json={'audio_url': 'a.wav', "
        "'video_url': 'v.mp4', 'code': 'layers-1', 'chaofen': 1})\n"
        "assert answer.status_code == 200, answer.data\n")
    assert loaded_after(statement) == []


def test_admission_reads_media_headers_without_the_frame_code():
    """Admission probes inputs (dhserve.engine.probe); the frame conversions and the MP4
    writer stay with the render."""
    statement = ("import sys\nfrom dhserve.jobs.admission import admit\n"
                 "print(' '.join(m for m in ('dhserve.engine.media', 'dhserve.engine.rgb_frames', "
                 "'dhserve.engine.mp4_writer') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.split() == []
