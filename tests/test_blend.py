"""The feathered lower-face mask and colour-kept pasting that every backend blends with."""

import numpy as np

from dhserve.engine.blend import FaceFrame, lower_face_mask, paste
from dhserve.engine.face import analyse_frames
from dhserve.engine.face.landmarks import CHIN, FOREHEAD, MOUTH_LEFT, NOSE_TIP


def test_mask_covers_mouth_and_chin_not_eyes(template_frames):
    points = analyse_frames(template_frames[:1]).landmarks[0]
    h, w = template_frames[0].shape[:2]
    mask = lower_face_mask(points, (0, 0, w, h), extend_down=20, feather=3)
    at = lambda p: mask[int(p[1]), int(p[0])]
    mouth_centre = FaceFrame.from_landmarks(points).origin
    assert at(mouth_centre) > 0.99 and at(points[CHIN] - (0, 5)) > 0.99
    assert at(points[FOREHEAD]) == 0 and at(points[NOSE_TIP] - (0, 25)) == 0
    edge = mask[int(points[MOUTH_LEFT][1]), :]
    assert ((edge > 0.05) & (edge < 0.95)).sum() >= 4      # feathered, not a hard cut


def test_paste_keeps_the_template_colour():
    base = np.full((64, 64, 3), (180, 140, 120), np.uint8)
    patch = np.full((64, 64, 3), (150, 150, 150), np.uint8)   # a generator's colour drift
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    drifted = paste(base, patch, mask)
    kept = paste(base, patch, mask, keep_colour=True)
    assert tuple(drifted[32, 32]) == (150, 150, 150)
    assert np.abs(kept[32, 32].astype(int) - (180, 140, 120)).max() <= 1
    assert np.array_equal(kept[:16], base[:16])              # outside the mask: untouched
