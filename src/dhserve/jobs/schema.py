"""The job store's tables, in SQLAlchemy Core. Changes here need an Alembic migration."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Epoch seconds as double precision: portable, comparable, and free of time-zone rules.
Time = sa.Float(precision=53)

jobs = sa.Table(
    "dhserve_jobs", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    # Submission order: times tie within a clock tick, this never does. Assigned under the
    # submit lock as max + 1.
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("stage", sa.String(64), nullable=False, default=""),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("result_info", sa.JSON),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("started_at", Time),
    sa.Column("finished_at", Time),
    sa.Column("worker_id", sa.String(128)),
    sa.Column("lease_expires_at", Time),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_dhserve_jobs_claim", "state", "priority", "seq"),
    sa.Index("ix_dhserve_jobs_lease", "state", "lease_expires_at"),
    sa.Index("ix_dhserve_jobs_finished", "finished_at"),
)

workers = sa.Table(
    "dhserve_workers", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.String(32), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(128)),
    sa.Column("ready", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("heartbeat_at", Time, nullable=False),
    # output frames per second of the running render, over its last few seconds (None: idle)
    sa.Column("fps", sa.Float),
)
