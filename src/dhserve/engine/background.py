"""The render's `background` option: keep the template's, make it transparent, or put the
person over a colour or an image, using per-frame person masks (face/segmentation.py).

It comes after lip-sync and face restoration and before the overlays, so the watermark and AI
label stay on top. The face and mouth are always opaque, whatever the segmenter said about an
open mouth: the face oval and the lower face (stretched below the chin for a dropping jaw)
from the frame's landmarks are filled into the mask.

Edges: the stored mask is scaled to the frame bilinearly (anti-aliased, no stair-steps) after a
contrast curve narrows the segmenter's soft border, so the halo stays within a few pixels. The
pixels along the edge still hold some of the template's old backdrop (a pale or tinted rim over
the new background, or in an editor over an alpha output; the segmenter's mask also reaches a
pixel or two past the person): their colour is made the person's own, estimated from the
nearest pixels the mask is sure of (edge_colours), before they are blended. Where to look and
the colours found there (the edge cells, edge_rows) depend on the template frame only: they
are computed with its masks and cached beside them, so a warm render only does the per-pixel
step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dhserve.config import KEEP, TRANSPARENT
from dhserve.engine.blend import FaceFrame, lower_face_polygon
from dhserve.engine.face.landmarks import FACE_OVAL
from dhserve.engine.face.segmentation import EDGE_ROW, edge_cell_index, edge_grid
from dhserve.engine.overlay import UnusableImage, read_image
from dhserve.errors import OptionsInvalid

COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
# The mask's contrast curve: below EDGE_LOW is background, above EDGE_HIGH person.
EDGE_LOW, EDGE_HIGH = 0.3, 0.7
FACE_SHRINK = 0.94        # the face polygon, pulled towards its centre: its edge stays inside
JAW_DROP = 0.35           # the lower face stretched this many mouth widths below the chin
_ramp = np.clip((np.arange(256) / 255.0 - EDGE_LOW) / (EDGE_HIGH - EDGE_LOW), 0, 1)
EDGE_LUT = np.round(255 * _ramp * _ramp * (3 - 2 * _ramp)).astype(np.uint8)   # smoothstep
# Edge colours (edge_colours): person and backdrop colours are looked up near a pixel (a box
# on a grid of half the mask's resolution: +-4 mask pixels, 10 frame pixels at 720p), and with
# a small weight further (+-8, 20 px) where none are that near: near, so that a thin part of
# the person (a collar, a helmet's rim) is not taken for a mix of backdrop and what is beyond
EDGE_REACH = ((5, 5), (9, 9))
EDGE_FAR_WEIGHT = 0.1
EDGE_INNER = 2            # mask pixels: the segmenter's "sure" often reaches this far too far
EDGE_COLOUR_FLOOR = 64.0  # squared colour distance under which person and backdrop are alike
EDGE_PERSON = 0.9         # a pixel at least this much person colour (t) is left as it is
EDGE_ACTIVE = 0.9         # grid cells whose mean colour is less person than this get cleaned


def background_problem(value: object) -> str | None:
    """Why `value` cannot be a background (by its form only; check_background reads an image
    file), or None."""
    if not isinstance(value, str) or not value:
        return f"must be keep, transparent, a #rrggbb colour or an image file; got {value!r}"
    if value.startswith("#") and not COLOUR.fullmatch(value):
        return f"unknown colour {value!r}: write it as #rrggbb, like #00b140"
    return None


def check_background(value: str) -> np.ndarray | None:
    """The background can be used: its form, and an image file that exists and decodes;
    OptionsInvalid naming `background` otherwise. Returns an image background's pixels
    (decoding it is the real check; the render uses them: Compositor.create), else None."""
    problem = background_problem(value)
    if problem:
        raise OptionsInvalid("background", problem)
    if value in (KEEP, TRANSPARENT) or value.startswith("#"):
        return None
    return load_image(Path(value))


def load_image(path: Path) -> np.ndarray:
    """An image background's pixels, RGB; OptionsInvalid naming `background` if unusable."""
    name = path.name or str(path)
    if not path.exists():
        raise OptionsInvalid("background", f"{name}: not keep, transparent or a #rrggbb "
                             "colour, and no such image file")
    try:
        image = read_image(path, cv2.IMREAD_COLOR)
    except UnusableImage as problem:
        raise OptionsInvalid("background", f"{name}: {problem}") from None
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
    return _alpha(cv2.LUT(mask, EDGE_LUT), _fixed_polygon(points), width, height)


