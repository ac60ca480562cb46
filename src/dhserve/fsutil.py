"""File helpers every layer uses: content digest, quiet removal, free space, a writability
probe. The bottom layer: imports nothing of dhserve's."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes: the same avatar under another name hits the same entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_quietly(path: Path) -> None:
    """Removes a file that may already be gone (a partial file, a spool)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def existing_parent(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (for free disk before the dir is made)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_mb(folder: Path) -> float:
    """Free space where `folder` lies, in MB (of its nearest existing ancestor)."""
    return shutil.disk_usage(existing_parent(folder)).free / 2**20


def unwritable_reason(path: Path) -> OSError | None:
    """Why the service could not make and write in folder `path` (None: it can); what
    `dhserve serve` does first, and `dhserve doctor` shows."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dhserve-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        return None
    except OSError as exc:
        return exc
