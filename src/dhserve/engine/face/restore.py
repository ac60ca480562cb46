"""Face restoration (HeyGem's `chaofen=1`): a GFPGAN-style model over each output face.

The face is aligned to the FFHQ 5-point template that GFPGAN was trained on (eyes, nose tip,
mouth corners) in a 512x512 crop, given to the model as RGB in [-1, 1], and its output is
warped back and blended in with a soft-edged mask, so only the face region changes. Runs after
lip-sync, before encoding: it sharpens the low-resolution mouth a 96x96 generator produces.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from dhserve.config import Settings
from dhserve.engine.blend import paste
from dhserve.engine.face.landmarks import MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP
from dhserve.runtime.models import RESTORE, ModelSpec

if TYPE_CHECKING:   # ONNX Runtime is imported when the model is loaded, not with the class
    from dhserve.runtime.onnx import OnnxModel

# FFHQ alignment of GFPGAN / facexlib at 512 px: eye centres, nose tip, mouth corners,
# in image order (the subject's right eye is on the left).
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
EYE_IMAGE_LEFT = (33, 133)      # Face Mesh: outer and inner corner
EYE_IMAGE_RIGHT = (362, 263)
MASK_INSET = 0.06               # of the crop: the blend fades out inside the crop's border …
MASK_SOFTNESS = 0.05            # … over a Gaussian of this share of the crop


def five_points(points: np.ndarray) -> np.ndarray:
    """The FFHQ template's five points measured on a Face Mesh face."""
    return np.stack([points[list(EYE_IMAGE_LEFT)].mean(0), points[list(EYE_IMAGE_RIGHT)].mean(0),
                     points[NOSE_TIP], points[MOUTH_LEFT], points[MOUTH_RIGHT]]).astype(np.float32)


def alignment(points: np.ndarray, size: int) -> np.ndarray | None:
    """2x3 similarity transform frame → aligned crop of `size` px, or None if degenerate."""
    matrix, _ = cv2.estimateAffinePartial2D(five_points(points), FFHQ_512 * (size / 512.0),
                                            method=cv2.LMEDS)
    return matrix


@lru_cache(maxsize=4)
def crop_mask(size: int) -> np.ndarray:
    """1 over the middle of the crop, fading softly to 0 before its border."""
    inset = round(MASK_INSET * size)
    mask: np.ndarray = np.zeros((size, size), np.float32)
    mask[inset:size - inset, inset:size - inset] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), MASK_SOFTNESS * size)
    mask[mask < 1e-3] = 0.0
    return mask


def to_model(crops: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) RGB uint8 → (n, 3, S, S) float32 in [-1, 1], as GFPGAN normalises."""
    return crops.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def from_model(out: np.ndarray) -> np.ndarray:
    """(n, 3, S, S) in [-1, 1] → (n, S, S, 3) RGB uint8."""
    rgb = (np.clip(out, -1.0, 1.0).transpose(0, 2, 3, 1) + 1.0) * 127.5
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def paste_back(frame: np.ndarray, restored: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`frame` with the restored crop warped back and blended in over the crop's footprint."""
    size = restored.shape[0]
    inverse: np.ndarray = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = frame.shape[:2]
    x0, y0 = np.maximum(np.floor(mapped.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(mapped.max(0)).astype(int) + 1, (width, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return frame
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    roi = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(restored, shifted, roi, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(crop_mask(size), shifted, roi, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0,))
    out = frame.copy()
    out[y0:y1, x0:x1] = paste(frame[y0:y1, x0:x1], face, mask)
    return out


class FaceRestorer:
    """Restores the face of each frame that has one; shared by a worker's renders."""

    model_spec: ClassVar[ModelSpec] = RESTORE     # the model file it needs

    def __init__(self, model: OnnxModel):
        self.model: OnnxModel | None = model
        self.size = self.model_spec.inputs[0].shape[-1]

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceRestorer:
        """Loads the configured model; InputError model.missing ("needs models/…") when the
        file is absent, ModelError when it is damaged or not a restoration model."""
        # Here, not at the top: a submit asks this class which model file it needs, and the
        # web tier must not load ONNX Runtime for that.
        from dhserve.runtime.onnx import load_model

        return cls(load_model(settings, cls.model_spec, "face_restore"))

    def restore(self, frames: list[np.ndarray], landmarks: np.ndarray) -> list[np.ndarray]:
        """One frame per input frame; frames without a face come back unchanged."""
        out = list(frames)
        jobs = []
        for i, points in enumerate(landmarks):
            if np.isnan(points[0, 0]):
                continue
            matrix = alignment(points, self.size)
            if matrix is not None:
                jobs.append((i, matrix))
        if not jobs:
            return out
        crops = np.stack([cv2.warpAffine(frames[i], m, (self.size, self.size),
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                          for i, m in jobs])
        if self.model is None:
            raise RuntimeError("face restorer used after close()")
        restored = from_model(self.model.run({"face": to_model(crops)}))
        for (i, matrix), face in zip(jobs, restored):
            out[i] = paste_back(frames[i], face, matrix)
        return out

    def close(self) -> None:
        self.model = None
