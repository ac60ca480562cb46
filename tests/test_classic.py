"""The classic backend's geometry, checked on the example face."""

import numpy as np
import pytest

from dhserve.engine.face import analyse_frames
from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.engine.face.landmarks import mouth_opening
from dhserve.engine.lipsync.classic import MouthWarp, animate_mouth


@pytest.fixture(scope="module")
def face(template_frames):
    return template_frames[0], analyse_frames(template_frames[:1]).landmarks[0]


def test_motion_inverse_lands_within_a_tenth_of_a_pixel(face):
    _, points = face
    warp = MouthWarp(points, 1.0)
    u = np.linspace(-1.3, 1.3, 120)[:, None] * warp.w * np.ones((1, 120))
    below = np.linspace(0, 2.5, 120)[None, :] * warp.w * np.ones((120, 1))
    gap = warp.gap(u)
    src = warp.source_below(u, below, gap)
    shown = below > gap + 1
    residual = np.abs(src + warp.displacement(u, np.maximum(src, 1e-3)) - below)[shown]
    assert residual.max() < 0.1


def test_opening_grows_with_openness_and_the_eyes_stay(face):
    frame, points = face
    assert animate_mouth(frame, points, 0.0) is frame        # silence: the frame itself
    detector = MediaPipeFaceDetector()
    try:
        measured = []
        for openness in (0.0, 0.5, 1.0):
            out = animate_mouth(frame, points, openness)
            assert np.array_equal(out[:150], frame[:150])      # forehead and eyes untouched
            detector.reset()                                   # independent frames
            measured.append(mouth_opening(detector.detect(out).landmarks))
    finally:
        detector.close()
    assert measured[0] < measured[1] - 0.05 < measured[2] - 0.1
