"""How dhserve opens its job store's database: the SQLAlchemy engine for a URL (SQLite or
PostgreSQL) and how each SQLite connection starts (WAL, its own transactions, a busy timeout)."""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5     # an unreachable PostgreSQL host fails in seconds, not minutes


def create_engine(url: str) -> Engine:
    """The engine dhserve uses for `url`: SQLite with WAL and its own transactions,
    PostgreSQL through psycopg with a connect timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S,
                                                     "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            prepare_sqlite(dbapi_connection)

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("dhserve_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    parsed = sa.engine.make_url(url)
    if parsed.drivername == "postgresql":       # SQLAlchemy would look for psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S      # libpq: none by default
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def prepare_sqlite(connection: sqlite3.Connection) -> None:
    """How each SQLite connection of the store starts: its transactions are ours (BEGIN
    IMMEDIATE for writes), it waits for locks, and the file is in WAL mode."""
    connection.isolation_level = None       # we emit BEGIN ourselves
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    _enter_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enter_wal(cursor: sqlite3.Cursor) -> None:
    """Switches a new database file to WAL. Several processes opening a new file at once
    meet here: the switch needs the file to themselves, and SQLite answers "database is
    locked" at once, without its busy timeout, to all but one (a lock upgrade that could
    deadlock). So: wait a little and retry, within the busy timeout. An existing WAL file
    answers at once."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))
