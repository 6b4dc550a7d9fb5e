"""Bring the database schema up to date: DBOS's system tables, then ours (Alembic)."""

import logging
import time
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
            # Polled, not waited for: a process blocked in pg_advisory_lock is inside a
            # statement, and DBOS's CREATE INDEX CONCURRENTLY (run by the holder) waits for
            # every running statement to end, so processes starting at once would deadlock.
            # The session lock outlives each commit; no transaction stays open here.
            while not conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK}
            ).scalar_one():
                conn.commit()
                time.sleep(0.1)
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
