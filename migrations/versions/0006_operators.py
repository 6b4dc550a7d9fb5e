"""What the operator's console and command line show: every attempt of every step, the
operators' actions, and the indexes their lists and searches read.

- orders.step_attempts: one row per attempt of a forward step or compensation, written by
  the same statements that keep orders.saga_steps (orders/journal.py), so it costs no round
  trip. saga_steps keeps the last attempt's error; this keeps each one's, with its times and
  how it ended (`outcome`: ok, refused, transient, error; null if the process stopped during
  it). Attempts made before this migration are counted in saga_steps.attempts only.
- orders.operator_actions: each approve, reject, cancel and retry-compensation that the
  service accepted, with who asked (the X-Operator header, else 'unknown') and why; written
  by the statement that settles the request (orders/control.py), so a refused request
  leaves nothing here.
- saga_status gets `customer_id` (from the stored request), which the console searches.
- Indexes for the lists: newest first with a stable tie-break, (created_at DESC, order_id
  DESC), which also serves the "before this order" cursor of a list's next page (it replaces
  orders_newest, whose order_id went the other way); the customer id; and order id prefixes
  (text_pattern_ops, so that LIKE 'abc%' reads the index whatever the collation).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OUTCOMES = "'ok', 'refused', 'transient', 'error'"  # as saga_step_attempts_total's result
ACTIONS = "'approve', 'reject', 'cancel', 'retry-compensation'"


def _migration(file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_migration_{file[:4]}", Path(__file__).with_name(file)
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0005 = _migration("0005_attention.py")
VIEW_0005_COLUMNS = f""",
               {_0005.NEEDS_ATTENTION} AS needs_attention,
               {_0005.ATTENTION_REASON} AS attention_reason,
               {_0005.TRACE_ID} AS trace_id"""
VIEW_0006 = _0005.VIEW_0002.format(
    extra=VIEW_0005_COLUMNS + ",\n               o.request ->> 'customer_id' AS customer_id"
)
COMMENT = """COMMENT ON VIEW public.saga_status IS
            'One row per saga: business state (state) next to the DBOS workflow status';"""


def upgrade() -> None:
    op.execute(f"""
        CREATE TABLE orders.step_attempts (
            order_id    text NOT NULL,
            kind        text NOT NULL,
            name        text NOT NULL,
            attempt     integer NOT NULL CHECK (attempt >= 1),
            started_at  timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            outcome     text CHECK (outcome IN ({OUTCOMES})),
            error       text,
            PRIMARY KEY (order_id, kind, name, attempt),
            FOREIGN KEY (order_id, kind, name) REFERENCES orders.saga_steps ON DELETE CASCADE
        );
        COMMENT ON TABLE orders.step_attempts IS
            'Every attempt of every step: when, and how it ended (null: the process stopped)';

        CREATE TABLE orders.operator_actions (
            id       bigserial PRIMARY KEY,
            order_id text NOT NULL REFERENCES orders.orders ON DELETE CASCADE,
            action   text NOT NULL CHECK (action IN ({ACTIONS})),
            at       timestamptz NOT NULL DEFAULT now(),
            by       text NOT NULL,
            reason   text
        );
        CREATE INDEX operator_actions_by_order ON orders.operator_actions (order_id, id);
        COMMENT ON TABLE orders.operator_actions IS
            'Each operator request the service accepted, with who (X-Operator) and why';

        CREATE OR REPLACE VIEW public.saga_status AS {VIEW_0006};
        {COMMENT}

        DROP INDEX orders.orders_newest;
        CREATE INDEX orders_newest_first ON orders.orders (created_at DESC, order_id DESC);
        CREATE INDEX orders_by_customer
            ON orders.orders ((request ->> 'customer_id'), created_at DESC, order_id DESC);
        CREATE INDEX orders_by_id_prefix ON orders.orders (order_id text_pattern_ops);
    """)


def downgrade() -> None:
    op.execute(f"""
        DROP VIEW public.saga_status;
        CREATE VIEW public.saga_status AS {_0005.VIEW_0002.format(extra=VIEW_0005_COLUMNS)};
        {COMMENT}
        DROP INDEX orders.orders_newest_first;
        CREATE INDEX orders_newest ON orders.orders (created_at DESC, order_id);
        DROP INDEX orders.orders_by_id_prefix;
        DROP INDEX orders.orders_by_customer;
        DROP TABLE orders.operator_actions;
        DROP TABLE orders.step_attempts;
    """)
