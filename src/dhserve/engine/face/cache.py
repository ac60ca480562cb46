"""On-disk cache of template analyses, keyed by the template file's content hash.

The second render with the same avatar skips detection entirely. Entries are written to a
temporary name and renamed, so concurrent workers never read a half-written entry.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from dhserve.engine.face.analysis import ANALYSIS_VERSION, TemplateAnalysis


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
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(digest)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(analysis.to_bytes())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return target
