"""Brings the job store's schema up to date with Alembic, on every start."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "dhserve_alembic_version"
# Any constant: PostgreSQL serialises concurrent starts on it, so one process migrates.
ADVISORY_LOCK = 0x64687365


def _config(conn: sa.Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head() -> str | None:
    """The newest schema revision (None only for a tree without migrations)."""
    return ScriptDirectory.from_config(_config(None)).get_current_head()


def revisions() -> list[str]:
    """Every schema revision this dhserve knows, oldest first."""
    script = ScriptDirectory.from_config(_config(None))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def current(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(conn: sa.Connection) -> None:
    """Applies missing migrations inside the caller's write transaction (SQLite: BEGIN
    IMMEDIATE; PostgreSQL: an advisory lock), so concurrent starts cannot race."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    if current(conn) != head():
        command.upgrade(_config(conn), "head")
