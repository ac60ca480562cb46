"""`classic`: mouth animation without weights, driven by the speech's loudness.

The jaw and lower lip move down along the face's own axis by an amount that follows the
per-frame mouth openness. The upper face never moves. Below the lip seam a smooth displacement
field carries the lower lip, chin and jaw down (fading out towards the cheeks and below the
chin); the gap that opens between the lips is shaded as the inside of a mouth. The mouth's
shape from the spectrum (engine/visemes.py) moves the corners along the mouth: out for a
spread i/e, in for a rounded u/o (the whole lips with their corners, the cheeks taking up the
motion, nothing above the nose tip), and presses the lips shut for m/b/p: on a template whose
lips are parted (a smile showing its teeth) both lips' inner edges are pulled to the seam,
their own tissue stretched over the teeth. Everything is sampled with one `cv2.remap` over a
small box around the lower face (plus the few pixels a pressed seam crosses), and blended in
with the feathered lower-face mask, so there is no visible rectangle.
"""

from __future__ import annotations

import cv2
import numpy as np

from dhserve.engine.blend import FaceFrame, lower_face_mask, paste
from dhserve.engine.face.landmarks import (CHIN, FACE_OVAL, LOWER_INNER_LIP, NOSE_TIP,
                                          UPPER_INNER_LIP)
from dhserve.engine.lipsync.base import FrameBatch, LipSyncBackend
from dhserve.engine.visemes import MouthShapes, ShapeTracker

MAX_OPENING = 0.30        # widest gap between the lips, as a fraction of mouth width
GAP_HALF_WIDTH = 0.38     # the opening spans ±0.38 mouth widths: it closes before the corners
JAW_TRANSITION = 0.8      # mouth widths below the seam where lip motion becomes jaw motion
NECK_FADE = 0.8           # mouth widths below the chin over which the motion fades out
JAW_HALF_WIDTH = (0.55, 1.15)  # mouth widths from the centre: full motion → none
MOUTH_DARK = np.array([52, 20, 22], np.float32)     # deep inside the mouth, RGB
MOUTH_EDGE = np.array([128, 60, 58], np.float32)   # near the lips
TONGUE = np.array([150, 72, 76], np.float32)
LOWER_TEETH = np.array([196, 184, 170], np.float32)  # in shadow behind the lower lip
WIDTH_GAIN = 0.36        # corners move out (spread) by this fraction of the width, in total
ROUND_GAIN = 0.42        # and in (rounded) by this one: lips pushed forward narrow more
ROUND_HEIGHT = 0.25      # a rounded opening is this much taller ...
SPREAD_HEIGHT = 0.08     # ... and a spread one this much flatter, relative to its width
ROUND_GAP = 0.15         # a rounded opening is this much narrower than the lips around it
WIDTH_REACH = (0.6, 1.2)    # mouth widths from the centre: the corners and the skin just
                            # outside them move as one up to the first, cheeks fade to the second
EDGE_MARGIN = 0.04          # ... or to this far (mouth widths) inside the face's outline
CHEEK_ROOM = 0.35           # the cheeks take up the motion over this much (mouth widths) at least
MAX_SLOPE = (0.5, 0.8)      # a cheek is squeezed to no less than half its width (spread) and
                            # stretched to no more than 1.8x (rounded): where the face leaves
                            # less room the corners move less
LIP_BAND = (0.1, 0.6)    # mouth widths below the seam where the corner motion fades: the
                         # lower lip moves with the corners, the chin and jaw line do not
# Outer edge of the upper lip, corner to corner: above it the corner motion fades out
# towards the nose.
UPPER_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# Pressing the lips shut (m, b, p) on a template whose lips are parted: both lips' inner
# edges meet at the seam, the lips and the skin next to them stretched over the gap.
PRESS_TOP = 0.35         # the upper lip's stretch starts this far from the nose tip to the lip
PRESS_BOTTOM = 0.5       # the lower lip's ends this far from its outer edge to the chin
PRESS_MARGIN = 0.02      # (mouth widths) each lip's edge rolls in this far: no tooth edge
                         # at the seam (more hides the lower lip's own colour)
