"""Person masks of template frames: MediaPipe selfie segmentation (the model ships inside the
mediapipe wheel, mediapipe/modules/selfie_segmentation/*.tflite), smoothed over time.

Masks are kept compactly: uint8 (0 background .. 255 person), at most MASK_MAX_SIDE pixels on
the long side (the model itself sees 256x256, so nothing is lost); background.py scales them
to the frame, which also gives anti-aliased edges. They depend on the template only, so they
are computed once per template and cached with its face analysis (AnalysisCache.put_masks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

MASK_MAX_SIDE = 512
MASK_SMOOTHING_SIGMA = 1.0   # frames; centred, so the edge does not lag the person
MASK_VERSION = 1             # bump when stored masks change meaning


def mask_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of a stored mask for a frame of `width` x `height`."""
    scale = min(1.0, MASK_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class PersonSegmenter:
    """MediaPipe selfie segmentation of RGB frames into uint8 person masks. One per thread."""

    calls = 0   # frames segmented by any instance (the tests count cache hits with it)

    def __init__(self) -> None:
        import mediapipe as mp  # heavy import, done only where masks are computed

        # model 0 ("general", 256x256 input): portraits are taller than the landscape model's
        # 144x256 and its edges are the cleaner of the two on the example avatar.
        self._model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """The person mask of one frame, uint8 at mask_size of the frame."""
        PersonSegmenter.calls += 1
        height, width = rgb.shape[:2]
        size = mask_size(width, height)
        small = rgb if size == (width, height) else cv2.resize(rgb, size,
                                                               interpolation=cv2.INTER_AREA)
        prob = self._model.process(np.ascontiguousarray(small)).segmentation_mask
        return np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._model.close()


def person_masks(frames: Iterable[np.ndarray], on_frame: Callable[[int], None] | None = None,
                 segmenter: PersonSegmenter | None = None) -> np.ndarray:
    """The masks of all `frames` (n, h, w) uint8, smoothed over time."""
    own = segmenter is None
    segmenter = segmenter or PersonSegmenter()
    masks = []
    try:
        for index, rgb in enumerate(frames):
            masks.append(segmenter.segment(rgb))
            if on_frame:
                on_frame(index + 1)
    finally:
        if own:
            segmenter.close()
    return smooth_masks(np.stack(masks))


def smooth_masks(masks: np.ndarray, sigma: float = MASK_SMOOTHING_SIGMA) -> np.ndarray:
    """Centred Gaussian smoothing over time (a frame at a time: memory stays one float frame
    above the uint8 masks); removes the segmenter's frame-to-frame flicker at the edges."""
    n = masks.shape[0]
    if sigma <= 0 or n < 2:
        return masks
    radius = int(np.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    out = np.empty_like(masks)
    for i in range(n):
        lo, hi = max(0, i - radius), min(n, i + radius + 1)
        weights = taps[lo - i + radius:hi - i + radius]
        total = np.tensordot(weights / weights.sum(), masks[lo:hi].astype(np.float32), axes=1)
        out[i] = np.clip(total + 0.5, 0, 255).astype(np.uint8)
    return out
