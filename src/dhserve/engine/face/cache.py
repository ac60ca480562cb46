"""On-disk cache of template analyses, keyed by the template file's content hash.

The second render with the same avatar skips detection entirely, and (with a background other
than "keep") segmentation and the edge analysis too: the person masks and each frame's edge
cells are stored beside the analysis, under the same hash, uncompressed, so that a render
maps them into memory (np.memmap) and reads the frames it meets: the OS page cache holds
them, the render's memory does not grow with the template's length. Three files: the masks
(.npy), the edge cells' rows (raw float32) and their offsets (.npy), the masks written last.
Entries are written to a temporary name and renamed, so concurrent workers never read a
half-written entry; the files are written with write(), not through a mapping, so a full disk
is an OSError (ENOSPC), not a SIGBUS.
"""

from __future__ import annotations

import io
import mmap
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dhserve.engine.face.analysis import ANALYSIS_VERSION, TemplateAnalysis
from dhserve.engine.face.segmentation import EDGE_ROW, MASK_VERSION, TemplateMasks
from dhserve.fsutil import remove_quietly


class AnalysisCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path_for(self, digest: str) -> Path:
        return self.directory / f"{digest}.v{ANALYSIS_VERSION}.npz"

    def get(self, digest: str) -> TemplateAnalysis | None:
        try:
            data = self.path_for(digest).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return TemplateAnalysis.from_bytes(data)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # damaged entry: analyse again and overwrite it

    def put(self, digest: str, analysis: TemplateAnalysis) -> Path:
        return self._write(self.path_for(digest), analysis.to_bytes())

    def masks_path_for(self, digest: str) -> Path:
        return self.directory / f"{digest}.masks.v{MASK_VERSION}.npy"

    def _edges_paths(self, digest: str) -> tuple[Path, Path]:
        stem = f"{digest}.edges.v{MASK_VERSION}"
        return self.directory / f"{stem}.f32", self.directory / f"{stem}.offsets.npy"

    def get_masks(self, digest: str) -> TemplateMasks | None:
        """The template's masks and edge cells, memory-mapped, or None when not stored (or
        damaged: not all three files, or ones that do not fit together)."""
        rows_path, offsets_path = self._edges_paths(digest)
        try:
            masks = _mapped_npy(self.masks_path_for(digest))
            offsets = np.load(offsets_path, allow_pickle=False)
            count = int(offsets[-1]) if offsets.ndim == 1 and offsets.size else -1
            if offsets.dtype != np.int64 or rows_path.stat().st_size != count * EDGE_ROW * 4:
                return None
            edges = _mapped(rows_path, 0, np.dtype(np.float32), (count, EDGE_ROW))
        except (OSError, ValueError, EOFError):                    # absent, damaged
            return None
        stored = TemplateMasks(masks, edges, offsets)
        return stored if stored.consistent() else None

    def store_masks(self, digest: str, pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                    count: int) -> TemplateMasks:
        """Stores `count` frames' (mask, edge rows) as they come (a short `pairs` padded with
        its last, a long one cut), and returns them as get_masks will."""
        rows_path, offsets_path = self._edges_paths(digest)
        offsets = np.zeros(count + 1, np.int64)
        with self._temporary(".npy") as (masks_file, masks_tmp), \
                self._temporary(".f32") as (rows_file, rows_tmp):
            for index, (mask, rows) in enumerate(_padded(pairs, count)):
                if index == 0:
                    np.lib.format.write_array_header_1_0(masks_file, {
                        "descr": "|u1", "fortran_order": False, "shape": (count, *mask.shape)})
                masks_file.write(np.ascontiguousarray(mask, np.uint8).tobytes())
                rows_file.write(np.ascontiguousarray(rows, np.float32).tobytes())
                offsets[index + 1] = offsets[index] + len(rows)
            masks_file.close()
            rows_file.close()
            os.replace(rows_tmp, rows_path)
            self._write(offsets_path, _npy_bytes(offsets))
            os.replace(masks_tmp, self.masks_path_for(digest))  # last: the entry is complete
        stored = self.get_masks(digest)
        if stored is None:      # another worker's entry took the names halfway through ours
            raise OSError(f"template cache entry {digest} changed while it was written")
        return stored

    @contextmanager
    def _temporary(self, suffix: str) -> Iterator[tuple[BinaryIO, str]]:
        """A temporary file in the cache and its path, removed when the block fails before
        renaming it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
        except BaseException:
            remove_quietly(Path(tmp))
            raise

    def _write(self, target: Path, data: bytes) -> Path:
        with self._temporary(target.suffix) as (f, tmp):
            f.write(data)
            f.close()
            os.replace(tmp, target)
        return target

def _padded(pairs: Iterable[tuple[np.ndarray, np.ndarray]], count: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first `count` of `pairs`, the last repeated when there are fewer (none: ValueError)."""
    last = None
    for last in islice(pairs, count):
        yield last
        count -= 1
    if last is None:
        raise ValueError("no template frames to store masks of")
    for _ in range(count):
        yield last


def _mapped_npy(path: Path) -> np.ndarray:
    """A C-ordered .npy file's array, mapped read-only (as np.load(mmap_mode="r"), with the
    mmap object as the array's base, which TemplateMasks.release needs)."""
    with open(path, "rb") as f:
        if np.lib.format.read_magic(f) != (1, 0):      # what store_masks writes
            raise ValueError(f"{path.name}: not a version 1.0 .npy file")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path.name}: not a plain C-ordered array")
        return _mapped(path, f.tell(), dtype, shape)


def _mapped(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """`shape` items of `dtype` from byte `offset` of the file, mapped read-only: the pages
    are read as they are touched, and are the OS page cache's (ValueError: file too short)."""
    size = int(np.prod(shape)) * dtype.itemsize
    if size == 0:
        return np.zeros(shape, dtype)       # mmap refuses a length of 0
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)   # ValueError when empty
    if mapped.size() < offset + size:
        mapped.close()
        raise ValueError(f"{path.name}: shorter than its header says")
    return np.ndarray(shape, dtype, buffer=mapped, offset=offset)   # its base: the map


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
