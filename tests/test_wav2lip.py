"""The wav2lip backend with small real ONNX models, through the whole pipeline and alone."""

from pathlib import Path

import cv2
import numpy as np
import onnx_models
import pytest

from dhserve.config import Settings
from dhserve.engine.face import AnalysisCache
from dhserve.engine.face.landmarks import LOWER_LIP_INNER_MID, UPPER_LIP_INNER_MID
from dhserve.engine.lipsync import FrameBatch, create_backend, resolve_backend
from dhserve.engine.lipsync.wav2lip import (
    FACE_SIZE,
    Wav2LipBackend,
    face_input,
    face_output,
    paste_mask,
    pixel_box,
    smoothed_boxes,
)
from dhserve.engine.media import read_frames
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.errors import InputError
from dhserve.fsutil import file_digest
from dhserve.runtime.models import WAV2LIP
from dhserve.runtime.onnx import OnnxModel, SessionConfig

EYES = (33, 263)     # outer eye corners: above the lower-face mask


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return AnalysisCache(tmp_path_factory.mktemp("w2l-cache"))


@pytest.fixture(scope="module")
def analysis(cache, example_avatar, template_frames):
    from dhserve.engine.face import analyse_frames

    digest = file_digest(example_avatar)
    found = cache.get(digest)
    if found is None:
        found = analyse_frames(template_frames)
        cache.put(digest, found)
    return found


def _settings(tmp_path, build=None, **overrides) -> Settings:
    models = tmp_path / "models"
    if build:
        build(models / Settings.wav2lip_model)
    return Settings(data_dir=tmp_path / "data", models_dir=models, **overrides)