PRESS_EDGE = 0.5         # share of the stretch put on the lips' own tissue (ease-in) rather
                         # than spread evenly (smoothstep) between the anchors
PRESSING = 1e-3          # closure under this: no pressing at all (the frame as before)
SOLVER_STEPS = 3
COARSE_STEP = 4           # pixels between the samples of the smooth motion field


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class MouthWarp:
    """The displacement field of one frame, in the face's own (u, v) coordinates (pixels)."""

    def __init__(self, points: np.ndarray, openness: float, max_opening: float = MAX_OPENING,
                 width: float = 0.0, closure: float = 0.0):
        self.face = FaceFrame.from_landmarks(points)
        w = self.face.mouth_width
        self.w = w
        self.width = float(np.clip(width, -1.0, 1.0))
        # Each corner moves out (in) by this many pixels; the opening keeps its share of the
        # lips' new width, a rounded one a little less (a small round hole).
        self.corner_shift = self._gain() * self.width * 0.5 * w
        self.half_gap = (GAP_HALF_WIDTH * (1 + self._gain() * self.width)
                         * (1 + ROUND_GAP * min(self.width, 0.0)))
        self.amount = (float(openness) * max_opening * w * (1 - float(np.clip(closure, 0, 1)))
                       * self._height_factor())
        uu, vu = self.face.to_face(points[list(UPPER_INNER_LIP)])
        ul, vl = self.face.to_face(points[list(LOWER_INNER_LIP)])
        grid = np.linspace(-w / 2, w / 2, 17)
        seam = (np.interp(grid, *_sorted(uu, vu)) + np.interp(grid, *_sorted(ul, vl))) / 2
        self.seam_u, self.seam_v = grid, seam
        _, self.chin_v = self.face.to_face(points[CHIN])
        _, nose_v = self.face.to_face(points[NOSE_TIP])
        # The corner motion carries the whole upper lip and fades out between its outer edge
        # and the nose tip (the philtrum and nostrils barely move: they lie near the centre).
        self.lip_top_u, self.lip_top_v = _sorted(*self.face.to_face(points[list(UPPER_OUTER_LIP)]))
        self.top_v = min(float(nose_v), float(self.lip_top_v.min()) - 2.0)
        # The face's outline on either side (|u| at each height): the cheeks' motion has faded
        # out before it, so the silhouette never moves.
        ou, ov = self.face.to_face(points[list(FACE_OVAL)])
        self.outline = [_sorted(ov[side], np.abs(ou[side])) for side in (ou < 0, ou >= 0)]
        self.closure = float(np.clip(closure, 0, 1))
        self.upper_inner, self.lower_inner = _sorted(uu, vu), _sorted(ul, vl)
        self.lip_bottom = _sorted(*self.face.to_face(points[list(LOWER_OUTER_LIP)]))
        self.nose_v = float(nose_v)
        # Pressing only where there is something to press: the template's lips are parted.
        parted = np.interp(grid, *self.lower_inner) - np.interp(grid, *self.upper_inner)
        self.pressing = self.closure > PRESSING and float(parted.max()) > 1.0

    def _gain(self) -> float:
        return WIDTH_GAIN if self.width > 0 else ROUND_GAIN

    def _height_factor(self) -> float:
        """A rounded opening is taller; a spread one grows with the mouth's new width, a
        little flatter in proportion (the gap stays a like fraction of the mouth width)."""
        if self.width < 0:
            return 1 - ROUND_HEIGHT * self.width
        return (1 + self._gain() * self.width) * (1 - SPREAD_HEIGHT * self.width)

    def seam(self, u: np.ndarray) -> np.ndarray:
        """The line where the lips meet (v of the seam at each u); flat beyond the corners."""
        return np.interp(u, self.seam_u, self.seam_v)

    def gap(self, u: np.ndarray) -> np.ndarray:
        """Height of the opening at u: an ellipse across the mouth, zero at the corners."""
        r = u / (self.half_gap * self.w)
        return self.amount * np.sqrt(np.clip(1 - r * r, 0, 1))

    def columns(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the motion needs of each u, whatever the depth: lip and jaw profiles and how
        far under the seam the chin lies. The solver evaluates the motion many times per
        frame on the same grid, so these are computed once."""
        w = self.w
        lip = np.sqrt(np.clip(1 - (u / (self.half_gap * w)) ** 2, 0, 1))
        jaw = 1 - _smoothstep(JAW_HALF_WIDTH[0] * w, JAW_HALF_WIDTH[1] * w, np.abs(u))
        return lip, jaw, self.chin_v - self.seam(u)

    def displacement(self, u: np.ndarray, below: np.ndarray,
                     columns: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """How far the source point `below` px under the seam moves down (pixels)."""
        lip, jaw, chin_below = columns if columns is not None else self.columns(u)
        t = _smoothstep(0.0, JAW_TRANSITION * self.w, below)
        fade = 1 - _smoothstep(chin_below, chin_below + NECK_FADE * self.w, below)
        return np.where(below > 0, self.amount * ((1 - t) * lip + t * jaw) * fade, 0.0)

    def sideways(self, u: np.ndarray, below: np.ndarray,
                 rows: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """How far the point at (u, `below` the seam) moves along the mouth (pixels): the
        corners out for a spread mouth, in for a rounded one. The lips stretch evenly, the
        corners move with the skin just outside them (their folds and shadows stay corners,
        not streaks) and the cheeks take up the rest before the face's outline, so nothing
        creases or tears. `rows`: `rows(u, below)`, when the caller has it."""
        if abs(self.width) < 1e-3:
            return np.zeros_like(u)
        weight, start, end = self.rows(u, below) if rows is None else rows
        reach = 1 - _smoothstep(start, end, np.abs(u))
        along = np.clip(u / (0.5 * self.w), -1.0, 1.0) * reach
        return self.corner_shift * along * weight

    def rows(self, u: np.ndarray, below: np.ndarray) -> tuple[np.ndarray, ...]:
        """What the corner motion at (u, `below` the seam) needs of its height: how much of
        it the height gets (all from the upper lip's outer edge down through the lower lip,
        none by the nose or the chin) and where the cheeks take it up (from, to: |u|)."""
        w = self.w
        v = self.seam(u) + below
        up = _smoothstep(self.top_v, np.interp(u, self.lip_top_u, self.lip_top_v), v)
        weight = up * (1 - _smoothstep(LIP_BAND[0] * w, LIP_BAND[1] * w, below))
        outline = np.where(u < 0, np.interp(v, *self.outline[0]), np.interp(v, *self.outline[1]))
        end = np.clip(outline - EDGE_MARGIN * w, (0.5 + CHEEK_ROOM) * w, WIDTH_REACH[1] * w)
        start = np.minimum(WIDTH_REACH[0] * w, end - CHEEK_ROOM * w)
        # A smoothstep's steepest slope is 1.5 / its span: the cheek's squeeze (or stretch)
        # stays within MAX_SLOPE.
        slope = MAX_SLOPE[0] if self.width > 0 else MAX_SLOPE[1]
        room = slope * (end - start) / (1.5 * max(abs(self.corner_shift), 1e-6))
        return weight * np.minimum(room, 1.0), start, end

    def source_below(self, u: np.ndarray, below_out: np.ndarray,
                     gap: np.ndarray) -> np.ndarray:
        """Inverts the motion: where under the seam the pixel shown at `below_out` comes from.

        Solves v + d(v) = below_out (monotonic in v) by Newton steps with a finite-difference
        slope: 3 steps leave < 0.05 px at a wide-open mouth, where five plain fixed-point
        steps still left 1.4 px. Meaningful below the opening (below_out > gap).
        """
        columns = self.columns(u)
        below_src = below_out - gap
        for _ in range(SOLVER_STEPS):
            moved = self.displacement(u, np.maximum(below_src, 1e-3), columns)
            ahead = self.displacement(u, np.maximum(below_src + 0.5, 1e-3), columns)
            slope = np.maximum(1 + (ahead - moved) / 0.5, 0.2)
            below_src = below_src - (below_src + moved - below_out) / slope
        return below_src

    def press_top(self, u: np.ndarray) -> np.ndarray:
        """Where the upper lip's stretch starts (v): part way from the nose tip to the lip."""
        lip = np.interp(u, self.lip_top_u, self.lip_top_v)
        return self.nose_v + PRESS_TOP * (lip - self.nose_v)

    def press_region(self) -> tuple[float, float, float, float]:
        """(u from, u to, v from, v to) outside which the pressing moves nothing."""
        u = self.upper_inner[0]
        bottom_lip = float(self.lip_bottom[1].max())
        return (float(u.min()), float(u.max()), float(self.press_top(self.lip_top_u).min()),
                bottom_lip + PRESS_BOTTOM * (float(self.chin_v) - bottom_lip))

    def pressed_source(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
        """Inverts the pressing of the lips: the v in the template shown at (u, v) by the
        upper lip and by the lower lip, and how much of the pixel at (u, v) each covers
        (between them, the template itself shows).

        Each lip's inner edge moves `closure` of the way to the seam, showing the template
        from a little past its edge (rolled in: no soft tooth edge at the seam); the upper
        lip and the skin up to `press_top` stretch down, the lower lip and the skin part way
        to the chin stretch up. The map is given output -> source, monotonic (the stretch is
        bounded: a template whose mouth is wide open is pressed only part way), so no solver
        is needed. Between the moved edges (closure < 1) the template stays where it is:
        the lips slide over the teeth."""
        c = self.closure
        a, b = np.interp(u, *self.upper_inner), np.interp(u, *self.lower_inner)
        half = np.maximum(b - a, 0) / 2
        top = self.press_top(u)
        bottom_lip = np.interp(u, *self.lip_bottom)
        bottom = bottom_lip + PRESS_BOTTOM * (self.chin_v - bottom_lip)
        # The edge moves `pull` and shows the template `reach` away; both scaled so that the
        # profile's steepest slope times the reach stays under 0.8 of the span it stretches
        # over (room + pull): steepest * k * reach <= 0.8 * (room + k * pull).
        pull = c * half
        reach = pull + c * np.minimum(half, PRESS_MARGIN * self.w)
        steepest = 1.5 * (1 - PRESS_EDGE) + 2 * PRESS_EDGE
        room = np.maximum(np.minimum(a - top, bottom - b), 0)
        scale = np.minimum(1.0, 0.8 * room / np.maximum(steepest * reach - 0.8 * pull, 1e-6))
        pull, reach = pull * scale, reach * scale
        upper_edge, lower_edge = a + pull, b - pull
        t_up = np.clip((v - top) / np.maximum(upper_edge - top, 1e-3), 0, 1)
        t_low = np.clip((bottom - v) / np.maximum(bottom - lower_edge, 1e-3), 0, 1)
        upper_cover = np.clip(upper_edge - v + 0.5, 0, 1)     # of the pixel's height
        lower_cover = np.clip(v + 0.5 - lower_edge, 0, 1)
        return (v - reach * _press_profile(t_up), v + reach * _press_profile(t_low),
                upper_cover, lower_cover)

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) outside which the field is exactly zero."""
        w = self.w
        u = np.array([-1.25, 1.25, -1.25, 1.25]) * w
        top = (self.top_v if abs(self.width) >= 1e-3 else float(self.seam_v.min())) - 2
        if self.pressing:
            top = min(top, float(self.press_top(self.lip_top_u).min()) - 2)
        bottom = float(self.chin_v) + (NECK_FADE + 0.2) * w
        v = np.array([top, top, bottom, bottom])
        corners = self.face.to_image(u, v)
        x0, y0 = np.floor(corners.min(0)).astype(int)
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
        height, width = shape[:2]
        return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def _press_profile(t: np.ndarray) -> np.ndarray:
    """0 at t = 0 (the anchor) to 1 at t = 1 (the lip's inner edge), flat at the anchor."""
    return PRESS_EDGE * t * t + (1 - PRESS_EDGE) * t * t * (3 - 2 * t)


def _sorted(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(u)
    return u[order], v[order]


def animate_mouth(frame: np.ndarray, points: np.ndarray, openness: float,
                  max_opening: float = MAX_OPENING, width: float = 0.0,
                  closure: float = 0.0) -> np.ndarray:
    """The frame with the mouth opened by `openness` (0..1), spread (`width` > 0) or rounded
    (< 0) and pressed shut by `closure` (0..1); the input is not modified."""
    warp = MouthWarp(points, openness, max_opening, width, closure)
    if warp.amount < 0.25 and abs(warp.corner_shift) < 0.5 and not warp.pressing:
        return frame
    x0, y0, x1, y1 = warp.box(frame.shape)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return frame
    # A row and a column of pixel coordinates: everything computed from them broadcasts to
    # the box, without two box-sized index grids.
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    u, v = warp.face.to_face_grid(xs, ys)
    below_out = v - warp.seam(u)    # where each output pixel lies relative to the lip seam
    gap = warp.gap(u)
    # The motion is smooth everywhere but at the seam, so it is solved on a coarse grid and
    # upsampled; only the seam's jump is decided per pixel.
    step = COARSE_STEP
    cu, cb, cg = u[::step, ::step], below_out[::step, ::step], gap[::step, ::step]
    coarse_shift = (cb - warp.source_below(cu, cb, cg)).astype(np.float32)
    size = (x1 - x0, y1 - y0)
    shift = cv2.resize(coarse_shift, size, interpolation=cv2.INTER_LINEAR)
    shift = np.where(below_out > 0, np.maximum(shift, 0), 0).astype(np.float32)
    # Sideways: the inverse of u -> u + s(u) by three fixed-point steps (s is smooth and
    # |s'| <= MAX_SLOPE: the map they give stays monotonic, within ~half the slope's error).
    # (What the height needs is taken where the pixel is shown: it barely changes sideways.)
    rows = warp.rows(cu, cb)
    coarse_side = warp.sideways(cu, cb, rows)
    for _ in range(2):
        coarse_side = warp.sideways(cu - coarse_side, cb, rows)
    coarse_side = coarse_side.astype(np.float32)
    side = cv2.resize(coarse_side, size, interpolation=cv2.INTER_LINEAR)
    map_x = xs - shift * np.float32(warp.face.ey[0]) - side * np.float32(warp.face.ex[0])
    map_y = ys - shift * np.float32(warp.face.ey[1]) - side * np.float32(warp.face.ex[1])
    if warp.pressing:
        warped = _remap_pressed(frame, map_x, map_y, warp)
    else:
        warped = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    warped = _shade_inner_mouth(warped, frame[y0:y1, x0:x1], below_out, gap, u, warp)
    mask = lower_face_mask(points, (x0, y0, x1, y1), extend_down=(NECK_FADE + 0.1) * warp.w,
                           feather=max(1.0, 0.04 * warp.w), face=warp.face)
    out = frame.copy()
    out[y0:y1, x0:x1] = paste(frame[y0:y1, x0:x1], warped, mask)
    return out


def _remap_pressed(frame: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                   warp: MouthWarp) -> np.ndarray:
    """The frame sampled at the map's points with the lips pressed: the template's lips are
    pressed first and the opening and the corners' motion act on that (each source point is
    moved by the pressing's own inverse). A pixel the lips' edges cross blends what each
    part of it shows (the upper lip, the template between the lips, the lower lip), so the
    seam is anti-aliased, not a staircase."""
    pu, pv = warp.face.to_face_grid(map_x, map_y)
    # Only the part of the box whose source lies where the pressing moves anything.
    u_lo, u_hi, v_lo, v_hi = warp.press_region()
    inside = (pv > v_lo) & (pv < v_hi) & (pu > u_lo) & (pu < u_hi)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    part = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    x, y, pv = map_x[part], map_y[part], pv[part]
    upper, lower, upper_cover, lower_cover = warp.pressed_source(pu[part], pv)
    ey = warp.face.ey.astype(np.float32)
    shown = (np.where(upper_cover >= 0.5, upper, np.where(lower_cover > 0.5, lower, pv))
             - pv).astype(np.float32)
    map_x, map_y = map_x.copy(), map_y.copy()
    map_x[part] += shown * ey[0]
    map_y[part] += shown * ey[1]
    warped = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    edge = np.nonzero(((upper_cover > 0) & (upper_cover < 1))
                      | ((lower_cover > 0) & (lower_cover < 1)))
    if edge[0].size == 0:
        return warped
    x, y, v = x[edge], y[edge], pv[edge]
    between = 1 - upper_cover[edge] - lower_cover[edge]
    blended = np.zeros((edge[0].size, frame.shape[2]), np.float32)
    for source, share in ((upper[edge], upper_cover[edge]), (v, between),
                          (lower[edge], lower_cover[edge])):
        moved = (source - v)[None, :]
        sample = cv2.remap(frame, (x + moved * ey[0]).astype(np.float32),
                           (y + moved * ey[1]).astype(np.float32), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)[0]
        blended += sample.astype(np.float32) * share[:, None]
    warped[part][edge] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return warped


def _shade_inner_mouth(warped: np.ndarray, original: np.ndarray, below: np.ndarray,
                       gap: np.ndarray, u: np.ndarray, warp: MouthWarp) -> np.ndarray:
    """Fills the opening between the lips as the inside of a mouth, in the lighting of the
    face (a dim video gets a dim mouth): lip-tinted at the lips and darker towards the back
    of the throat; the template's own upper teeth stay above the seam (the upper lip never
    moves); a wide-open mouth shows a hint of the lower teeth behind the lower lip and the
    tongue below them. The edges against the lips are anti-aliased over ~1.5 px."""
    inside = np.clip((np.minimum(below, gap - below) + 0.75) / 1.5, 0.0, 1.0)
    inside[gap < 0.5] = 0.0
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return warped
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    below, gap, alpha = below[box], gap[box], inside[box][..., None]
    across = np.abs(u[box]) / (warp.half_gap * warp.w)          # 0 centre .. 1 corner
    down = np.clip(below / np.maximum(gap, 1e-3), 0, 1)        # 0 upper lip .. 1 lower lip
    depth = np.clip(np.minimum(below, gap - below) / np.maximum(gap / 2, 1e-3), 0, 1)
    # Deeper (darker) towards the centre and just under the upper teeth, whose shadow falls in.
    back = np.clip(depth ** 0.7 * (1 - 0.35 * across ** 2) + 0.25 * (1 - down) * depth, 0, 1)
    light = np.clip(float(original[::4, ::4].mean()) / 160.0, 0.4, 1.3)
    colour = MOUTH_EDGE + (MOUTH_DARK - MOUTH_EDGE) * back[..., None]
    wide = float(np.clip((warp.amount / warp.w - 0.10) / 0.12, 0.0, 1.0))
    if wide > 0:
        centre = 1 - _smoothstep(0.45, 0.8, across)
        tongue = wide * centre * _smoothstep(0.55, 0.85, down) * 0.75
        colour += (TONGUE - colour) * tongue[..., None]
        teeth = wide * centre * _smoothstep(0.72, 0.86, down) * (1 - _smoothstep(0.9, 1.0, down))
        colour += (LOWER_TEETH - colour) * (0.55 * teeth)[..., None]
    region = warped[box].astype(np.float32)
    warped[box] = np.clip(region + (colour * light - region) * alpha, 0, 255).astype(np.uint8)
    return warped


class ClassicLipSync(LipSyncBackend):
    name = "classic"
    needs_mel = True     # the mouth's shape (spread, rounded, shut) comes from the spectrum

    def __init__(self, max_opening: float = MAX_OPENING):
        self.max_opening = max_opening
        # The lips' blend goes on across batches; the tracker finds each batch's predecessor
        # by its speech, so the instance still serves concurrent renders.
        self.tracker = ShapeTracker()

    def animate(self, batch: FrameBatch) -> list[np.ndarray]:
        count = len(batch)
        if batch.mel is None:        # called without the spectrum: loudness alone
            shapes = MouthShapes(np.zeros(count, np.float32), np.zeros(count, np.float32))
        else:
            shapes = self.tracker.shapes(batch.mel, batch.openness)
        out = []
        for k, (frame, points, face) in enumerate(zip(batch.frames, batch.landmarks,
                                                      batch.has_face)):
            out.append(animate_mouth(frame, points, float(batch.openness[k]), self.max_opening,
                                     float(shapes.width[k]), float(shapes.closure[k]))
                       if face else frame)
        return out
