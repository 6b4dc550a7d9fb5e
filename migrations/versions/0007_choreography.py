"""Choreography: an order carried by events instead of by one workflow (docs/CHOREOGRAPHY.md).

- orders.orders.coordination: 'orchestration' (one DBOS workflow, the saga_id, runs the
  saga) or 'choreography' (the services react to each other's events).
- orders.events: the bus. One row per event of an order, written in the same transaction as
  the effect or decision it announces (orders/events.py), with the handler that emitted it
  (`caused_by`, its DBOS workflow id; null for the order service's requests). An order has
  each type of event at most once: emitting it again (a replay after a crash) changes
  nothing.
- orders.deliveries: one row per (event, subscriber) the event was routed to, written by
  the same statement, with the reaction and the id of the DBOS workflow that handles it
  there; the primary keys make each handled once per subscriber. The emitting handler
  starts those workflows once its reaction is done (durably: as DBOS child workflows); an
  API-only process enqueues them in the same statement instead (SQL dbos.enqueue_workflow).
- saga_status: `coordination`, and `workflow_id`: the workflow that carries the order now,
  the saga_id for orchestration, the newest handler for choreography (an order has one live
  handler at a time: each handler starts the next). dbos_status, executor_id and the rest
  of the DBOS columns are that workflow's, so "its workflow ended without finishing it" and
  the other needs-attention rules read the same for both styles.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COORDINATIONS = "'orchestration', 'choreography'"


def _migration(file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_migration_{file[:4]}", Path(__file__).with_name(file)
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0006 = _migration("0006_operators.py")
_SAGA_WORKFLOW = "LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id"
assert _SAGA_WORKFLOW in _0006.VIEW_0006
# The newest delivery of a choreographed order: the handler carrying it now.
_CURRENT_WORKFLOW = """LEFT JOIN LATERAL (
                SELECT d.workflow_id FROM orders.deliveries d
                 WHERE o.coordination = 'choreography' AND d.order_id = o.order_id
                 ORDER BY d.event_seq DESC, d.subscriber DESC LIMIT 1) h ON true
          LEFT JOIN dbos.workflow_status w
                 ON w.workflow_uuid = coalesce(h.workflow_id, o.saga_id)"""
_FROM = "\n          FROM orders.orders o"
assert _0006.VIEW_0006.count(_FROM) == 1
VIEW_0007 = _0006.VIEW_0006.replace(_SAGA_WORKFLOW, _CURRENT_WORKFLOW).replace(
    _FROM,
    """,
               o.coordination, coalesce(h.workflow_id, o.saga_id) AS workflow_id"""
    + _FROM,
)


def upgrade() -> None:
    op.execute(f"""
        ALTER TABLE orders.orders
            ADD COLUMN coordination text NOT NULL DEFAULT 'orchestration'
                CHECK (coordination IN ({COORDINATIONS}));

        CREATE TABLE orders.events (
            seq      bigserial PRIMARY KEY,
            order_id text NOT NULL REFERENCES orders.orders ON DELETE CASCADE,
            type     text NOT NULL,
            by       text NOT NULL,
            payload  jsonb NOT NULL DEFAULT '{{}}',
            at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            caused_by text,
            UNIQUE (order_id, type)
        );
        CREATE INDEX events_by_order ON orders.events (order_id, seq);
        COMMENT ON TABLE orders.events IS
            'The events of choreographed orders, each written with the effect it announces';

        CREATE TABLE orders.deliveries (
            workflow_id text PRIMARY KEY,
            order_id    text NOT NULL REFERENCES orders.orders ON DELETE CASCADE,
            event_seq   bigint NOT NULL REFERENCES orders.events ON DELETE CASCADE,
            subscriber  text NOT NULL,
            reaction    text NOT NULL,
            UNIQUE (event_seq, subscriber)
        );
        CREATE INDEX deliveries_by_order ON orders.deliveries (order_id, event_seq DESC);
        COMMENT ON TABLE orders.deliveries IS
            'Each event''s subscribers, with the DBOS workflow handling it there';

        CREATE OR REPLACE VIEW public.saga_status AS {VIEW_0007};
        {_0006.COMMENT}
        COMMENT ON COLUMN public.saga_status.workflow_id IS
            'The DBOS workflow carrying the order now: the saga, or its newest event handler';
    """)


def downgrade() -> None:
    op.execute(f"""
        DROP VIEW public.saga_status;
        CREATE VIEW public.saga_status AS {_0006.VIEW_0006};
        {_0006.COMMENT}
        DROP TABLE orders.deliveries;
        DROP TABLE orders.events;
        ALTER TABLE orders.orders DROP COLUMN coordination;
    """)
