"""What a submit can check before a job is queued: its options and the model files."""

import onnx_models
import pytest

from dhserve.config import Settings
from dhserve.errors import InputError
from dhserve.jobs import JobSpec
from dhserve.jobs.admission import check_job
from dhserve.jobs.model import Job, JobState, result_path


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


@pytest.mark.parametrize("options, output, image, field, words", [
    ({"background": "transparent", "container": "mp4"}, None, None, "container",
     "transparent output needs webm or mov"),
    ({"container": "webm"}, None, None, "container", "webm and mov carry a transparent"),
    ({"background": "#00b140", "container": "mov"}, None, None, "container",
     "other backgrounds give an mp4"),
    ({"background": "transparent"}, "/out/talk.mp4", None, "container",
     "transparent output needs webm or mov"),
    ({"background": "transparent", "container": "mov"}, "/out/talk.webm", None, "container",
     "name it .mov"),
    ({"container": "avi"}, None, None, "container", "must be mp4, webm, mov"),
    ({"container": 1}, None, None, "container", "got an integer 1"),
    ({"background": "/etc/hosts"}, None, None, "background",
     "an image background is the input `background`"),
    ({"background": "#00b14"}, None, None, "background", "#rrggbb"),
    ({"background": "#00b140"}, None, "/media/sky.png", "background",
     "give an image or options.background, not both"),
    ({"background": "transparent"}, None, "/media/sky.png", "background", "not both"),
])
def test_background_and_container_refusals(tmp_path, options, output, image, field, words):
    job = JobSpec("/media/avatar.mp4", "/media/speech.wav", output, options,
                  background=image)
    with pytest.raises(InputError) as info:
        check_job(Settings(data_dir=tmp_path), job)
    assert (info.value.code, info.value.field) == ("options.invalid", field)
    assert words in info.value.message


@pytest.mark.parametrize("options, output, container", [
    ({}, None, "mp4"),
    ({"background": "#00B140"}, None, "mp4"),
    ({"background": "transparent"}, None, "webm"),
    ({"background": "transparent", "container": "mov"}, None, "mov"),
    ({"background": "transparent"}, "/out/talk.mov", "mov"),
    ({"background": "keep", "container": "mp4"}, None, "mp4"),
])
def test_the_container_follows_the_background(tmp_path, options, output, container):
    """The container is a job's choice, never a render option: the result's name says it."""
    job = JobSpec("/media/avatar.mp4", "/media/speech.wav", output, options)
    rendered = check_job(Settings(data_dir=tmp_path), job)
    assert job.container == container
    assert rendered.background == options.get("background", "keep")
    assert not hasattr(rendered, "container")
    where = result_path(Settings(data_dir=tmp_path), Job("j1", JobState.QUEUED, job))
    assert where.suffix == f".{container}"


def test_payload_of_a_job_without_an_image_is_unchanged():
    """Jobs stored before image backgrounds existed are replayed as the same job."""
    plain = JobSpec("/m/a.mp4", "/m/s.wav", options={"loop": "restart"})
    assert plain.payload() == {"video": "/m/a.mp4", "audio": "/m/s.wav", "output": None,
                               "options": {"loop": "restart"}, "priority": 0}
    assert JobSpec("/m/a.mp4", "/m/s.wav", background="/m/sky.png").payload()[
        "background"] == "/m/sky.png"
