"""Saga lifecycle: approvals, cancel requests, parking, and slow-service switches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE orders.orders
            ADD COLUMN approval_deadline   timestamptz,
            ADD COLUMN decision            text
                CHECK (decision IN ('approved', 'rejected', 'timed_out')),
            ADD COLUMN decided_at          timestamptz,
            ADD COLUMN cancel_requested_at timestamptz,
            ADD COLUMN cancel_reason       text,
            ADD COLUMN parked_count        integer NOT NULL DEFAULT 0;

        ALTER TABLE faults.switches
            ADD COLUMN latency_ms integer NOT NULL DEFAULT 0 CHECK (latency_ms >= 0);

        DROP VIEW public.saga_status;
        CREATE VIEW public.saga_status AS
        SELECT o.saga_id, o.order_id, o.state, o.current_step, o.error,
               w.status AS dbos_status, o.created_at, o.updated_at,
               o.total_cents, w.executor_id, w.application_version,
               s.error AS step_error, s.attempts AS step_attempts,
               o.approval_deadline, o.decision, o.cancel_requested_at, o.parked_count
          FROM orders.orders o
          LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id
          LEFT JOIN LATERAL (
                SELECT error, attempts FROM orders.saga_steps st
                 WHERE st.order_id = o.order_id AND st.name = o.current_step
                 ORDER BY seq DESC LIMIT 1) s ON true;
        COMMENT ON VIEW public.saga_status IS
            'One row per saga: business state (state) next to the DBOS workflow status';
    """)


def downgrade() -> None:
    op.execute("""
        DROP VIEW public.saga_status;
        CREATE VIEW public.saga_status AS
        SELECT o.saga_id, o.order_id, o.state, o.current_step, o.error,
               w.status AS dbos_status, o.created_at, o.updated_at,
               o.total_cents, w.executor_id, w.application_version
          FROM orders.orders o
          LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id;
        ALTER TABLE faults.switches DROP COLUMN latency_ms;
        ALTER TABLE orders.orders
            DROP COLUMN approval_deadline, DROP COLUMN decision, DROP COLUMN decided_at,
            DROP COLUMN cancel_requested_at, DROP COLUMN cancel_reason,
            DROP COLUMN parked_count;
    """)
