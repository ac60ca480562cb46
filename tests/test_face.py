"""Template analysis: landmarks on real frames, policies for hard frames, the cache."""

import numpy as np
import pytest

from dhserve.engine.face import AnalysisCache, analyse_frames
from dhserve.engine.face.analysis import TemplateAnalysis, smooth_landmarks
from dhserve.engine.face.landmarks import mouth_opening
from dhserve.errors import InputError
from dhserve.fsutil import file_digest


def test_finds_the_face_in_every_example_frame(template_frames):
    analysis = analyse_frames(template_frames[:40])
    assert analysis.frame_count == 40 and analysis.has_face.all()
    assert (analysis.width, analysis.height) == (512, 512)
    mouth = analysis.landmarks[:, [61, 291]].mean(1)
    assert ((mouth > 150) & (mouth < 360)).all()              # the mouth sits mid-frame
    assert 0.08 < mouth_opening(analysis.landmarks[0]) < 0.3  # a smile, lips nearly closed


def test_frames_without_a_face_pass_as_nan(template_frames):
    blank = np.full_like(template_frames[0], 128)
    analysis = analyse_frames([template_frames[0], blank, template_frames[2]])
    assert list(analysis.has_face) == [True, False, True]
    assert any("no face in 1 of 3 frames" in w for w in analysis.warnings)


def test_no_face_anywhere_is_an_error():
    noise = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
    with pytest.raises(InputError) as err:
        analyse_frames(list(noise))
    assert err.value.code == "video.no_face"
    assert "no face found in any of 3 frames" in str(err.value)


def _two_people(frame: np.ndarray) -> np.ndarray:
    import cv2

    small = cv2.resize(frame, (256, 256))
    canvas = np.full((512, 1024, 3), 200, np.uint8)
    canvas[:, :512] = frame
    canvas[128:384, 640:896] = small
    return canvas


def test_several_faces_animate_the_largest_or_refuse(template_frames):
    frames = [_two_people(f) for f in template_frames[:3]]
    analysis = analyse_frames(frames)
    assert analysis.face_counts.max() == 2
    assert (analysis.landmarks[:, :, 0] < 512).all()          # the big face, on the left
    assert any("largest face is animated" in w for w in analysis.warnings)
    with pytest.raises(InputError) as err:
        analyse_frames(frames, multiple_faces="error")
    assert err.value.code == "video.multiple_faces"


def test_smoothing_removes_jitter_without_lag():
    rng = np.random.default_rng(3)
    truth = np.linspace(0, 50, 60)[:, None, None] * np.ones((60, 468, 2), np.float32)
    noisy = (truth + rng.normal(0, 1.0, truth.shape)).astype(np.float32)
    noisy[30] = np.nan                                        # a frame without a face
    smooth = smooth_landmarks(noisy)
    assert np.isnan(smooth[30]).all()
    ok = ~np.isnan(noisy[:, 0, 0])
    error_before = np.abs(noisy[ok] - truth[ok]).mean()
    error_after = np.abs(smooth[ok] - truth[ok]).mean()
    assert error_after < 0.7 * error_before


def test_cache_round_trip_is_keyed_by_content(tmp_path, example_avatar, template_frames):
    cache = AnalysisCache(tmp_path)
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(example_avatar.read_bytes())
    assert file_digest(copy) == file_digest(example_avatar)
    analysis = analyse_frames(template_frames[:5])
    cache.put(file_digest(example_avatar), analysis)
    loaded = cache.get(file_digest(copy))
    assert isinstance(loaded, TemplateAnalysis)
    assert np.array_equal(loaded.landmarks, analysis.landmarks, equal_nan=True)
    cache.path_for("damaged").write_bytes(b"not an npz")
    assert cache.get("damaged") is None and cache.get("absent") is None
