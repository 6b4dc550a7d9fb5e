"""Downstream services' schemas, the saga's order records, and the saga_status view.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SAGA_STATES = (
    "'STARTED','PENDING','AWAITING_APPROVAL','COMPENSATING','COMPLETED','FAILED',"
    "'COMPENSATION_FAILED'"
)
STEP_STATUSES = "'pending','executing','completed','failed','compensating','compensated'"


def upgrade() -> None:
    op.execute("""
        CREATE SCHEMA inventory;
        CREATE TABLE inventory.items (
            sku          text PRIMARY KEY,
            on_hand      bigint NOT NULL CHECK (on_hand >= 0),
            reserved     bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
            price_cents  bigint  NOT NULL CHECK (price_cents >= 0),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT stock_never_below_zero CHECK (reserved <= on_hand)
        );
        -- One row per key, whatever happened under it: 'refused' keeps the first answer,
        -- 'released' with no lines is a release that came first (a late reserve is refused).
        CREATE TABLE inventory.reservations (
            reservation_id  text PRIMARY KEY,
            idempotency_key text NOT NULL UNIQUE,
            order_id        text NOT NULL,
            status          text NOT NULL CHECK (status IN ('active', 'released', 'refused')),
            total_cents     bigint NOT NULL,
            refusal         text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            released_at     timestamptz
        );
        CREATE INDEX ON inventory.reservations (order_id);
        CREATE TABLE inventory.reservation_lines (
            reservation_id   text NOT NULL REFERENCES inventory.reservations,
            sku              text NOT NULL REFERENCES inventory.items,
            quantity         integer NOT NULL CHECK (quantity > 0),
            unit_price_cents bigint NOT NULL,
            PRIMARY KEY (reservation_id, sku)
        );

        CREATE SCHEMA payments;
        CREATE TABLE payments.payments (
            payment_id      text PRIMARY KEY,
            idempotency_key text NOT NULL UNIQUE,
            order_id        text NOT NULL,
            amount_cents    bigint NOT NULL CHECK (amount_cents >= 0),
            payment_method  text,
            -- 'voided': a refund came before any capture, so a late capture is refused
            status          text NOT NULL CHECK (status IN ('captured', 'refunded', 'voided')),
            created_at      timestamptz NOT NULL DEFAULT now(),
            refunded_at     timestamptz
        );
        CREATE INDEX ON payments.payments (order_id);
        -- the simulated provider's memory of calls per key (pm_card_flaky fails the first two)
        CREATE TABLE payments.provider_calls (
            idempotency_key text PRIMARY KEY,
            calls           integer NOT NULL
        );

        CREATE SCHEMA shipping;
        CREATE TABLE shipping.shipments (
            shipment_id     text PRIMARY KEY,
            idempotency_key text NOT NULL UNIQUE,
            order_id        text NOT NULL,
            -- 'voided': a cancel came before any booking, so a late booking is refused
            status          text NOT NULL CHECK (status IN ('created', 'cancelled', 'voided')),
            tracking_number text,
            country         text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            cancelled_at    timestamptz
        );
        CREATE INDEX ON shipping.shipments (order_id);

        CREATE SCHEMA notifications;
        CREATE TABLE notifications.notifications (
            notification_id text PRIMARY KEY,
            idempotency_key text NOT NULL UNIQUE,
            order_id        text NOT NULL,
            kind            text NOT NULL CHECK (kind IN ('confirmation', 'cancellation')),
            "to"            text NOT NULL,
            -- 'voided': the order was cancelled before its confirmation went out
            status          text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'voided')),
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX ON notifications.notifications (order_id);

        -- switches that make one downstream operation unreachable (PUT /faults/{operation})
        CREATE SCHEMA faults;
        CREATE TABLE faults.switches (
            operation  text PRIMARY KEY,
            down       boolean NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE SCHEMA orders;
        CREATE TABLE orders.seeds (
            name       text PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
    """)
    op.execute(f"""
        CREATE TABLE orders.orders (
            order_id        text PRIMARY KEY,
            saga_id         text NOT NULL UNIQUE,
            idempotency_key text UNIQUE,
            request         jsonb NOT NULL,
            request_sha256  text NOT NULL,
            state           text NOT NULL CHECK (state IN ({SAGA_STATES})),
            current_step    text,
            error           text,
            total_cents     bigint,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX orders_newest ON orders.orders (created_at DESC, order_id);
        CREATE INDEX orders_by_state ON orders.orders (state, created_at DESC);

        -- one row per forward step reached and per compensation run, written by the steps
        CREATE TABLE orders.saga_steps (
            order_id    text NOT NULL REFERENCES orders.orders ON DELETE CASCADE,
            kind        text NOT NULL CHECK (kind IN ('forward', 'compensation')),
            name        text NOT NULL,
            seq         bigserial,
            status      text NOT NULL CHECK (status IN ({STEP_STATUSES})),
            attempts    integer NOT NULL DEFAULT 0,
            error       text,
            output      jsonb,
            started_at  timestamptz,
            finished_at timestamptz,
            PRIMARY KEY (order_id, kind, name)
        );

        CREATE VIEW public.saga_status AS
        SELECT o.saga_id, o.order_id, o.state, o.current_step, o.error,
               w.status AS dbos_status, o.created_at, o.updated_at,
               o.total_cents, w.executor_id, w.application_version
          FROM orders.orders o
          LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id;
        COMMENT ON VIEW public.saga_status IS
            'One row per saga: business state (state) next to the DBOS workflow status';
    """)


def downgrade() -> None:
    op.execute("""
        DROP VIEW public.saga_status;
        DROP SCHEMA orders, faults, notifications, shipping, payments, inventory CASCADE;
    """)
