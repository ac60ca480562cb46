"""Retention: what the data dir keeps and for how long. Finished jobs go with their results
and uploads once DHSERVE_RETENTION_DAYS pass; what interrupted work left behind (partial
results of killed renders, downloads and upload folders of requests that never became a job)
goes once it is old; the template cache stays under DHSERVE_TEMPLATE_CACHE_MB (least
recently used templates go). Run by the render workers' housekeeping."""

from __future__ import annotations

import glob
import logging
import re
import shutil
import time
from pathlib import Path

from dhserve.config import Settings
from dhserve.engine.face.cache import AnalysisCache
from dhserve.fsutil import remove_quietly
from dhserve.jobs.model import (
    JobState,
    download_owner,
    downloads_root,
    result_path,
    spool_dir,
    upload_dir,
)
from dhserve.jobs.store import JobStore

log = logging.getLogger(__name__)

STALE_PART_S = 3600.0      # a partial result this old goes, whoever holds it
PART_GRACE_S = 60.0        # one no running job writes to goes once this old
# the name of a result being written (engine/pipeline.py): .<result name>.<hex tag>.part
PARTIAL_RESULT = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8,32}\.part")


def prune_finished(store: JobStore, settings: Settings) -> int:
    """Deletes finished jobs past the retention with their results, and temporary files
    that a killed render left behind. Returns how many jobs went."""
    gone = store.prune(settings.retention_days * 86400)
    for job in gone:
        if job.result:
            remove_quietly(Path(job.result))
        shutil.rmtree(upload_dir(settings, job.id), ignore_errors=True)
    sweep_partials(store, settings)
    cutoff = time.time() - STALE_PART_S
    downloads = downloads_root(settings)
    uploads = settings.uploads_dir      # folders of requests that never became a job
    for path in uploads.iterdir() if uploads.is_dir() else ():
        if path != spool_dir(settings) and _older_than(path, cutoff) and not store.exists(path.name):
            shutil.rmtree(path, ignore_errors=True)
    running = {job.id for job in store.list(JobState.RUNNING, limit=100_000)}
    for path in downloads.iterdir() if downloads.is_dir() else ():
        # a long render's inputs stay while it runs
        if download_owner(path) not in running and _older_than(path, cutoff):
            shutil.rmtree(path, ignore_errors=True)
    if gone:
        log.info("pruned %d finished job(s) older than %g days", len(gone),
                 settings.retention_days)
    limit = min(settings.template_cache_mb, 2.0**40)        # inf: no limit
    evicted = AnalysisCache(settings.templates_dir).prune(int(limit * 2**20), time.time())
    if evicted:
        log.info("template cache: removed %d least recently used template(s) to stay under "
                 "%g MB", len(evicted), settings.template_cache_mb)
    return len(gone)


def sweep_partials(store: JobStore, settings: Settings) -> int:
    """Removes the partial results that killed renders left in results/ and temp/ (only
    names of dhserve's pattern, .<name>.<hex>.part): those no running job writes to once
    PART_GRACE_S old, any once STALE_PART_S old. Returns how many went."""
    found = [(path, match) for folder in (settings.results_dir, settings.temp_dir)
             if folder.is_dir() for path in folder.iterdir()
             if (match := PARTIAL_RESULT.fullmatch(path.name))]
    if not found:
        return 0
    # listed after the files: a part that exists now belongs to a job running by now, or
    # to one that has finished (and renamed or removed its part)
    held = {result_path(settings, job).resolve()
            for job in store.list(JobState.RUNNING, limit=100_000)}
    now, removed = time.time(), 0
    for path, match in found:
        result = path.with_name(match["name"]).resolve()
        limit = STALE_PART_S if result in held else PART_GRACE_S
        if _older_than(path, now - limit):
            remove_quietly(path)
            removed += 1
    if removed:
        log.info("removed %d partial result(s) left by interrupted renders", removed)
    return removed


def remove_earlier_partials(result: Path, since: float) -> None:
    """After a job's attempt: the partial files of its earlier attempts (a worker killed
    mid-render leaves one) go; one still being written (newer than `since`) stays."""
    pattern = f".{glob.escape(result.name)}.*.part"
    for path in result.parent.glob(pattern) if result.parent.is_dir() else ():
        if PARTIAL_RESULT.fullmatch(path.name) and _older_than(path, since - 1.0):
            remove_quietly(path)
            log.info("removed %s, left by an earlier attempt", path.name)


def _older_than(path: Path, cutoff: float) -> bool:
    """False for a file that another process removed meanwhile (shared storage)."""
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False
