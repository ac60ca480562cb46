"""The classic backend's geometry, checked on the example face."""

import cv2
import mediapipe as mp
import numpy as np
import pytest

from dhserve.engine.face import analyse_frames
from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.engine.face.landmarks import (FACE_OVAL, LOWER_INNER_LIP, LOWER_LIP_INNER_MID,
                                          NOSE_TIP, UPPER_INNER_LIP, UPPER_LIP_INNER_MID,
                                          mouth_opening)
from dhserve.engine.lipsync.classic import PRESSING, MouthWarp, animate_mouth


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


class InnerLips:
    """The inner-lip gap (pixels, landmarks 13 to 14) measured on an image by MediaPipe's
    478-point mesh: its lips come from a refinement model of their own, which follows a
    pressed seam (the 468-point mesh the engine uses keeps a smiling face's lips ~6 px apart
    on this template whatever the pixels between them show)."""

    def __init__(self):
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                    refine_landmarks=True)

    def gap(self, image: np.ndarray) -> float:
        found = self.mesh.process(image).multi_face_landmarks
        assert found, "no face found"
        points = found[0].landmark
        upper, lower = points[UPPER_LIP_INNER_MID], points[LOWER_LIP_INNER_MID]
        height, width = image.shape[:2]
        return float(np.hypot((lower.x - upper.x) * width, (lower.y - upper.y) * height))

    def close(self) -> None:
        self.mesh.close()


@pytest.fixture(scope="module")
def inner_lips():
    lips = InnerLips()
    yield lips
    lips.close()


def dark_inside_lips(image: np.ndarray, points: np.ndarray) -> int:
    """Dark pixels (the mouth's interior, the shadows behind the teeth) inside the inner-lip
    outline of `points`."""
    ring = np.concatenate([points[list(UPPER_INNER_LIP)], points[list(LOWER_INNER_LIP[::-1])]])
    inside = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(ring * 4).astype(np.int32)], (1,), shift=2)
    return int(((image.max(-1) < 110) & (inside > 0)).sum())


def test_bilabial_closure_presses_parted_lips_shut(face, inner_lips):
    """The example avatar smiles with parted lips and its teeth showing: on m, b, p the lips
    meet (their own pixels stretched over the teeth), nothing above the nose moves and the
    face's outline stays where it is."""
    frame, points = face
    rest_gap = inner_lips.gap(frame)
    assert rest_gap > 8                              # the template's mouth is open at rest
    assert animate_mouth(frame, points, 0.0, closure=PRESSING / 2) is frame   # no pressing
    nose = int(points[NOSE_TIP][1])
    outline = np.round(points[list(FACE_OVAL)]).astype(int)
    gaps = []
    for closure in (0.5, 1.0):
        out = animate_mouth(frame, points, 0.0, closure=closure)
        gaps.append(inner_lips.gap(out))
        assert np.abs(out[:nose].astype(int) - frame[:nose]).mean() < 1.0
        for x, y in outline:                         # no tearing at the face's edge
            patch = np.s_[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4]
            assert np.abs(out[patch].astype(int) - frame[patch]).mean() < 1.0, (x, y)
    assert gaps[1] < 0.25 * rest_gap < gaps[0], (gaps, rest_gap)
    dark = dark_inside_lips(frame, points)
    assert dark > 20
    assert dark_inside_lips(out, points) < 0.3 * dark
