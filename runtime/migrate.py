"""Bring the database schema up to date: DBOS's system tables, then ours (Alembic)."""

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from dbos import DBOS

from runtime.database import sqlalchemy_url

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Any fixed number: serialises schema changes when several processes start at once.
MIGRATION_LOCK = 7_205_119_386


def migrate(url: str) -> None:
    """Apply DBOS's migrations and ours, holding an advisory lock so starts can overlap."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            # The session lock outlives this commit; an open transaction here would block
            # DBOS's CREATE INDEX CONCURRENTLY forever.
            conn.commit()
            try:
                # Our saga_status view reads dbos.workflow_status, so DBOS's tables go first.
                DBOS.migrate(url)
                config = Config(toml_file=str(ROOT / "pyproject.toml"))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()
    log.info("database schema is up to date")
