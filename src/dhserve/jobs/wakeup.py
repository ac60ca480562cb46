"""Wakes an idle worker as soon as there may be work, without polling the jobs table.

PostgreSQL: LISTEN on the channel that submit and requeue NOTIFY. SQLite: watch
`PRAGMA data_version`, which changes whenever another connection commits; reading it costs
microseconds, so checking it every few milliseconds gives prompt claims for free.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from dhserve.jobs.store import NOTIFY_CHANNEL, JobStore

SQLITE_CHECK_S = 0.005


class Wakeup:
    """wait(timeout) returns early when the store may have changed or interrupt() is called."""

    def __init__(self, store: JobStore):
        self._interrupted = threading.Event()
        self._pg = None
        self._sqlite = None
        url = store.engine.url
        if store.dialect == "postgresql":
            import psycopg

            plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = psycopg.connect(plain, autocommit=True)
            self._pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
        elif store.dialect == "sqlite" and url.database not in (None, "", ":memory:"):
            self._sqlite = sqlite3.connect(url.database, check_same_thread=False)
            self._version = self._data_version()

    def _data_version(self) -> int:
        return self._sqlite.execute("PRAGMA data_version").fetchone()[0]

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._pg is not None:
            # notifies() blocks in the socket; wake up in slices to honour interrupt().
            while not self._interrupted.is_set() and time.monotonic() < deadline:
                slice_s = min(0.25, max(deadline - time.monotonic(), 0.0))
                for _ in self._pg.notifies(timeout=slice_s, stop_after=1):
                    return
        elif self._sqlite is not None:
            while not self._interrupted.is_set() and time.monotonic() < deadline:
                version = self._data_version()
                if version != self._version:
                    self._version = version
                    return
                self._interrupted.wait(SQLITE_CHECK_S)
        else:
            self._interrupted.wait(timeout)
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        for conn in (self._pg, self._sqlite):
            if conn is not None:
                conn.close()