def _fixed_polygon(points: np.ndarray | None) -> np.ndarray | None:
    """face_polygon in OpenCV's fixed point (2 fractional bits), None without a face."""
    if points is None or np.isnan(points[0, 0]):
        return None
    return np.round(face_polygon(points) * 4).astype(np.int32)


def _alpha(soft: np.ndarray, polygon: np.ndarray | None, width: int,
           height: int) -> np.ndarray:
    """frame_alpha from the mask after its contrast curve (`soft`)."""
    alpha = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
    if polygon is not None:
        cv2.fillConvexPoly(alpha, polygon, (255,), cv2.LINE_AA, shift=2)
    return alpha


def edge_rows(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The edge cells of a template frame with its stored `mask`, as rows of EDGE_ROW bytes
    (B and F rounded, the cell's flat index as uint16 little-endian; see _edge_cells): what
    edge_colours needs of the frame beyond its pixels. The template's backdrop is what they
    describe, so they are computed once, with the masks (cached beside them). The rounding
    moves a cleaned colour by 0.2 of a level on average, at most 2 (the example template)."""
    return _edge_rows(frame, cv2.LUT(mask, EDGE_LUT))


def _edge_rows(frame: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """edge_rows from the mask after its contrast curve (`soft`)."""
    grid = edge_grid(*soft.shape[:2])
    inner = cv2.erode(soft, np.ones((2 * EDGE_INNER + 1,) * 2, np.uint8))
    outer = cv2.dilate(soft, np.ones((3, 3), np.uint8))
    table, cells = _edge_cells(frame, *(cv2.resize(m, grid, interpolation=cv2.INTER_AREA)
                                        for m in (inner, outer)))
    rows = np.empty((cells.size, EDGE_ROW), np.uint8)
    behind = table[:, :3]
    rows[:, :3] = np.clip(behind + 0.5, 0, 255)                    # means of pixels: 0..255
    rows[:, 3:6] = np.clip(behind + table[:, 3:6] + 0.5, 0, 255)
    rows[:, 6:] = cells.astype("<u2").view(np.uint8).reshape(-1, 2)  # < 256 * 256 cells
    return rows


def _cell_table(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """edge_rows' rows as _edge_cells gives them: (B, F - B, 1 / (|F - B|^2 + floor)) float32
    and the cells' flat indices."""
    behind = rows[:, :3].astype(np.float32)
    towards = rows[:, 3:6].astype(np.float32) - behind
    cells = edge_cell_index(rows)
    return np.column_stack((behind, towards, 1 / (np.einsum("ij,ij->i", towards, towards)
                                                  + EDGE_COLOUR_FLOOR))), cells


def edge_colours(frame: np.ndarray, soft: np.ndarray, alpha: np.ndarray,
                 polygon: np.ndarray | None, clear_too: bool = False,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pixels along the person's edge whose colour holds some of the template's old
    backdrop, as flat indices into `frame`'s pixels, with their colours cleaned of it (float
    RGB); partly transparent ones only, or with `clear_too` the clear ones next to the person
    as well (an alpha output shares their chroma).

    The person's colour F and the backdrop's B are local means of the pixels the mask is sure
    of (`soft`, after the contrast curve: 255 with all neighbours within EDGE_INNER, or 0 with
    all next ones; the segmenter's "sure" often reaches a pixel or two past the person), on a
    grid of half the mask's resolution (its cells: about 5 x 5 pixels at 720p). A pixel I
    is read as a mix t F + (1 - t) B (t: its projection on the line B -> F) and becomes
    I + (1 - t)(F - B), eased to I as t nears EDGE_PERSON: backdrop turns into F, the person
    keeps its detail. Cost: only the unsure cells whose mean colour leans towards the backdrop
    are computed at full resolution (about 2 % of a 720p frame); the face `polygon` never is.
    `rows`: the frame's edge cells (edge_rows) as stored with the template's masks; without
    them they are computed from `frame`, as edge_rows would.
    """
    height, width = alpha.shape
    grid = edge_grid(*soft.shape[:2])
    if rows is None:
        rows = _edge_rows(frame, soft)
    table, cells = _cell_table(rows)
    ys, xs, owners = _cell_pixels(cells, grid, width, height)
    flat = ys * width + xs
    keep = alpha.reshape(-1).take(flat) > 0 if not clear_too else np.ones(flat.size, bool)
    if polygon is not None:
        keep &= ~_inside(polygon, ys, xs)
    flat, owners = flat[keep], owners[keep]
    colours = np.take(frame.reshape(-1, 3), flat, axis=0).astype(np.float32)
    colours += _towards_person(colours, np.take(table, owners, axis=0))
    return flat, np.clip(colours, 0, 255, out=colours)     # blended after: in range first


def _inside(polygon: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Whether pixels (ys, xs) lie in `polygon` (fixed point, 2 bits), drawn over its
    bounding box only."""
    left, top, box_w, box_h = cv2.boundingRect(polygon >> 2)
    box = np.zeros((box_h + 2, box_w + 2), np.uint8)
    cv2.fillConvexPoly(box, polygon - np.array([left, top], np.int32) * 4, (1,), cv2.LINE_8,
                       shift=2)
    inside = (ys >= top) & (ys < top + box_h + 2) & (xs >= left) & (xs < left + box_w + 2)
    inside[inside] = box[ys[inside] - top, xs[inside] - left] == 1
    return inside


def _cell_pixels(cells: np.ndarray, grid: tuple[int, int], width: int,
                 height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame pixels (ys, xs) of the `grid` cells `cells` (as a nearest-neighbour resize
    maps them), with each pixel's index into `cells`."""
    spans = []
    for index, cells_across, size in ((cells % grid[0], grid[0], width),
                                      (cells // grid[0], grid[1], height)):
        start = (index * size + cells_across - 1) // cells_across
        spans.append((start, (index * size + size + cells_across - 1) // cells_across - start))
    (x0, wide), (y0, tall) = spans
    count = wide * tall
    owner = np.repeat(np.arange(cells.size), count)
    step = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    return y0[owner] + step // wide[owner], x0[owner] + step % wide[owner], owner


def _cell_means(frame: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """`frame` scaled down to `grid`, each cell about the mean of its pixels (a thin fringe
    counts): area-averaged by a whole factor first (OpenCV's fast path), then bilinear."""
    factor = max(1, frame.shape[1] // (2 * grid[0]))
    if factor > 1:
        frame = cv2.resize(frame, (frame.shape[1] // factor, frame.shape[0] // factor),
                           interpolation=cv2.INTER_AREA)
    return cv2.resize(frame, grid, interpolation=cv2.INTER_LINEAR)


def _towards_person(colours: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """What moves `colours` (n, 3) to the person's colour, with their rows (B, F - B,
    1 / (|F - B|^2 + floor)): (1 - t)(F - B) for a mix t F + (1 - t) B, easing to nothing as
    t nears EDGE_PERSON (a pixel that much person is the person's own texture, kept as it
    is; without the easing, the cells' steps show in it)."""
    behind, towards = lookup[:, :3], lookup[:, 3:6]
    share = np.einsum("ij,ij->i", colours - behind, towards) * lookup[:, 6]
    return np.clip(1 - share / EDGE_PERSON, 0, 1)[:, None] * towards


def _edge_cells(frame: np.ndarray, inner: np.ndarray,
                outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a grid to clean, as flat indices, each with a row (B, F - B, 1 / (|F - B|^2
    + floor)) for its pixels; `inner` and `outer`: the eroded and dilated mask at the grid's
    size (255 in `inner`: sure person, 0 in `outer`: sure backdrop)."""
    grid = inner.shape[1], inner.shape[0]
    person, backdrop = inner == 255, outer == 0
    edge = cv2.findNonZero((~(person | backdrop)).view(np.uint8))
    if edge is None:
        return np.zeros((0, 7), np.float32), np.zeros(0, np.int64)
    where = edge[:, 0, 1].astype(np.int64) * grid[0] + edge[:, 0, 0]
    small = cv2.cvtColor(_cell_means(frame, grid), cv2.COLOR_RGB2RGBA)   # alpha: the weight
    means = []
    for sure in (person, backdrop):
        only = cv2.copyTo(small, sure.view(np.uint8))
        near, far = (cv2.boxFilter(only, cv2.CV_32F, reach, normalize=False
                                   ).reshape(-1, 4).take(where, axis=0) for reach in EDGE_REACH)
        sums = near + EDGE_FAR_WEIGHT * far     # the near colours first, smoothly
        weight = sums[:, 3:] / 255
        means.append((sums[:, :3] / np.maximum(weight, 1e-3), weight[:, 0] > 1e-3))
    (own, own_found), (behind, behind_found) = means
    towards = (own - behind) * (own_found & behind_found)[:, None]
    table = np.column_stack((behind, towards, 1 / (np.einsum("ij,ij->i", towards, towards)
                                                   + EDGE_COLOUR_FLOOR)))
    # the cells whose mean colour leans towards the backdrop (a thin rim in a cell counts):
    # clean their pixels
    mean = np.take(small.reshape(-1, 4)[:, :3], where, axis=0).astype(np.float32)
    active = np.einsum("ij,ij->i", mean - behind, towards) * table[:, 6] < EDGE_ACTIVE
    active &= towards.any(axis=1)
    return table[active], where[active]


@dataclass
class Compositor:
    """Puts the person of each output frame over the render's background."""

    image: np.ndarray | None = None     # (height, width, 3) RGB; None for transparent

    @classmethod
    def create(cls, background: str, width: int, height: int,
               decoded: np.ndarray | None = None) -> Compositor:
        """`decoded`: an image background's pixels when the caller has them already
        (check_background), else the file is read here."""
        problem = background_problem(background)     # a bad file: load_image below refuses it
        if problem:
            raise OptionsInvalid("background", problem)
        if background == TRANSPARENT:
            return cls()
        if background.startswith("#"):
            rgb = [int(background[i:i + 2], 16) for i in (1, 3, 5)]
            return cls(np.full((height, width, 3), rgb, np.uint8))
        image = decoded if decoded is not None else load_image(Path(background))
        return cls(cover(image, width, height))

    def apply(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray] | np.ndarray,
              landmarks: np.ndarray, edges: Sequence[np.ndarray] | None = None
              ) -> list[np.ndarray]:
        """Frames composited (RGB), or RGBA with the person's alpha for a transparent one;
        `edges`: their template frames' edge cells (edge_rows), computed here without them.
        Two frames at a time: OpenCV and NumPy let go of the GIL, and the render's own thread
        is what a background adds to (the encoder's threads have room beside it)."""
        return list(_POOL.map(self._one, frames, masks, landmarks,
                              edges if edges is not None else [None] * len(frames)))

    def _one(self, frame: np.ndarray, mask: np.ndarray, points: np.ndarray,
             rows: np.ndarray | None) -> np.ndarray:
        height, width = frame.shape[:2]
        soft, polygon = cv2.LUT(mask, EDGE_LUT), _fixed_polygon(points)
        alpha = _alpha(soft, polygon, width, height)
        flat, colours = edge_colours(frame, soft, alpha, polygon, self.image is None, rows)
        if self.image is None:
            composite = cv2.cvtColor(frame, cv2.COLOR_RGB2RGBA)
            composite[..., 3] = alpha
        else:
            # uint8 products (OpenCV's saturating SIMD): half the time of float weights
            behind = self.image[:height, :width]
            alpha3 = cv2.merge([alpha, alpha, alpha])
            composite = cv2.add(cv2.multiply(frame, alpha3, scale=1 / 255),
                                cv2.multiply(behind, cv2.bitwise_not(alpha3), scale=1 / 255))
            weight = alpha.reshape(-1).take(flat)[:, None] / np.float32(255)
            colours = colours * weight + np.take(behind.reshape(-1, 3), flat,
                                                 axis=0) * (1 - weight)
        _put_rgb(composite, flat, colours)
        return composite


_POOL = ThreadPoolExecutor(2, thread_name_prefix="dhserve-composite")


def _put_rgb(image: np.ndarray, flat: np.ndarray, colours: np.ndarray) -> None:
    """Writes float `colours` (rounded) into the RGB of `image`'s pixels `flat`, in place."""
    index = (flat[:, None] * image.shape[2] + np.arange(3)).ravel()
    image.reshape(-1)[index] = np.clip(colours + 0.5, 0, 255).astype(np.uint8).ravel()


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

