"""`wav2lip`: Wav2Lip-family ONNX generators (FaceFusion's `wav2lip_96` / `wav2lip_gan_96`).

Per frame with a face: the face box (brows to chin, padded at the chin, smoothed over 5
frames) is cut out, resized to 96x96, converted to BGR/255 as Wav2Lip was trained; the model
gets that face with its lower half zeroed plus the unmasked face as reference (6 channels) and
the 16-frame mel window of the frame (200 ms of speech). Its 96x96 output is resized back to
the box and blended in with the feathered lower-face mask `classic` uses, so only the mouth
region changes and no box edge shows. Frames without a face pass through unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from dhserve.config import Settings
from dhserve.engine.blend import fade_edges, lower_face_mask, paste
from dhserve.engine.face.landmarks import FACE_OVAL, MOUTH_LEFT, MOUTH_RIGHT
from dhserve.engine.lipsync.base import FrameBatch, LipSyncBackend
from dhserve.runtime.models import WAV2LIP, ModelSpec

if TYPE_CHECKING:   # ONNX Runtime is imported when the model is loaded, not with the class
    from dhserve.runtime.onnx import OnnxModel

FACE_SIZE = 96
BROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)   # Face Mesh upper brow points
CHIN_PAD = 10.0           # px below the chin, as Wav2Lip pads its detector's boxes …
CHIN_PAD_SHARE = 0.05     # … or this share of the box height on larger faces
SMOOTH_FRAMES = 5         # Wav2Lip's box smoothing window
MIN_BOX = 16              # px; a smaller face is left as it is


def face_box(points: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) floats: across the face oval, from the brows (where the face
    detector boxes Wav2Lip was trained on begin) to the chin plus padding, so that row 48 of
    the 96x96 crop falls near the base of the nose."""
    oval = points[list(FACE_OVAL)]
    top = float(points[list(BROWS), 1].min())
    bottom = float(oval[:, 1].max())
    pad = max(CHIN_PAD, CHIN_PAD_SHARE * (bottom - top))
    return np.array([oval[:, 0].min(), top, oval[:, 0].max(), bottom + pad], np.float64)


def smoothed_boxes(landmarks: np.ndarray, first: int, count: int) -> np.ndarray:
    """Face boxes of frames first..first+count-1 of `landmarks` (which holds context frames
    on either side), each the mean over the centred 5-frame window of the frames that show a
    face. NaN rows where the frame itself has no face."""
    present = ~np.isnan(landmarks[:, 0, 0])
    boxes = np.full((len(landmarks), 4), np.nan)
    for i in np.flatnonzero(present):
        boxes[i] = face_box(landmarks[i])
    radius = SMOOTH_FRAMES // 2
    out = np.full((count, 4), np.nan)
    for k in range(count):
        i = first + k
        if present[i]:
            window = boxes[max(0, i - radius):i + radius + 1]
            out[k] = np.nanmean(window, axis=0)
    return out


def pixel_box(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The float box rounded to pixels and clipped to the frame; None when too small."""
    height, width = shape[:2]
    x0, y0 = max(0, round(float(box[0]))), max(0, round(float(box[1])))
    x1, y1 = min(width, round(float(box[2]))), min(height, round(float(box[3])))
    if x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        return None
    return x0, y0, x1, y1


def paste_mask(points: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Where the generated face replaces the frame inside `box`: the lower face (below the
    nose tip, a little past the chin), feathered, fading to 0 at the box's edges."""
    _, y0, _, y1 = box
    mouth = float(np.linalg.norm(points[MOUTH_RIGHT] - points[MOUTH_LEFT]))
    pad = max(CHIN_PAD, CHIN_PAD_SHARE * (y1 - y0))
    mask = lower_face_mask(points, box, extend_down=0.5 * pad, feather=max(1.0, 0.04 * mouth))
    return fade_edges(mask, max(2.0, 0.4 * pad))


def face_input(crops: np.ndarray) -> np.ndarray:
    """(n, 96, 96, 3) RGB uint8 crops → Wav2Lip's (n, 6, 96, 96) face input: BGR / 255, the
    first three channels with their lower half zeroed, the last three the reference."""
    face = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    masked = face.copy()
    masked[:, :, FACE_SIZE // 2:] = 0.0
    return np.concatenate([masked, face], axis=1)


def face_output(pred: np.ndarray) -> np.ndarray:
    """The model's (n, 3, 96, 96) BGR output in 0..1 → (n, 96, 96, 3) RGB uint8."""
    rgb = pred[:, ::-1].transpose(0, 2, 3, 1) * 255.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


class Wav2LipBackend(LipSyncBackend):
    name = "wav2lip"
    model_spec: ClassVar[ModelSpec] = WAV2LIP
    needs_mel = True
    context_frames = SMOOTH_FRAMES // 2

    def __init__(self, model: OnnxModel):
        self.model: OnnxModel | None = model

    @classmethod
    def from_settings(cls, settings: Settings) -> Wav2LipBackend:
        # Here, not at the top: the web tier imports this class to ask which model file it
        # needs, and must not load ONNX Runtime for that.
        from dhserve.runtime.onnx import load_model

        return cls(load_model(settings, cls.model_spec, "backend"))

    def animate(self, batch: FrameBatch) -> list[np.ndarray]:
        out = list(batch.frames)
        context = np.concatenate([batch.before, batch.landmarks, batch.after])
        boxes = smoothed_boxes(context, len(batch.before), len(batch))
        jobs = []
        for i in np.flatnonzero(batch.has_face):
            box = pixel_box(boxes[i], batch.frames[i].shape)
            if box is not None:
                jobs.append((int(i), box))
        if not jobs:
            return out
        crops = np.empty((len(jobs), FACE_SIZE, FACE_SIZE, 3), np.uint8)
        for j, (i, (x0, y0, x1, y1)) in enumerate(jobs):
            crops[j] = cv2.resize(batch.frames[i][y0:y1, x0:x1], (FACE_SIZE, FACE_SIZE),
                                  interpolation=cv2.INTER_AREA)
        index = [i for i, _ in jobs]
        mel = (batch.mel[index] if batch.mel is not None
               else np.zeros((len(jobs), 80, 16), np.float32))[:, None]
        if self.model is None:
            raise RuntimeError("wav2lip backend used after close()")
        faces = face_output(self.model.run({"mel": mel, "face": face_input(crops)}))
        for j, (i, (x0, y0, x1, y1)) in enumerate(jobs):
            generated = cv2.resize(faces[j], (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            mask = paste_mask(batch.landmarks[i], (x0, y0, x1, y1))
            frame = batch.frames[i].copy()
            frame[y0:y1, x0:x1] = paste(frame[y0:y1, x0:x1], generated, mask)
            out[i] = frame
        return out

    def close(self) -> None:
        self.model = None
