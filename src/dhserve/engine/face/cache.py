"""On-disk cache of template analyses, keyed by the template file's content hash.

The second render with the same avatar skips detection entirely, and (with a background other
than "keep") segmentation too: the person masks are stored beside the analysis, under the
same hash, compressed (about a quarter of the raw uint8 masks). Entries are written to a
temporary name and renamed, so concurrent workers never read a half-written entry.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dhserve.engine.face.analysis import ANALYSIS_VERSION, TemplateAnalysis
from dhserve.engine.face.segmentation import MASK_VERSION


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
        return self.directory / f"{digest}.masks.v{MASK_VERSION}.npz"

    def get_masks(self, digest: str) -> np.ndarray | None:
        """The template's person masks (n, h, w) uint8, or None when not stored (or damaged)."""
        try:
            with np.load(self.masks_path_for(digest), allow_pickle=False) as stored:
                masks = stored["masks"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):   # absent, damaged
            return None
        return masks if masks.ndim == 3 and masks.dtype == np.uint8 else None

    def put_masks(self, digest: str, masks: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, masks=masks)
        return self._write(self.masks_path_for(digest), buffer.getvalue())

    def _write(self, target: Path, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return target
