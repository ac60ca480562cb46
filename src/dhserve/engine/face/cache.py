"""On-disk cache of template analyses, keyed by the template file's content hash.

The second render with the same avatar skips detection entirely, and (with a background other
than "keep") segmentation and the edge analysis too: the person masks and each frame's edge
cells are stored beside the analysis, under the same hash, and a render maps them into memory
and reads the frames it meets (the OS page cache holds them, the render's memory does not
grow with the template's length). Three files: the masks, each compressed on its own
(.zlib, PackedMasks: a tenth of their raw size), the edge cells' rows (.edges, 8 bytes a cell),
and an index of both (.npz), written last. Entries are written to a temporary name and
renamed, so concurrent workers never read a half-written entry; the files are written with
write(), not through a mapping, so a full disk is an OSError (ENOSPC), not a SIGBUS.
"""

from __future__ import annotations

import contextlib
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
from dhserve.engine.face.segmentation import (
    EDGE_ROW,
    MASK_VERSION,
    PackedMasks,
    TemplateMasks,
)
from dhserve.fsutil import remove_quietly


class AnalysisCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path_for(self, digest: str) -> Path:
        return self.directory / f"{digest}.v{ANALYSIS_VERSION}.npz"

    def get(self, digest: str) -> TemplateAnalysis | None:
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        _touch(path)            # the entry was used now: prune() keeps what is used
        try:
            return TemplateAnalysis.from_bytes(data)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # damaged entry: analyse again and overwrite it

    def put(self, digest: str, analysis: TemplateAnalysis) -> Path:
        return self._write(self.path_for(digest), analysis.to_bytes())

    def masks_path_for(self, digest: str) -> Path:
        """The entry's index (written last: with it, the entry is complete)."""
        return self.directory / f"{digest}.masks.v{MASK_VERSION}.npz"

    def _data_paths(self, digest: str) -> tuple[Path, Path]:
        """The packed masks and the edge cells' rows (8 bytes a cell)."""
        stem = f"{digest}.masks.v{MASK_VERSION}"
        return self.directory / f"{stem}.zlib", self.directory / f"{stem}.edges"

    def get_masks(self, digest: str) -> TemplateMasks | None:
        """The template's masks and edge cells, memory-mapped, or None when not stored (or
        damaged: not all three files, or ones that do not fit together)."""
        blobs_path, rows_path = self._data_paths(digest)
        try:
            with np.load(self.masks_path_for(digest), allow_pickle=False) as index:
                shape, blob_offsets, offsets = (index[k] for k in ("shape", "masks", "edges"))
            if not (shape.shape == (2,) and blob_offsets.dtype == offsets.dtype == np.int64
                    and blob_offsets.ndim == offsets.ndim == 1 and offsets.size):
                return None
            masks = PackedMasks(_mapped(blobs_path, np.dtype(np.uint8), int(blob_offsets[-1])),
                                blob_offsets, (int(shape[0]), int(shape[1])))
            edges = _mapped(rows_path, np.dtype(np.uint8), int(offsets[-1]), EDGE_ROW)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, damaged
            return None
        stored = TemplateMasks(masks, edges, offsets)
        if not stored.consistent():
            return None
        _touch(self.masks_path_for(digest))
        return stored

    def prune(self, max_bytes: int, now: float, stale_tmp_s: float = 3600.0) -> list[str]:
        """Keeps the cache under `max_bytes`: entries of an older format (never read again)
        and temporaries a killed writer left go first, then whole entries (a template's
        analysis and masks together), least recently used first. A render that has an
        entry's files open or mapped keeps reading them (POSIX: the inode lives on).
        Returns the digests removed."""
        current = {self.path_for("").name, self.masks_path_for("").name,
                   *(path.name for path in self._data_paths(""))}
        entries: dict[str, list[tuple[Path, os.stat_result]]] = {}
        for path in self.directory.iterdir() if self.directory.is_dir() else ():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path.name.startswith(".tmp-"):
                if st.st_mtime < now - stale_tmp_s:
                    remove_quietly(path)
                continue
            digest, dot, rest = path.name.partition(".")
            if not dot or "." + rest not in current:     # another format, or not ours
                if dot and len(digest) == 64:
                    remove_quietly(path)
                continue
            entries.setdefault(digest, []).append((path, st))
        total = sum(st.st_size for files in entries.values() for _, st in files)
        removed = []
        for digest, files in sorted(entries.items(),
                                    key=lambda kv: max(st.st_mtime for _, st in kv[1])):
            if total <= max_bytes:
                break
            for path, st in files:
                remove_quietly(path)
                total -= st.st_size
            removed.append(digest)
        return removed

    def store_masks(self, digest: str, pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                    count: int) -> TemplateMasks:
        """Stores `count` frames' (mask, edge rows) as they come (a short `pairs` padded with
        its last, a long one cut), and returns them as get_masks will."""
        blobs_path, rows_path = self._data_paths(digest)
        blob_offsets, offsets = np.zeros(count + 1, np.int64), np.zeros(count + 1, np.int64)
        shape = np.zeros(2, np.int64)
        with self._temporary(".zlib") as (blobs_file, blobs_tmp), \
                self._temporary(".edges") as (rows_file, rows_tmp):
            for index, (mask, rows) in enumerate(_padded(pairs, count)):
                shape[:] = mask.shape
                blob = PackedMasks.pack(mask)
                blobs_file.write(blob)
                rows_file.write(np.ascontiguousarray(rows, np.uint8).tobytes())
                blob_offsets[index + 1] = blob_offsets[index] + len(blob)
                offsets[index + 1] = offsets[index] + len(rows)
            blobs_file.close()
            rows_file.close()
            os.replace(blobs_tmp, blobs_path)
            os.replace(rows_tmp, rows_path)
        buffer = io.BytesIO()
        np.savez(buffer, shape=shape, masks=blob_offsets, edges=offsets)
        self._write(self.masks_path_for(digest), buffer.getvalue())   # last: entry complete
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


def _touch(path: Path) -> None:
    """Marks a cache file as just used (its mtime); a read-only cache stays usable."""
    with contextlib.suppress(OSError):
        os.utime(path)


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


def _mapped(path: Path, dtype: np.dtype, count: int, columns: int = 0) -> np.ndarray:
    """The file's `count` items (rows of `columns`, with columns) of `dtype`, mapped
    read-only: the pages are read as they are touched, and are the OS page cache's
    (ValueError: the file is not that long)."""
    shape = (count, columns) if columns else (count,)
    size = int(np.prod(shape)) * dtype.itemsize
    if os.stat(path).st_size != size:
        raise ValueError(f"{path.name}: not as long as its index says")
    if size == 0:
        return np.zeros(shape, dtype)       # mmap refuses a length of 0
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.ndarray(shape, dtype, buffer=mapped)      # its base: the map
