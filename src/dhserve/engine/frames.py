"""Template frames in output order, looped to the speech length.

`restart` plays the template again from its start; `pingpong` plays it forwards then
backwards. Repeats read frames kept from the first pass: in one array up to a budget, beyond it
in a raw spill file read back with positioned reads (not mmap, so resident memory does not grow
with the template).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import IO

import numpy as np

from dhserve.engine.media import DEFAULT_MAX_PIXELS, read_frames


def template_index(i: int, template_frames: int, loop: str) -> int:
    """Which template frame output frame `i` shows."""
    n = template_frames
    if n <= 1:
        return 0
    if loop == "restart":
        return i % n
    period = 2 * n - 2
    k = i % period
    return k if k < n else period - k


class _FrameStore:
    """Decoded template frames by index: one preallocated array when the whole template fits
    the budget (no per-frame allocations to fragment the heap), else a raw spill file."""

    def __init__(self, capacity: int, budget_bytes: int, spill_dir: Path | None):
        self.capacity, self.budget, self.spill_dir = capacity, budget_bytes, spill_dir
        self.array: np.ndarray | None = None
        self.file: IO[bytes] | None = None
        self.shape: tuple[int, ...] | None = None
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        if self.count == 0:
            if self.capacity * frame.nbytes <= self.budget:
                self.array = np.empty((self.capacity, *frame.shape), np.uint8)
            else:
                self.file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                    dir=self.spill_dir, prefix="dhserve-frames-")
            self.shape = frame.shape
        if self.count >= self.capacity:
            return
        if self.array is not None:
            self.array[self.count] = frame
        elif self.file is not None:
            self.file.write(np.ascontiguousarray(frame).data.cast("B"))
        self.count += 1

    def get(self, index: int) -> np.ndarray:
        if self.array is not None:
            return self.array[index]
        assert self.file is not None and self.shape is not None   # add() made the spill file
        self.file.flush()
        frame = np.empty(self.shape, np.uint8)
        os.preadv(self.file.fileno(), [frame.data], index * frame.nbytes)
        return frame

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.array = None


def looped_frames(video: Path, rotation: int, template_frames: int, total: int, loop: str,
                  cache_bytes: int = 512 << 20, spill_dir: Path | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> Generator[tuple[int, np.ndarray], None, None]:
    """Yields (template index, RGB frame) for output frames 0..total-1.

    A template at least as long as the speech is simply streamed. A shorter one is decoded
    once into the frame store and replayed from it in either loop mode (a one-frame template
    is decoded once, not once per output frame).
    """
    if total <= template_frames:
        for index, frame in zip(range(total), read_frames(video, rotation, "video",
                                                          max_pixels)):
            yield index, frame
        return
    store = _FrameStore(template_frames, cache_bytes, spill_dir)
    try:
        decoded = read_frames(video, rotation, "video", max_pixels)
        for i in range(total):
            index = template_index(i, template_frames, loop)
            while store.count <= index:
                got = next(decoded, None)
                if got is None:  # fewer frames than analysed: hold the last one
                    got = store.get(store.count - 1).copy()
                store.add(got)
            yield index, store.get(index)
        decoded.close()
    finally:
        store.close()
