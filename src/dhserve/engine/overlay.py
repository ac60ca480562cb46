"""Images drawn over every output frame: the operator's watermark and the "AI-generated" label.

HeyGem's `watermark_switch` and `digital_auth` ask for them; the images themselves are the
operator's (a setting each), never the job's. An image is decoded once per render, scaled down
to fit a corner of the frame, and blended into that corner's rectangle only, so a frame costs
one copy plus a blend of at most 4 % of its pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from dhserve.config import ENV_PREFIX, Settings
from dhserve.errors import OverlayInvalid, OverlayNotConfigured

MAX_SHARE = 0.20     # an overlay covers at most this share of the frame's width and height
MARGIN_SHARE = 0.02  # gap to the frame's edges, as a share of its shorter side
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class OverlayKind:
    """One kind of overlay: the render option that asks for it, the setting naming its image,
    and the corner it is drawn in."""

    option: str
    setting: str
    corner: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.setting.upper()


WATERMARK = OverlayKind("watermark", "watermark_image", "bottom-right")
AI_LABEL = OverlayKind("ai_label", "ai_label_image", "top-left")
OVERLAY_KINDS = (WATERMARK, AI_LABEL)


def overlay_path(settings: Settings, kind: OverlayKind) -> Path:
    """The configured image for `kind`; InputError overlay.not_configured when there is none,
    so a job asking for it is refused rather than rendered without it."""
    path = getattr(settings, kind.setting)
    if path is None or str(path) == "":
        raise OverlayNotConfigured(kind.option, f"needs an image; set {kind.env}")
    return Path(path)


class UnusableImage(Exception):
    """Why a file cannot serve as an image (an overlay, a background); turned into an
    InputError naming the field."""


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The file's pixels as cv2 reads them with `flags` (by default BGR/BGRA/gray, any
    depth); UnusableImage saying why if none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnusableImage("file not found") from None
    except IsADirectoryError:
        raise UnusableImage("is a directory, not an image") from None
    except OSError as exc:
        raise UnusableImage(f"cannot read: {exc.strerror or exc}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None or image.size == 0:
        raise UnusableImage("not an image that can be decoded (PNG, JPEG, WebP, ...)")
    if image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4):
        raise UnusableImage(f"unsupported image with {image.shape[2]} channels")
    return image


def _invalid(path: Path, field: str, reason: str | UnusableImage) -> OverlayInvalid:
    """OverlayInvalid naming the file by its name and its setting, not by its place on the
    server: the message reaches API answers (watermark.png (DHSERVE_WATERMARK_IMAGE): ...)."""
    kind = next((k for k in OVERLAY_KINDS if k.option == field), None)
    shown = f"{path.name} ({kind.env})" if kind is not None else path.name
    return OverlayInvalid(field, f"{shown}: {reason}")


@lru_cache(maxsize=16)
def _problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why the file is not a usable overlay, or None; keyed by its stat, so submits decode
    a given file once, and again only after it changed."""
    try:
        read_image(Path(path))
    except UnusableImage as problem:
        return str(problem)
    return None


def check_overlay_file(path: Path, field: str) -> None:
    """The file can be used as an overlay (exists, is readable, decodes); InputError
    overlay.invalid naming the file, its setting and the reason otherwise. Cheap enough for
    every submit: the verdict is cached per file version."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _invalid(path, field, "file not found") from None
    except OSError as exc:
        raise _invalid(path, field, f"cannot read: {exc.strerror or exc}") from None
    problem = _problem(str(path), st.st_mtime_ns, st.st_size)
    if problem:
        raise _invalid(path, field, problem)


@dataclass(frozen=True)
class OverlayImage:
    """A decoded overlay, not yet fitted to a frame: RGB premultiplied by alpha (0..255) and
    alpha (0..1), both float32. Premultiplied so scaling it down leaves no dark fringes."""

    rgb: np.ndarray      # HxWx3
    alpha: np.ndarray    # HxWx1

    @classmethod
    def read(cls, path: Path, field: str) -> OverlayImage:
        """The image at `path`; no alpha channel means opaque. InputError overlay.invalid
        when it cannot be read or decoded."""
        try:
            image = read_image(Path(path))
        except UnusableImage as problem:
            raise _invalid(Path(path), field, problem) from None
        scale = 1.0 / np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
        pixels = image.astype(np.float32) * np.float32(scale)     # 0..1
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        channels = pixels.shape[2]
        if channels in (1, 2):                                     # gray, gray + alpha
            colour = np.repeat(pixels[..., :1], 3, axis=2)
        else:
            colour = pixels[..., 2::-1]                            # BGR -> RGB
        alpha = (np.clip(pixels[..., 3:4] if channels == 4 else
                         pixels[..., 1:2] if channels == 2 else
                         np.ones_like(pixels[..., :1]), 0, 1))
        rgb = np.clip(colour, 0, 1) * alpha * np.float32(255)
        return cls(np.ascontiguousarray(rgb, np.float32), np.ascontiguousarray(alpha, np.float32))

    def place(self, width: int, height: int, corner: str) -> Overlay:
        """This image fitted to a `width` x `height` frame: scaled down (never up) to at most
        20 % of each dimension, `corner` of the frame, 2 % of its shorter side from the edges."""
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {', '.join(CORNERS)}; got {corner!r}")
        h, w = self.alpha.shape[:2]
        scale = min(1.0, MAX_SHARE * width / w, MAX_SHARE * height / h)
        rgb, alpha = self.rgb, self.alpha
        if scale < 1.0:
            size = (max(1, int(w * scale)), max(1, int(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)[..., None]
            w, h = size
        margin = round(MARGIN_SHARE * min(width, height))
        x = margin if corner.endswith("left") else width - margin - w
        y = margin if corner.startswith("top") else height - margin - h
        return Overlay(np.ascontiguousarray(rgb, np.float32),
                       np.ascontiguousarray(1.0 - alpha, np.float32), max(x, 0), max(y, 0))


@dataclass(frozen=True)
class Overlay:
    """An overlay fitted to one frame size, ready to blend: out = frame * keep + rgb over the
    rectangle at (x, y)."""

    rgb: np.ndarray      # hxwx3, premultiplied, 0..255
    keep: np.ndarray     # hxwx1, 1 - alpha
    x: int
    y: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the rectangle it covers."""
        h, w = self.keep.shape[:2]
        return self.x, self.y, self.x + w, self.y + h

    def draw(self, frame: np.ndarray) -> None:
        """Blends the overlay into `frame` (HxWx3 RGB uint8) in place."""
        x0, y0, x1, y1 = self.box
        region = frame[y0:y1, x0:x1]
        h, w = region.shape[:2]       # clipped, should a frame be smaller than planned
        blended = region * self.keep[:h, :w] + self.rgb[:h, :w]
        np.clip(blended + 0.5, 0, 255, out=blended)
        region[...] = blended.astype(np.uint8)

    def apply(self, frames: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Copies of `frames` with the overlay drawn; the inputs are left as they are."""
        return apply_overlays([self], frames)


def apply_overlays(overlays: Sequence[Overlay], frames: Iterable[np.ndarray]
                   ) -> list[np.ndarray]:
    """Copies of `frames` with every overlay drawn. Copies, because a frame may be shared
    (a looped template frame the lip-sync left as it was) and must not carry the overlay
    into its next use."""
    out = []
    for frame in frames:
        frame = frame.copy()
        for overlay in overlays:
            overlay.draw(frame)
        out.append(frame)
    return out
