"""Bring the database schema up to date: DBOS's system tables, then ours (Alembic)."""

import logging
import secrets
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from dbos import DBOS

from runtime.database import LIVENESS, sqlalchemy_url, through_start_outages
from runtime.settings import Settings, get_settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Any fixed number: serialises schema changes when several processes start at once.
MIGRATION_LOCK = 7_205_119_386
MIGRATE_APP_PREFIX = "order-saga migrate "  # + this process's nonce: its lock sessions
# The server ends a lock session silent for this long, so that an orphan (its client cut
# off, the answer to its lock lost) cannot keep every start waiting; far longer than any
# pause between two migration statements.
IDLE_SESSION_SECONDS = 60


def migrate(url: str, settings: Settings | None = None) -> None:
    """Apply DBOS's migrations and ours, holding an advisory lock so starts can overlap,
    then write into orders.settings what the views read of `settings` (this process's by
    default): ATTENTION_AFTER_SECONDS, for saga_status.needs_attention.
    A connection that fails meanwhile (the database restarting, a bad network) means: all
    of it again, for up to START_WAIT_SECONDS (each migration is applied once, whatever was
    committed before stays)."""
    name = MIGRATE_APP_PREFIX + secrets.token_hex(6)
    given = settings or get_settings()
    through_start_outages(lambda: _migrate(url, name, given), "migrating")
    log.info("database schema is up to date")


def _migrate(url: str, name: str, settings: Settings) -> None:
    engine = sa.create_engine(
        sqlalchemy_url(url),
        poolclass=sa.NullPool,
        connect_args={**LIVENESS, "application_name": name},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET idle_session_timeout = {IDLE_SESSION_SECONDS * 1000}"))
            conn.commit()
            # Polled, not waited for: a process blocked in pg_advisory_lock is inside a
            # statement, and DBOS's CREATE INDEX CONCURRENTLY (run by the holder) waits for
            # every running statement to end, so processes starting at once would deadlock.
            # The session lock outlives each commit; no transaction stays open here.
            while not conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK}
            ).scalar_one():
                # One of this process's own earlier tries may hold it (its answer was lost).
                conn.execute(_END_OWN_ORPHAN, {"k": MIGRATION_LOCK, "name": name})
                conn.commit()
                time.sleep(0.1)
            conn.commit()
            try:
                # Our saga_status view reads dbos.workflow_status, so DBOS's tables go first.
                DBOS.migrate(url)
                config = Config(toml_file=str(ROOT / "pyproject.toml"))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.execute(_WRITE_SETTINGS, {"after": settings.attention_after_seconds})
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


# The database's copy of the settings its views read (migration 0005); the last process to
# start wins. Unchanged values are not written again, so updated_at says when it changed.
_WRITE_SETTINGS = sa.text("""
    INSERT INTO orders.settings AS s (attention_after_seconds) VALUES (:after)
    ON CONFLICT (singleton) DO UPDATE
       SET attention_after_seconds = excluded.attention_after_seconds, updated_at = now()
     WHERE s.attention_after_seconds IS DISTINCT FROM excluded.attention_after_seconds""")

_END_OWN_ORPHAN = sa.text("""
    SELECT pg_terminate_backend(a.pid)
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND ((l.classid::bigint << 32) | l.objid::bigint) = :k
       AND a.application_name = :name AND a.pid <> pg_backend_pid()""")
