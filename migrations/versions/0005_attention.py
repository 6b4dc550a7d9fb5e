"""Needs attention: the saga_status view says which sagas an operator should look at; and
its trace id (`trace_id`, read from what DBOS keeps with the workflow when tracing is on).

A saga needs attention when it is not COMPLETED/FAILED and either it is parked
(COMPENSATION_FAILED), or its DBOS workflow ended (SUCCESS, ERROR, CANCELLED,
MAX_RECOVERY_ATTEMPTS_EXCEEDED) without finishing it, or it has not changed for more than
ATTENTION_AFTER_SECONDS. A saga AWAITING_APPROVAL is waiting as it should until its approval
deadline, however long that is: its clock starts at the deadline. A stored order whose workflow
does not exist yet falls under the last rule only (the sweeper starts it within seconds).

ATTENTION_AFTER_SECONDS is a setting of the process, but the rule must read the same in psql,
and a view cannot read a process's environment. So each process writes it, at start, after the
migrations and under their lock (runtime/migrate.py), into the one-row table orders.settings,
which the view reads; with no row (a database no process has started on since) the view uses
the setting's default, 300. Every process of a fleet should have the same value: the one that
started last wins. A custom GUC (ALTER DATABASE ... SET) would need rights the app's role may
lack and reaches only sessions opened afterwards; a table is plain to read and to change.

`SELECT count(*) FROM saga_status WHERE needs_attention` (the metrics' gauge) is served by the
partial index orders_unfinished: needs_attention is `state NOT IN ('COMPLETED', 'FAILED') AND
(...)`, the planner proves the index's predicate from its first half, and reads only the
unfinished sagas (each joined to dbos.workflow_status by its primary key), however many
finished ones there are. The index is on (created_at, order_id) so that it also gives the
oldest unfinished saga and `GET /orders?attention=true`'s newest-first order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_ATTENTION_AFTER_SECONDS = 300  # runtime.settings.Settings.attention_after_seconds

# Each rule once, as a condition on the view's row; needs_attention and attention_reason are
# both made of them.
UNFINISHED = "o.state NOT IN ('COMPLETED', 'FAILED')"
PARKED = "o.state = 'COMPENSATION_FAILED'"
ENDED = (
    "coalesce(w.status IN ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED'),"
    " false)"
)
AFTER = (
    "coalesce((SELECT attention_after_seconds FROM orders.settings), "
    f"{DEFAULT_ATTENTION_AFTER_SECONDS})"
)
WAITING = "(o.state = 'AWAITING_APPROVAL' AND o.approval_deadline IS NOT NULL)"
# Seconds since the saga last changed, or, while it waits for approval, since the later of
# that and its deadline (negative before the deadline).
UNCHANGED_FOR = (
    f"extract(epoch FROM now() - CASE WHEN {WAITING} "
    "THEN greatest(o.updated_at, o.approval_deadline) ELSE o.updated_at END)"
)
UNCHANGED = f"{UNCHANGED_FOR} > {AFTER}"

# The top-level AND is what lets the planner use orders_unfinished (see above).
NEEDS_ATTENTION = f"({UNFINISHED} AND ({PARKED} OR {ENDED} OR {UNCHANGED}))"
ATTENTION_REASON = f"""CASE WHEN o.state IN ('COMPLETED', 'FAILED') THEN NULL
                WHEN {PARKED} THEN 'parked'
                WHEN {ENDED} THEN 'workflow ended without finishing it'
                WHEN {UNCHANGED} THEN 'unchanged for ' || floor({UNCHANGED_FOR}) || ' s'
                    || CASE WHEN {WAITING} THEN ' past its approval deadline' ELSE '' END
           END"""

# The saga's trace, when tracing is on: the W3C traceparent ("00-<trace id>-<span id>-01")
# that DBOS keeps with the workflow, under the caller's trace (runtime/tracing.py).
TRACE_ID = (
    "CASE WHEN w.attributes -> 'dbos.otelContext' ->> 'traceparent' ~ '^00-[0-9a-f]{32}-' "
    "THEN substr(w.attributes -> 'dbos.otelContext' ->> 'traceparent', 4, 32) END"
)

VIEW_0002 = """
        SELECT o.saga_id, o.order_id, o.state, o.current_step, o.error,
               w.status AS dbos_status, o.created_at, o.updated_at,
               o.total_cents, w.executor_id, w.application_version,
               s.error AS step_error, s.attempts AS step_attempts,
               o.approval_deadline, o.decision, o.cancel_requested_at, o.parked_count{extra}
          FROM orders.orders o
          LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id
          LEFT JOIN LATERAL (
                SELECT error, attempts FROM orders.saga_steps st
                 WHERE st.order_id = o.order_id AND st.name = o.current_step
                 ORDER BY seq DESC LIMIT 1) s ON true"""


def upgrade() -> None:
    extra = f""",
               {NEEDS_ATTENTION} AS needs_attention,
               {ATTENTION_REASON} AS attention_reason,
               {TRACE_ID} AS trace_id"""
    op.execute(f"""
        -- One row at most: the settings the views read, written by each process at start.
        CREATE TABLE orders.settings (
            singleton               boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            attention_after_seconds double precision NOT NULL
                CHECK (attention_after_seconds > 0),
            updated_at              timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE orders.settings IS
            'Written by each process at start from its environment (ATTENTION_AFTER_SECONDS)';

        -- The unfinished sagas: few, however many have finished (needs_attention, the oldest
        -- unfinished saga, GET /orders?attention=true).
        CREATE INDEX orders_unfinished ON orders.orders (created_at, order_id)
         WHERE state NOT IN ('COMPLETED', 'FAILED');

        CREATE OR REPLACE VIEW public.saga_status AS {VIEW_0002.format(extra=extra)};
        COMMENT ON VIEW public.saga_status IS
            'One row per saga: business state (state) next to the DBOS workflow status';
        COMMENT ON COLUMN public.saga_status.needs_attention IS
            'Not COMPLETED/FAILED, and parked, or its workflow ended, or unchanged for more '
            'than orders.settings.attention_after_seconds (past its deadline if awaiting '
            'approval)';
        COMMENT ON COLUMN public.saga_status.attention_reason IS
            'Why it needs attention (the first rule that holds), else null';
        COMMENT ON COLUMN public.saga_status.trace_id IS
            'The OpenTelemetry trace of the saga (32 hex digits), null when tracing was off';
    """)


def downgrade() -> None:
    op.execute(f"""
        DROP VIEW public.saga_status;
        CREATE VIEW public.saga_status AS {VIEW_0002.format(extra="")};
        COMMENT ON VIEW public.saga_status IS
            'One row per saga: business state (state) next to the DBOS workflow status';
        DROP INDEX orders.orders_unfinished;
        DROP TABLE orders.settings;
    """)
