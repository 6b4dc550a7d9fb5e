"""Executors: one row per process that runs sagas, with its heartbeat.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- Written every few seconds by each live process running sagas (runtime/lifecycle.py).
        -- A worker whose heartbeat is old and whose executor-id lock is free is dead: live
        -- workers then take its unfinished sagas over.
        CREATE TABLE orders.executors (
            executor_id  text PRIMARY KEY,
            role         text NOT NULL,
            host         text NOT NULL,
            pid          integer NOT NULL,
            started_at   timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL
        );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE orders.executors")
