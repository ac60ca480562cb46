"""The render's `background` option: keep the template's, make it transparent, or put the
person over a colour or an image, using per-frame person masks (face/segmentation.py).

It comes after lip-sync and face restoration and before the overlays, so the watermark and AI
label stay on top. The face and mouth are always opaque, whatever the segmenter said about an
open mouth: the face oval and the lower face (stretched below the chin for a dropping jaw)
from the frame's landmarks are filled into the mask.

Edges: the stored mask is scaled to the frame bilinearly (anti-aliased, no stair-steps) after a
contrast curve narrows the segmenter's soft border, so the halo stays within a few pixels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dhserve.engine.blend import FaceFrame, lower_face_polygon
from dhserve.engine.face.landmarks import FACE_OVAL
from dhserve.errors import OptionsInvalid

KEEP, TRANSPARENT = "keep", "transparent"
COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# The mask's contrast curve: below EDGE_LOW is background, above EDGE_HIGH person.
EDGE_LOW, EDGE_HIGH = 0.3, 0.7
FACE_SHRINK = 0.94        # the face polygon, pulled towards its centre: its edge stays inside
JAW_DROP = 0.35           # the lower face stretched this many mouth widths below the chin
_ramp = np.clip((np.arange(256) / 255.0 - EDGE_LOW) / (EDGE_HIGH - EDGE_LOW), 0, 1)
EDGE_LUT = np.round(255 * _ramp * _ramp * (3 - 2 * _ramp)).astype(np.uint8)   # smoothstep


def background_problem(value: object) -> str | None:
    """Why `value` cannot be a background (by its form only; check_background reads an image
    file), or None."""
    if not isinstance(value, str) or not value:
        return f"must be keep, transparent, a #rrggbb colour or an image file; got {value!r}"
    if value.startswith("#") and not COLOUR.fullmatch(value):
        return f"unknown colour {value!r}: write it as #rrggbb, like #00b140"
    return None


def check_background(value: str) -> None:
    """The background can be used: its form, and an image file that exists and decodes;
    OptionsInvalid naming `background` otherwise. Reads the image header only."""
    problem = background_problem(value)
    if problem:
        raise OptionsInvalid("background", problem)
    if value in (KEEP, TRANSPARENT) or value.startswith("#"):
        return
    load_image(Path(value))     # small next to a render; decoding it all is the real check


def load_image(path: Path) -> np.ndarray:
    """An image background's pixels, RGB; OptionsInvalid naming `background` if unusable."""
    name = path.name or str(path)
    if not path.exists():
        raise OptionsInvalid("background", f"{name}: not keep, transparent or a #rrggbb "
                             "colour, and no such image file")
    if path.is_dir():
        raise OptionsInvalid("background", f"{name}: is a directory, not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptionsInvalid("background", f"{name}: cannot read: {exc.strerror}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None or image.size == 0:
        raise OptionsInvalid("background", f"{name}: not an image that can be decoded "
                             "(PNG, JPEG, WebP, ...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to cover width x height, centred, the overflow cut off."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    area = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, size, interpolation=area)
    x0, y0 = (size[0] - width) // 2, (size[1] - height) // 2
    return np.ascontiguousarray(scaled[y0:y0 + height, x0:x0 + width])


def face_polygon(points: np.ndarray) -> np.ndarray:
    """The always-opaque region: face oval and lower face (with room for the jaw to drop),
    pulled slightly inwards so its edge never reaches past the face's own."""
    face = FaceFrame.from_landmarks(points)
    oval = points[list(FACE_OVAL)].astype(np.float32)
    lower = lower_face_polygon(points, JAW_DROP * face.mouth_width, face).astype(np.float32)
    hull = cv2.convexHull(np.concatenate([oval, lower])).reshape(-1, 2)
    centre = oval.mean(axis=0)
    return centre + (hull - centre) * FACE_SHRINK


def frame_alpha(mask: np.ndarray, points: np.ndarray | None, width: int,
                height: int) -> np.ndarray:
    """The output's alpha (height, width) uint8 from a stored mask and the frame's landmarks."""
    alpha = cv2.resize(cv2.LUT(mask, EDGE_LUT), (width, height),
                       interpolation=cv2.INTER_LINEAR)
    if points is not None and not np.isnan(points[0, 0]):
        polygon = np.round(face_polygon(points) * 4).astype(np.int32)
        cv2.fillConvexPoly(alpha, polygon, (255,), cv2.LINE_AA, shift=2)
    return alpha


@dataclass
class Compositor:
    """Puts the person of each output frame over the render's background."""

    background: str
    width: int
    height: int
    image: np.ndarray | None = None     # (height, width, 3) RGB; None for transparent

    @classmethod
    def create(cls, background: str, width: int, height: int) -> Compositor:
        problem = background_problem(background)     # a bad file: load_image below refuses it
        if problem:
            raise OptionsInvalid("background", problem)
        if background == TRANSPARENT:
            return cls(background, width, height)
        if background.startswith("#"):
            rgb = [int(background[i:i + 2], 16) for i in (1, 3, 5)]
            return cls(background, width, height, np.full((height, width, 3), rgb, np.uint8))
        return cls(background, width, height, cover(load_image(Path(background)), width,
                                                    height))

    @property
    def alpha_output(self) -> bool:
        return self.image is None

    def apply(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray] | np.ndarray,
              landmarks: np.ndarray) -> list[np.ndarray]:
        """Frames composited (RGB), or RGBA with the person's alpha for a transparent one."""
        out = []
        for frame, mask, points in zip(frames, masks, landmarks, strict=True):
            height, width = frame.shape[:2]
            alpha = frame_alpha(mask, points, width, height)
            if self.image is None:
                rgba = cv2.cvtColor(frame, cv2.COLOR_RGB2RGBA)
                rgba[..., 3] = alpha
                out.append(rgba)
                continue
            # uint8 products (OpenCV's saturating SIMD): half the time of float weights
            alpha3 = cv2.merge([alpha, alpha, alpha])
            person = cv2.multiply(frame, alpha3, scale=1 / 255)
            behind = cv2.multiply(self.image[:height, :width], cv2.bitwise_not(alpha3),
                                  scale=1 / 255)
            out.append(cv2.add(person, behind))
        return out


def apply_over(overlay: Callable[[list[np.ndarray]], list[np.ndarray]],
               frames: list[np.ndarray]) -> list[np.ndarray]:
    """Runs an RGB-only step (the overlays) over RGBA frames, keeping their alpha, which the
    overlay's own pixels make opaque where it is drawn."""
    if not frames or frames[0].shape[2] == 3:
        return overlay(frames)
    drawn = overlay([np.ascontiguousarray(f[..., :3]) for f in frames])
    result = []
    for rgba, rgb in zip(frames, drawn, strict=True):
        changed = np.any(rgb != rgba[..., :3], axis=2)
        merged = np.dstack([rgb, np.where(changed, 255, rgba[..., 3]).astype(np.uint8)])
        result.append(merged)
    return result

