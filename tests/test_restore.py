"""Face restoration (chaofen=1) with a small real ONNX model: alone and through a render."""

import cv2
import numpy as np
import onnx_models
import pytest

from dhserve.config import Settings
from dhserve.engine.face import AnalysisCache, analyse_frames
from dhserve.engine.face.landmarks import NOSE_TIP
from dhserve.engine.face.restore import FaceRestorer, alignment, from_model, to_model
from dhserve.engine.media import read_frames
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.engine.preflight import check_models
from dhserve.errors import InputError, ModelError
from dhserve.runtime.models import RESTORE
from dhserve.runtime.onnx import OnnxModel, SessionConfig

EYES = (33, 263)


@pytest.fixture(scope="module")
def face(template_frames):
    return template_frames[0], analyse_frames(template_frames[:1]).landmarks[0]


@pytest.fixture(scope="module")
def restorer(tmp_path_factory):
    path = onnx_models.restore_invert(tmp_path_factory.mktemp("restore") / "GFPGANv1.4.onnx")
    return FaceRestorer(OnnxModel(RESTORE, path, SessionConfig()))


def _patch(frame, xy, r=3):
    x, y = np.asarray(xy).astype(int)
    return frame[y - r:y + r + 1, x - r:x + r + 1].astype(float)


def test_face_is_restored_in_place_and_the_rest_is_untouched(face, restorer):
    frame, points = face
    (out,) = restorer.restore([frame], points[None])
    for landmark in (*EYES, NOSE_TIP):      # well inside the aligned crop: the model's output
        assert np.abs(_patch(out, points[landmark]) - (255 - _patch(frame, points[landmark]))
                      ).mean() < 6
    size = restorer.size
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    inverse = cv2.invertAffineTransform(alignment(points, size))
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(mapped.min(0)).astype(int)
    x1, y1 = np.ceil(mapped.max(0)).astype(int) + 1
    outside = np.ones(frame.shape[:2], bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    assert outside.sum() > 10000
    assert np.array_equal(out[outside], frame[outside])          # exactly unchanged
    assert out is not frame and not np.array_equal(out, frame)


def test_frames_without_a_face_pass_through(face, restorer):
    frame, points = face
    out = restorer.restore([frame, frame], np.stack([np.full_like(points, np.nan), points]))
    assert out[0] is frame and out[1] is not frame


def test_render_with_face_restore(tmp_path, example_avatar, short_speech, template_frames):
    settings = Settings(data_dir=tmp_path)
    onnx_models.restore_invert(settings.models_path / "GFPGANv1.4.onnx")
    options = RenderOptions.from_settings(settings, face_restore=True, backend="classic")
    cache = AnalysisCache(tmp_path / "templates")
    result = render(example_avatar, short_speech, tmp_path / "o.mp4", options, cache,
                    settings=settings)
    (entry,) = cache.directory.glob("*.npz")
    analysis = cache.get(entry.name.split(".")[0])
    out = list(read_frames(result.path))
    assert len(out) == 50
    for i in (0, 25, 49):
        points, template = analysis.landmarks[i], template_frames[i]
        for landmark in EYES:     # classic leaves the eyes; the test model inverts them
            assert np.abs(_patch(out[i], points[landmark])
                          - (255 - _patch(template, points[landmark]))).mean() < 8
        corner = np.s_[-60:, -60:]   # far from the face
        assert np.abs(out[i][corner].astype(float) - template[corner]).mean() < 2


def test_missing_model_is_refused_before_any_work(tmp_path, short_speech):
    settings = Settings(data_dir=tmp_path)
    options = RenderOptions(face_restore=True)
    with pytest.raises(InputError) as err:       # a video that does not exist: never probed
        render(tmp_path / "no-such-video.mp4", short_speech, tmp_path / "o.mp4", options,
               settings=settings)
    assert (err.value.code, err.value.field) == ("model.missing", "face_restore")
    assert "needs models/GFPGANv1.4.onnx" in err.value.message
    assert list(tmp_path.iterdir()) == []
    other = Settings(data_dir=tmp_path, restore_model="gfpgan-1.4-fp16.onnx")
    with pytest.raises(InputError, match="needs models/gfpgan-1.4-fp16.onnx"):
        check_models(options, other)
    check_models(RenderOptions(), settings)        # nothing asked, nothing needed


def test_face_restore_is_off_unless_asked():
    settings = Settings()
    assert RenderOptions.from_settings(settings).face_restore is False
    assert RenderOptions.from_settings(settings, face_restore=True).face_restore is True
    with pytest.raises(InputError, match="face_restore: must be true or false; got 1"):
        RenderOptions(face_restore=1)


def test_damaged_restore_model_is_a_model_error(tmp_path):
    settings = Settings(data_dir=tmp_path)
    onnx_models.corrupt(settings.models_path / "GFPGANv1.4.onnx")
    with pytest.raises(ModelError) as err:
        FaceRestorer.from_settings(settings)
    assert err.value.code == "model.corrupt" and "(N,3,512,512)" in err.value.message


def test_restoration_model_sees_rgb_in_minus_one_to_one():
    crops = np.zeros((1, 8, 8, 3), np.uint8)
    crops[..., 0] = 255                         # pure red
    x = to_model(crops)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    assert (x[0, 0] == 1.0).all() and (x[0, 1:] == -1.0).all()
    np.testing.assert_array_equal(from_model(x), crops)
