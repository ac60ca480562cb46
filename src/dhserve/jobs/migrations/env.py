"""Alembic environment: dhserve hands over an open connection (see jobs/migrate.py)."""

from alembic import context

from dhserve.jobs.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table="dhserve_alembic_version", render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
