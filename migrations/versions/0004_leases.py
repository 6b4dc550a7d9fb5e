"""Executor leases: which process holds each executor id, for how long its heartbeat counts,
and who took it over.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- An executor is alive only while its lock is held AND its heartbeat is younger than
        -- its lease_seconds (runtime/executors.py); the holding process names itself by its
        -- instance, which also ends the application_name of its lock session. A takeover
        -- clears instance, so that a process that was only cut off learns it on its return.
        ALTER TABLE orders.executors
            ADD COLUMN instance      text,
            ADD COLUMN lease_seconds double precision NOT NULL DEFAULT 15
                CHECK (lease_seconds > 0),
            ADD COLUMN taken_over_at timestamptz,
            ADD COLUMN taken_over_by text;
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE orders.executors
            DROP COLUMN instance, DROP COLUMN lease_seconds,
            DROP COLUMN taken_over_at, DROP COLUMN taken_over_by
    """)
