"""Jobs and render workers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "dhserve_jobs",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("result_info", sa.JSON),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("started_at", Time),
        sa.Column("finished_at", Time),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("lease_expires_at", Time),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
    )
    op.create_index("ix_dhserve_jobs_claim", "dhserve_jobs", ["state", "priority", "seq"])
    op.create_index("ix_dhserve_jobs_lease", "dhserve_jobs", ["state", "lease_expires_at"])
    op.create_index("ix_dhserve_jobs_finished", "dhserve_jobs", ["finished_at"])
    op.create_table(
        "dhserve_workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(128)),
        sa.Column("ready", sa.Boolean, nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("heartbeat_at", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dhserve_workers")
    op.drop_index("ix_dhserve_jobs_finished", "dhserve_jobs")
    op.drop_index("ix_dhserve_jobs_lease", "dhserve_jobs")
    op.drop_index("ix_dhserve_jobs_claim", "dhserve_jobs")
    op.drop_table("dhserve_jobs")
