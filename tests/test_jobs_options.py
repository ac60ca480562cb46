"""What a submit can check before a job is queued: its options and the model files."""

import onnx_models
import pytest

from dhserve.config import Settings
from dhserve.errors import InputError
from dhserve.jobs import JobSpec
from dhserve.jobs.admission import check_job


def spec(**options) -> JobSpec:
    return JobSpec("/media/avatar.mp4", "/media/speech.wav", options=options)


def test_valid_choices_become_render_options(tmp_path):
    options = check_job(Settings(data_dir=tmp_path, crf=20),
                        spec(loop="restart", x264_preset="veryfast"))
    assert (options.loop, options.x264_preset, options.crf) == ("restart", "veryfast", 20)


@pytest.mark.parametrize("options, field, code", [
    ({"loop": "bounce"}, "loop", "options.invalid"),
    ({"max_audio_seconds": 1e9}, "max_audio_seconds", "options.invalid"),
    ({"batch_size": 4096}, "batch_size", "options.invalid"),
    ({"colour": "red"}, "colour", "options.invalid"),
    ({"face_restore": "yes"}, "face_restore", "options.invalid"),
    ({"face_restore": True}, "face_restore", "model.missing"),
    ({"backend": "wav2lip"}, "backend", "model.missing"),
])
def test_refusals_name_the_option(tmp_path, options, field, code):
    with pytest.raises(InputError) as info:
        check_job(Settings(data_dir=tmp_path), spec(**options))
    assert (info.value.code, info.value.field) == (code, field)
    if code == "model.missing":
        assert "needs models/" in info.value.message


def test_face_restore_is_accepted_once_its_model_is_there(tmp_path):
    onnx_models.restore_invert(tmp_path / "models" / "GFPGANv1.4.onnx")
    assert check_job(Settings(data_dir=tmp_path), spec(face_restore=True)).face_restore
