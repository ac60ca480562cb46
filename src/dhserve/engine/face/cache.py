"""On-disk cache of template analyses, keyed by the template file's content hash.

The second render with the same avatar skips detection entirely, and (with a background other
than "keep") segmentation and the edge analysis too: the person masks and each frame's edge
cells are stored beside the analysis, under the same hash, and a render maps them into memory
and reads the frames it meets (the OS page cache holds them, the render's memory does not
grow with the template's length). One file for them (.masks.v4.bin, layout below): the
masks, each compressed on its own (PackedMasks: a tenth of their raw size), the edge cells'
rows (8 bytes a cell), their offsets and a footer with a crc32 of the rest, which a cache hit
checks (a damaged entry is computed again). Entries are written to a temporary name and
renamed once, so concurrent workers never read a half-written entry, and two workers storing
one template each keep their own whole file (the later rename wins); the files are written
with write(), not through a mapping, so a full disk is an OSError (ENOSPC), not a SIGBUS.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
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

# A masks entry: [the masks, each zlib-packed][pad to 8][the edge rows, EDGE_ROW bytes each]
# [blob offsets, int64 (n + 1)][edge row offsets, int64 (n + 1)][footer]; the footer: magic,
# MASK_VERSION, crc32 of all before it, n, mask height and width, where the edge rows and the
# offsets start. Little-endian.
_MAGIC = b"DHMASKS\0"
_FOOTER = struct.Struct("<8sIIqqqqq")


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
        """The template's masks entry: one file, renamed into place whole."""
        return self.directory / f"{digest}.masks.v{MASK_VERSION}.bin"

    def get_masks(self, digest: str) -> TemplateMasks | None:
        """The template's masks and edge cells, memory-mapped, or None when not stored or
        damaged (a footer that does not fit, a checksum that does not match, an edge cell
        off the grid): computed again then, and overwritten. The checksum reads the file
        once; the pages are let go of after it (TemplateMasks.release)."""
        path = self.masks_path_for(digest)
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):          # absent; empty (mmap refuses a length of 0)
            return None
        entry = _entry(mapped)
        if entry is None:
            return None
        stored, crc = entry
        with memoryview(mapped) as whole:
            intact = (zlib.crc32(whole[:len(mapped) - _FOOTER.size]) == crc
                      and stored.edge_cells_fit())
        stored.release()
        if not intact:
            return None
        _touch(path)            # the entry was used now: prune() keeps what is used
        return stored

    def prune(self, max_bytes: int, now: float, stale_tmp_s: float = 3600.0) -> list[str]:
        """Keeps the cache under `max_bytes`: entries of an older format (never read again)
        and temporaries a killed writer left go first, then whole entries (a template's
        analysis and masks together), least recently used first. A render that has an
        entry's files open or mapped keeps reading them (POSIX: the inode lives on).
        Returns the digests removed."""
        current = {self.path_for("").name, self.masks_path_for("").name}
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
        its last, a long one cut) in one file, renamed into place once, and returns them
        mapped from that file (its inode: whatever another worker renames over the name
        later, these stay whole). Two workers storing one template: the later rename wins,
        both entries are complete."""
        target = self.masks_path_for(digest)
        blob_offsets, offsets = np.zeros(count + 1, np.int64), np.zeros(count + 1, np.int64)
        height = width = 0
        with self._temporary(target.suffix) as (f, tmp), \
                tempfile.TemporaryFile(dir=self.directory) as rows_file:   # no name: O_TMPFILE
            out = _Summed(f)
            for index, (mask, rows) in enumerate(_padded(pairs, count)):
                height, width = mask.shape
                blob = PackedMasks.pack(mask)
                out.write(blob)
                rows_file.write(np.ascontiguousarray(rows, np.uint8).tobytes())
                blob_offsets[index + 1] = blob_offsets[index] + len(blob)
                offsets[index + 1] = offsets[index] + len(rows)
            out.write(bytes(-out.size % 8))               # the edge rows start aligned
            edges_at = out.size
            rows_file.seek(0)
            shutil.copyfileobj(rows_file, out)
            offsets_at = out.size
            out.write(np.stack([blob_offsets, offsets]).astype("<i8").tobytes())
            f.write(_FOOTER.pack(_MAGIC, MASK_VERSION, out.crc, count, height, width,
                                 edges_at, offsets_at))
            f.flush()
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)    # this inode
            f.close()
            os.replace(tmp, target)
        entry = _entry(mapped)
        if entry is None:
            raise ValueError(f"the masks of template {digest} do not fit together")
        return entry[0]

    @contextmanager
    def _temporary(self, suffix: str) -> Iterator[tuple[BinaryIO, str]]:
        """A temporary file in the cache and its path, removed when the block fails before
        renaming it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=suffix)
        try:
            with os.fdopen(fd, "w+b") as f:         # readable too: store_masks maps it
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


class _Summed:
    """Writes to `f`, counting the bytes and their crc32 (copyfileobj writes through it)."""

    def __init__(self, f: BinaryIO):
        self.f, self.size, self.crc = f, 0, 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return len(data)


def _entry(mapped: mmap.mmap) -> tuple[TemplateMasks, int] | None:
    """The masks entry in `mapped` (views of it: nothing is read but the footer and the
    offsets) and the crc32 its footer gives, or None when the footer and the sections do
    not fit together (the checksum is the caller's to check)."""
    body = len(mapped) - _FOOTER.size
    try:
        magic, version, crc, count, height, width, edges_at, offsets_at = \
            _FOOTER.unpack_from(mapped, body)
        if not (magic == _MAGIC and version == MASK_VERSION and count > 0 and height > 0
                and width > 0 and edges_at % 8 == 0 and 0 <= edges_at <= offsets_at
                and offsets_at + 2 * 8 * (count + 1) == body):
            return None
        blob_offsets, offsets = np.ndarray((2, count + 1), "<i8", mapped, offsets_at
                                           ).astype(np.int64)     # small: in memory
        rows = (offsets_at - edges_at) // EDGE_ROW
        if not (0 <= edges_at - blob_offsets[-1] < 8 and offsets[-1] == rows):
            return None
        masks = PackedMasks(np.ndarray((int(blob_offsets[-1]),), np.uint8, mapped),
                            blob_offsets, (height, width))
        stored = TemplateMasks(masks, np.ndarray((rows, EDGE_ROW), np.uint8, mapped, edges_at),
                               offsets)
    except (ValueError, TypeError, struct.error):     # too short; sections past the end
        return None
    return (stored, crc) if stored.consistent() else None