def _expected(frame, landmarks, i):
    """What the inverting model dictates for frame i: the box's 96x96 face inverted, resized
    back and blended with the lower-face mask; and that mask."""
    lo = max(0, i - 2)
    box = pixel_box(smoothed_boxes(landmarks[lo:i + 3], i - lo, 1)[0], frame.shape)
    x0, y0, x1, y1 = box
    face = cv2.resize(frame[y0:y1, x0:x1], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    generated = cv2.resize(255 - face, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros(frame.shape[:2], np.float32)
    mask[y0:y1, x0:x1] = paste_mask(landmarks[i], box)
    expected = frame.astype(np.float32)
    expected[y0:y1, x0:x1] += (generated.astype(np.float32) - expected[y0:y1, x0:x1]) * \
        mask[y0:y1, x0:x1, None]
    return expected, mask, box


@pytest.mark.parametrize("variant", ["dynamic", "fixed-1", "fp16"])
def test_render_changes_the_lower_face_as_the_model_dictates(
        tmp_path, variant, example_avatar, short_speech, template_frames, analysis, cache):
    build = {"dynamic": lambda p: onnx_models.wav2lip_invert(p),
             "fixed-1": lambda p: onnx_models.wav2lip_invert(p, batch=1),
             "fp16": lambda p: onnx_models.wav2lip_invert(p, half=True)}[variant]
    settings = _settings(tmp_path, build, batch_size=7)
    options = RenderOptions.from_settings(settings)
    assert options.backend == "auto" and resolve_backend("auto", settings) == "wav2lip"
    result = render(example_avatar, short_speech, tmp_path / "o.mp4", options, cache,
                    settings=settings)
    assert result.frames == 50 and result.path.is_file()
    out = list(read_frames(result.path))
    for i in (0, 6, 7, 31, 49):          # batch edges (7 a batch) and inside batches
        template = template_frames[i]   # the speech is shorter than the template: frame i
        expected, mask, (x0, y0, x1, y1) = _expected(template, analysis.landmarks, i)
        got = out[i].astype(np.float32)
        inside = mask > 0.5
        assert inside.sum() > 3000
        assert np.abs(got - expected)[inside].mean() < 4.0          # codec noise only
        assert np.abs(got - template)[inside].mean() > 40.0         # … and really changed
        outside = np.ones(mask.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.abs(got - template)[outside].mean() < 2.0         # the rest did not
        points = analysis.landmarks[i]
        mouth = ((points[UPPER_LIP_INNER_MID] + points[LOWER_LIP_INNER_MID]) / 2).astype(int)
        assert mask[mouth[1], mouth[0]] > 0.99
        for eye in EYES:
            x, y = points[eye].astype(int)
            assert mask[y, x] == 0.0


def test_mel_chunk_of_each_frame_reaches_the_model(tmp_path, template_frames, analysis):
    """A model whose output grey is the mean of its mel input: each frame shows its own."""
    path = onnx_models.wav2lip_loudness(tmp_path / "grey.onnx")
    backend = Wav2LipBackend(OnnxModel(WAV2LIP, path, SessionConfig()))
    levels = np.array([-4.0, -2.0, 0.0, 2.0, 4.0], np.float32)
    mel = np.broadcast_to(levels[:, None, None], (5, 80, 16)).copy()
    batch = FrameBatch(template_frames[:5], analysis.landmarks[:5], np.zeros(5, np.float32), mel)
    for frame, points, level in zip(backend.animate(batch), analysis.landmarks, levels):
        x, y = ((points[UPPER_LIP_INNER_MID] + points[LOWER_LIP_INNER_MID]) / 2).astype(int)
        grey = (level + 4) / 8 * 255
        assert np.abs(frame[y - 2:y + 3, x - 2:x + 3].astype(float) - grey).max() <= 2


def test_batches_with_context_equal_one_batch(tmp_path, template_frames, analysis):
    """Box smoothing spans batch edges: two batches with their neighbours' landmarks give
    the same frames as one batch."""
    backend = Wav2LipBackend(OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "w.onnx"),
                                       SessionConfig()))
    frames, marks = template_frames[:10], analysis.landmarks[:10]
    mel = np.zeros((10, 80, 16), np.float32)
    whole = backend.animate(FrameBatch(frames, marks, np.zeros(10), mel))
    first = backend.animate(FrameBatch(frames[:5], marks[:5], np.zeros(5), mel[:5],
                                       after=marks[5:7]))
    second = backend.animate(FrameBatch(frames[5:], marks[5:], np.zeros(5), mel[5:],
                                        before=marks[3:5]))
    for a, b in zip(whole, first + second):
        assert np.array_equal(a, b)
    alone = backend.animate(FrameBatch(frames[5:], marks[5:], np.zeros(5), mel[5:]))
    assert not np.array_equal(alone[0], whole[5])    # without context the box differs


def test_frames_without_a_face_pass_through(tmp_path, template_frames, analysis):
    backend = Wav2LipBackend(OnnxModel(WAV2LIP, onnx_models.wav2lip_invert(tmp_path / "w.onnx"),
                                       SessionConfig()))
    marks = analysis.landmarks[:3].copy()
    marks[1] = np.nan
    out = backend.animate(FrameBatch(template_frames[:3], marks, np.zeros(3),
                                     np.zeros((3, 80, 16), np.float32)))
    assert out[1] is template_frames[1]
    assert not np.array_equal(out[0], template_frames[0])
    nobody = np.full_like(marks, np.nan)
    out = backend.animate(FrameBatch(template_frames[:3], nobody, np.zeros(3), None))
    assert all(a is b for a, b in zip(out, template_frames[:3]))


def test_auto_is_classic_without_the_model_and_wav2lip_with_it(tmp_path):
    settings = _settings(tmp_path)
    assert resolve_backend("auto", settings) == "classic"
    assert create_backend("auto", settings).name == "classic"
    onnx_models.wav2lip_invert(settings.models_path / settings.wav2lip_model)
    assert resolve_backend("auto", settings) == "wav2lip"
    backend = create_backend("auto", settings)
    assert isinstance(backend, Wav2LipBackend) and backend.model.signature.batch is None
    assert resolve_backend("classic", settings) == "classic"


def test_asking_for_wav2lip_without_its_model_fails_before_work(tmp_path, short_speech):
    settings = _settings(tmp_path)
    with pytest.raises(InputError) as err:
        render(Path("no-such-video.mp4"), short_speech, tmp_path / "o.mp4",
               RenderOptions(backend="wav2lip"), settings=settings)
    assert err.value.code == "model.missing" and err.value.field == "backend"
    assert "needs models/wav2lip_gan_96.onnx" in err.value.message
    assert not (tmp_path / "o.mp4").exists()


def test_face_input_follows_the_wav2lip_contract():
    """BGR, /255, channels 0-2 = the face with rows 48+ zeroed, channels 3-5 = the face."""
    crops = np.zeros((1, 96, 96, 3), np.uint8)
    crops[..., 0] = 255                         # pure red (RGB)
    crops[0, 10, 20] = (0, 0, 51)               # one blue pixel in the upper half
    face = face_input(crops)
    assert face.shape == (1, 6, 96, 96) and face.dtype == np.float32
    assert face[0, 5, 60, 60] == 1.0 and face[0, 3, 60, 60] == 0.0    # red is channel 2
    assert face[0, 3, 10, 20] == pytest.approx(0.2)                    # blue is channel 0
    np.testing.assert_array_equal(face[0, :3, :48], face[0, 3:, :48])
    assert not face[0, :3, 48:].any() and face[0, 3:, 48:].any()


def test_face_output_is_read_as_bgr():
    pred = np.zeros((1, 3, 96, 96), np.float32)
    pred[:, 2] = 1.0                            # red, in the model's BGR
    out = face_output(pred)
    assert out.shape == (1, 96, 96, 3)
    assert (out[..., 0] == 255).all() and not out[..., 1:].any()
