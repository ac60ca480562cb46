"""Blending generated mouth regions into template frames with a feathered lower-face mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dhserve.engine.face.landmarks import CHIN, FACE_OVAL, MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP


@dataclass(frozen=True)
class FaceFrame:
    """A face's own axes in the image: along the mouth (x) and down towards the chin (y)."""

    origin: np.ndarray   # mouth centre, pixels
    ex: np.ndarray       # unit vector, left mouth corner → right corner
    ey: np.ndarray       # unit vector, perpendicular to ex, pointing to the chin
    mouth_width: float

    @classmethod
    def from_landmarks(cls, points: np.ndarray) -> FaceFrame:
        left, right = points[MOUTH_LEFT].astype(np.float64), points[MOUTH_RIGHT].astype(np.float64)
        width = float(np.linalg.norm(right - left))
        ex = (right - left) / max(width, 1e-6)
        ey = np.array([-ex[1], ex[0]])
        origin = (left + right) / 2
        if np.dot(points[CHIN] - origin, ey) < 0:
            ey = -ey
        return cls(origin, ex, ey, max(width, 1.0))

    def to_face(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(xy, dtype=np.float64) - self.origin
        return d @ self.ex, d @ self.ey

    def to_face_grid(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face coordinates of pixel grids, in float32 (the hot path of per-frame warps)."""
        dx = xs - np.float32(self.origin[0])
        dy = ys - np.float32(self.origin[1])
        ex, ey = self.ex.astype(np.float32), self.ey.astype(np.float32)
        return dx * ex[0] + dy * ex[1], dx * ey[0] + dy * ey[1]

    def to_image(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.origin + np.multiply.outer(u, self.ex) + np.multiply.outer(v, self.ey)


def lower_face_polygon(points: np.ndarray, extend_down: float,
                       face: FaceFrame | None = None) -> np.ndarray:
    """Convex outline of the face below the nose tip, stretched `extend_down` px past the chin
    so that a jaw that drops stays inside it."""
    face = face or FaceFrame.from_landmarks(points)
    oval = points[list(FACE_OVAL)].astype(np.float64)
    _, v = face.to_face(oval)
    _, v_nose = face.to_face(points[NOSE_TIP])
    lower = oval[v >= v_nose]
    hull = np.concatenate([lower, lower + extend_down * face.ey])
    return cv2.convexHull(hull.astype(np.float32)).reshape(-1, 2)


def lower_face_mask(points: np.ndarray, box: tuple[int, int, int, int], extend_down: float,
                    feather: float, face: FaceFrame | None = None) -> np.ndarray:
    """Float mask (h, w) over `box` (x0, y0, x1, y1): 1 on the lower face, feathered edges.
    `face`: the face's axes when the caller has them already."""
    x0, y0, x1, y1 = box
    polygon = lower_face_polygon(points, extend_down, face) - (x0, y0)
    mask: np.ndarray = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillConvexPoly(mask, np.round(polygon * 4).astype(np.int32), (1.0,), cv2.LINE_AA,
                       shift=2)
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask


def match_colour(patch: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shifts the patch's mean colour under the mask to the reference's (generators drift)."""
    weights = mask[..., None].astype(np.float32)
    total = float(weights.sum())
    if total < 1.0:
        return patch
    shift = ((reference.astype(np.float32) - patch.astype(np.float32)) * weights).sum((0, 1))
    return np.clip(patch.astype(np.float32) + shift / total, 0, 255).astype(np.uint8)


def paste(base: np.ndarray, patch: np.ndarray, mask: np.ndarray,
          keep_colour: bool = False) -> np.ndarray:
    """base·(1−mask) + patch·mask, optionally colour-matched to base first."""
    if keep_colour:
        patch = match_colour(patch, base, mask)
    mask = mask.astype(np.float32, copy=False)
    return cv2.blendLinear(patch, base, mask, 1.0 - mask)


def fade_edges(mask: np.ndarray, margin: float) -> np.ndarray:
    """The mask tapered linearly to 0 over `margin` px at its borders: a patch pasted with it
    meets the untouched frame without a seam, wherever the feathered shape was cut off."""
    if margin <= 0:
        return mask
    h, w = mask.shape
    ramp_y = np.clip(np.minimum(np.arange(h) + 0.5, h - 0.5 - np.arange(h)) / margin, 0, 1)
    ramp_x = np.clip(np.minimum(np.arange(w) + 0.5, w - 0.5 - np.arange(w)) / margin, 0, 1)
    return (mask * ramp_y[:, None].astype(np.float32) * ramp_x[None, :].astype(np.float32))
