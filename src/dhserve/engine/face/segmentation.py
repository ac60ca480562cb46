"""Person masks of template frames: MediaPipe selfie segmentation (the model ships inside the
mediapipe wheel, mediapipe/modules/selfie_segmentation/*.tflite), smoothed over time.

Masks are kept compactly: uint8 (0 background .. 255 person), at most MASK_MAX_SIDE pixels on
the long side (the model itself sees 256x256, so nothing is lost); background.py scales them
to the frame, which also gives anti-aliased edges. They depend on the template only, so they
are computed once per template and cached with its face analysis (AnalysisCache.store_masks),
with each frame's edge cells (background.edge_rows), which depend on the template only too. A
render reads them memory-mapped (TemplateMasks), so its memory does not grow with the template.
"""

from __future__ import annotations

import mmap
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import cv2
import numpy as np

MASK_MAX_SIDE = 512
MASK_SMOOTHING_SIGMA = 1.0   # frames; centred, so the edge does not lag the person
# bump when stored masks or their edge cells change meaning (background.py's EDGE_ constants)
MASK_VERSION = 4
EDGE_ROW = 8                 # bytes of an edge cell's row (background.edge_rows)


def edge_grid(height: int, width: int) -> tuple[int, int]:
    """(columns, rows) of the edge cells' grid over a mask of this size: half its size."""
    return max(1, width // 2), max(1, height // 2)


def edge_cell_index(rows: np.ndarray) -> np.ndarray:
    """The cells' flat indices in the grid, int64: bytes 6-7 of each row, little-endian."""
    return np.ascontiguousarray(rows[:, 6:8]).view("<u2")[:, 0].astype(np.int64)
# Frames at least this much wider than tall go to the landscape model (144x256 input): on a
# 1280x720 template the square model's uncertain share of the frame (0.1 < p < 0.9) was 24 %
# against 7 %, its frame-to-frame change 3x as large; on a square portrait the square model
# is the cleaner one (2.1 % against 2.7 % uncertain).
LANDSCAPE_ASPECT = 1.2


def mask_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of a stored mask for a frame of `width` x `height`."""
    scale = min(1.0, MASK_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class PersonSegmenter:
    """MediaPipe selfie segmentation of RGB frames into uint8 person masks. One per thread."""

    calls = 0   # frames segmented by any instance (the tests count cache hits with it)

    def __init__(self) -> None:
        self._models: dict[int, object] = {}   # loaded on first use: 0 general, 1 landscape

    def _model(self, width: int, height: int):
        selection = 1 if width >= LANDSCAPE_ASPECT * height else 0
        if selection not in self._models:
            import mediapipe as mp  # heavy import, done only where masks are computed

            self._models[selection] = mp.solutions.selfie_segmentation.SelfieSegmentation(
                model_selection=selection)
        return self._models[selection]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """The person mask of one frame, uint8 at mask_size of the frame."""
        PersonSegmenter.calls += 1
        height, width = rgb.shape[:2]
        size = mask_size(width, height)
        small = rgb if size == (width, height) else cv2.resize(rgb, size,
                                                               interpolation=cv2.INTER_AREA)
        model = self._model(width, height)
        prob = model.process(np.ascontiguousarray(small)).segmentation_mask
        return np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        for model in self._models.values():
            model.close()  # type: ignore[attr-defined]
        self._models.clear()


def person_masks(frames: Iterable[np.ndarray], on_frame: Callable[[int], None] | None = None,
                 segmenter: PersonSegmenter | None = None) -> np.ndarray:
    """The masks of all `frames` (n, h, w) uint8, smoothed over time."""
    return np.stack([mask for _, mask in masks_with_frames(frames, on_frame, segmenter)])


def masks_with_frames(frames: Iterable[np.ndarray],
                      on_frame: Callable[[int], None] | None = None,
                      segmenter: PersonSegmenter | None = None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each of `frames` with its mask, smoothed over time as they come (the frames and raw
    masks of a few frames are held, not all of them)."""
    own = segmenter is None
    segmenter = segmenter or PersonSegmenter()
    held: deque[np.ndarray] = deque()     # the frames whose smoothed mask has not come out

    def segmented() -> Iterator[np.ndarray]:
        for index, rgb in enumerate(frames):
            held.append(rgb)
            yield segmenter.segment(rgb)
            if on_frame:
                on_frame(index + 1)

    try:
        for mask in _smoothed(segmented()):
            yield held.popleft(), mask
    finally:
        if own:
            segmenter.close()


class PackedMasks:
    """Masks each compressed on its own (zlib, level 1), decompressed when one is asked for:
    about a tenth of the raw uint8 masks (mostly 0 and 255), some 0.1 ms a 720p mask."""

    LEVEL = 1

    def __init__(self, blobs: np.ndarray, offsets: np.ndarray, shape: tuple[int, int]):
        self.blobs, self.offsets, self.shape = blobs, offsets, shape   # blobs: bytes, uint8

    @staticmethod
    def pack(mask: np.ndarray) -> bytes:
        return zlib.compress(np.ascontiguousarray(mask, np.uint8).tobytes(), PackedMasks.LEVEL)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        """Mask `index`; ValueError for a damaged one."""
        blob = self.blobs[self.offsets[index]:self.offsets[index + 1]]
        try:
            data = zlib.decompress(blob.data)
        except zlib.error as exc:
            raise ValueError(f"stored mask {index} is damaged: {exc}") from None
        return np.frombuffer(data, np.uint8).reshape(self.shape)    # ValueError: wrong size

    def consistent(self) -> bool:
        offsets = self.offsets
        return (len(self) > 0 and self.blobs.ndim == 1 and self.blobs.dtype == np.uint8
                and offsets[0] == 0 and offsets[-1] == self.blobs.size
                and bool(np.all(np.diff(offsets) > 0)) and len(self.shape) == 2)


@dataclass(frozen=True)
class TemplateMasks:
    """A template's person masks and the edge cells of each frame (rows of EDGE_ROW bytes,
    frame after frame); from the cache, the masks packed (PackedMasks) and both memory-mapped.
    A frame past the last stored one (a damaged entry) gets the last one's."""

    masks: np.ndarray | PackedMasks      # (n, h, w) uint8
    edges: np.ndarray      # (rows, EDGE_ROW) uint8
    offsets: np.ndarray    # (n + 1,) int64: frame i's rows are edges[offsets[i]:offsets[i + 1]]

    @classmethod
    def gather(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], count: int
               ) -> TemplateMasks:
        """In memory, from (mask, edge rows) pairs: the first `count` of them."""
        masks, rows = zip(*islice(pairs, count), strict=True)
        sizes = np.array([0] + [len(r) for r in rows], np.int64)
        return cls(np.stack(masks), np.concatenate(rows).reshape(-1, EDGE_ROW),
                   np.cumsum(sizes))

    def __len__(self) -> int:
        return len(self.masks)

    def mask(self, index: int) -> np.ndarray:
        return self.masks[min(index, len(self) - 1)]

    def edge_rows(self, index: int) -> np.ndarray:
        index = min(index, len(self) - 1)
        return self.edges[self.offsets[index]:self.offsets[index + 1]]

    def release(self) -> None:
        """Lets go of the mapped pages this process has read (a render calls it after each
        batch): the OS page cache keeps them, so reading them again costs a minor fault, and
        the process's resident memory does not grow with the template (mapped pages touched
        count in it until they are let go of). Nothing for arrays in memory."""
        masks = self.masks.blobs if isinstance(self.masks, PackedMasks) else self.masks
        maps = {id(m): m for m in map(_mapping, (masks, self.edges)) if m is not None}
        for mapped in maps.values():            # a stored entry's: one map for both
            if hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS
                mapped.madvise(mmap.MADV_DONTNEED)

    def edge_cells_fit(self) -> bool:
        """Whether every edge cell lies on its mask's grid (background.edge_rows' grid: half
        the mask's size), as background.edge_colours needs (a stored entry is checked)."""
        height, width = (self.masks.shape if isinstance(self.masks, PackedMasks)
                         else self.masks.shape[1:])
        cells = edge_cell_index(self.edges)
        columns, rows = edge_grid(height, width)
        return cells.size == 0 or int(cells.max()) < columns * rows

    def consistent(self) -> bool:
        """Whether the three arrays fit together (a stored entry is checked with it)."""
        offsets, masks = self.offsets, self.masks
        return ((masks.consistent() if isinstance(masks, PackedMasks) else
                 masks.ndim == 3 and masks.dtype == np.uint8) and len(self) > 0
                and self.edges.ndim == 2 and self.edges.shape[1] == EDGE_ROW
                and self.edges.dtype == np.uint8 and offsets.shape == (len(self) + 1,)
                and offsets[0] == 0 and offsets[-1] == len(self.edges)
                and bool(np.all(np.diff(offsets) >= 0)))


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    """The memory map `array` is a view of, if any."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, mmap.mmap) else None


def smooth_masks(masks: np.ndarray, sigma: float = MASK_SMOOTHING_SIGMA) -> np.ndarray:
    """Centred Gaussian smoothing over time; removes the segmenter's frame-to-frame flicker
    at the edges."""
    out = np.empty_like(masks)
    for index, smoothed in enumerate(_smoothed(iter(masks), sigma)):
        out[index] = smoothed
    return out


def _smoothed(masks: Iterator[np.ndarray], sigma: float = MASK_SMOOTHING_SIGMA
              ) -> Iterator[np.ndarray]:
    """`masks` smoothed over time, one out for each in, truncated at the ends: only the raw
    masks within 2 sigma of the one given out are held (one float frame above them)."""
    radius = int(np.ceil(2 * sigma)) if sigma > 0 else 0
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
    held: deque[np.ndarray] = deque()       # the raw masks count - len(held) .. count - 1
    count = 0

    def smoothed(centre: int) -> np.ndarray:
        first = count - len(held)
        lo, hi = max(first, centre - radius), min(count - 1, centre + radius)
        weights = taps[lo - centre + radius:hi - centre + radius + 1]
        total = np.tensordot((weights / weights.sum()).astype(np.float32),
                             np.stack([held[i - first] for i in range(lo, hi + 1)]
                                      ).astype(np.float32), axes=1)
        return np.clip(total + 0.5, 0, 255).astype(np.uint8)

    for mask in masks:
        held.append(mask)
        count += 1
        if count > radius:
            yield smoothed(count - 1 - radius)
            if len(held) > 2 * radius:
                held.popleft()
    for centre in range(max(0, count - radius), count):
        yield smoothed(centre)
