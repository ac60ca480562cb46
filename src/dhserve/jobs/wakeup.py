"""Wakes an idle worker as soon as there may be work, without polling the jobs table.

PostgreSQL: LISTEN on the channel that submit and requeue NOTIFY. SQLite: watch
`PRAGMA data_version`, which changes whenever another connection commits; reading it costs
microseconds, so checking it every few milliseconds gives prompt claims for free.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from dhserve.errors import first_line
from dhserve.jobs.store import NOTIFY_CHANNEL, JobStore

if TYPE_CHECKING:
    import psycopg

SQLITE_CHECK_S = 0.005
log = logging.getLogger(__name__)


class Wakeup:
    """wait(timeout) returns early when the store may have changed or interrupt() is called.

    A broken LISTEN connection (the server restarted) degrades to timed waits and is
    reconnected on the next wait: the worker then polls, and never stops for it."""

    def __init__(self, store: JobStore):
        self._interrupted = threading.Event()
        self._url = store.engine.url
        self._dialect = store.dialect
        self._pg: psycopg.Connection | None = None
        self._listen_lost = False       # said once; quiet until LISTEN works again
        self._sqlite: sqlite3.Connection | None = None
        if self._dialect == "sqlite" and self._url.database not in (None, "", ":memory:"):
            self._sqlite = sqlite3.connect(self._url.database, check_same_thread=False)
            self._version = _data_version(self._sqlite)
        self._listen()

    def _listen(self) -> None:
        if self._dialect != "postgresql" or self._pg is not None:
            return
        import psycopg

        plain = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self._pg = psycopg.connect(plain, autocommit=True, connect_timeout=5)
            self._pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as exc:
            if not self._listen_lost:
                log.warning("cannot LISTEN for new jobs (%s); polling instead",
                            first_line(exc))
                self._listen_lost = True
            self._close_pg()
            return
        if self._listen_lost:
            log.warning("listening for new jobs again")
            self._listen_lost = False

    def _close_pg(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._listen()
        if self._pg is not None:
            import psycopg

            # notifies() blocks in the socket; wake up in slices to honour interrupt().
            try:
                while not self._interrupted.is_set() and time.monotonic() < deadline:
                    slice_s = min(0.25, max(deadline - time.monotonic(), 0.0))
                    for _ in self._pg.notifies(timeout=slice_s, stop_after=1):
                        return
            except psycopg.Error as exc:
                log.warning("lost the LISTEN connection (%s); reconnecting", first_line(exc))
                self._listen_lost = True
                self._close_pg()
        elif self._sqlite is not None:
            while not self._interrupted.is_set() and time.monotonic() < deadline:
                version = _data_version(self._sqlite)
                if version != self._version:
                    self._version = version
                    return
                self._interrupted.wait(SQLITE_CHECK_S)
        self._interrupted.wait(max(deadline - time.monotonic(), 0.0))
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._close_pg()
        if self._sqlite is not None:
            self._sqlite.close()


def _data_version(conn: sqlite3.Connection) -> int:
    """SQLite's counter of commits by other connections to the database file."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
