"""The event bus of choreographed orders: rows in PostgreSQL, handlers as DBOS workflows.

An event is a row of orders.events, written in the same transaction as the effect or the
decision it announces. The same statement routes it: for each subscriber it writes a row of
orders.deliveries naming the DBOS workflow that handles it there (workflows/choreography.py),
under an id made of the order's saga id, the event and the subscriber. The handler that
emitted the event then starts those workflows as its DBOS children (an API-only process
enqueues the first handler in the same statement instead, with SQL `dbos.enqueue_workflow`).
Each event is handled once per subscriber: an order has each type of event at most once
(emitting it again, as a replay after a crash does, changes nothing), a delivery's workflow
id is its primary key, and DBOS runs a workflow id once.

Who reacts to what is the table ROUTES, made from the four stages of the saga: each stage's
service does its step after the event before it, announces it done (or failed), and undoes
it when the stage after it has undone its own (or failed without acting). The order service
(`orders`) opens the approval wait, and turns the last event of either end into the
order's end (OrderCompleted, OrderFailed). Every reaction starts at most one other, so an
order has one live handler at a time, and a compensation cannot overtake the step it undoes.
"""

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from orders.model import Order

Conn = psycopg.Connection[Any]
Service = Literal["orders", "inventory", "payments", "shipping", "notifications"]

EVENT_QUEUE = "events"  # the DBOS queue every handler is on
HANDLER_WORKFLOW = "handle_event"  # the DBOS workflow name of a handler


class Stage(NamedTuple):
    """One forward step of the saga as a service's reactions, with the events it emits."""

    service: Service
    step: str
    done: str
    failed: str
    undo: str
    undone: str


STAGES = (
    Stage(
        "inventory",
        "reserve_inventory",
        "InventoryReserved",
        "ReservationFailed",
        "release_reservation",
        "InventoryReleased",
    ),
    Stage(
        "payments",
        "process_payment",
        "PaymentCaptured",
        "PaymentFailed",
        "refund_payment",
        "PaymentRefunded",
    ),
    Stage(
        "shipping",
        "create_shipment",
        "ShipmentCreated",
        "ShipmentFailed",
        "cancel_shipment",
        "ShipmentCancelled",
    ),
    Stage(
        "notifications",
        "send_confirmation",
        "OrderConfirmed",
        "ConfirmationFailed",
        "send_cancellation_notice",
        "CancellationSent",
    ),
)
# The order service's own events.
ORDER_PLACED = "OrderPlaced"
ORDER_APPROVED = "OrderApproved"
APPROVAL_FAILED = "ApprovalFailed"  # rejected, not approved in time, or cancelled meanwhile
ORDER_CANCELLED = "OrderCancelled"
ORDER_COMPLETED = "OrderCompleted"
ORDER_FAILED = "OrderFailed"

END_EVENTS = (ORDER_COMPLETED, ORDER_FAILED)  # a choreographed order's last event

EMITTED_BY: dict[str, Service] = {
    ORDER_PLACED: "orders",
    ORDER_APPROVED: "orders",
    APPROVAL_FAILED: "orders",
    ORDER_CANCELLED: "orders",
    ORDER_COMPLETED: "orders",
    ORDER_FAILED: "orders",
    **{event: s.service for s in STAGES for event in (s.done, s.failed, s.undone)},
}

# Reactions (what a handler does) besides each stage's step and undo (named after them).
AWAIT_APPROVAL = "await_approval"
COMPLETE_ORDER = "complete_order"
FAIL_ORDER = "fail_order"


@dataclass(frozen=True)
class Route:
    """`subscriber` does `reaction` on an event of type `event` whose payload and policy
    satisfy `when`."""

    event: str
    subscriber: Service
    reaction: str
    when: Callable[[dict[str, Any], dict[str, Any]], bool] = lambda payload, policy: True


def _needs_approval(payload: dict[str, Any], policy: dict[str, Any]) -> bool:
    return bool(payload["total_cents"] >= policy["approval_threshold_cents"])


def _undoes_itself(payload: dict[str, Any], policy: dict[str, Any]) -> bool:
    """A failed step that may have acted (it raised, or was cancelled once it had begun) is
    undone by its own service first; one that did nothing passes the undo on."""
    return bool(payload["undo"])


def _routes() -> tuple[Route, ...]:
    inventory, payments, shipping, notifications = STAGES
    routes = [
        Route(ORDER_PLACED, "inventory", inventory.step),
        Route(inventory.done, "orders", AWAIT_APPROVAL, _needs_approval),
        Route(inventory.done, "payments", payments.step, lambda p, q: not _needs_approval(p, q)),
        Route(ORDER_APPROVED, "payments", payments.step),
        Route(APPROVAL_FAILED, "inventory", inventory.undo),
        Route(payments.done, "shipping", shipping.step),
        Route(shipping.done, "notifications", notifications.step),
        Route(notifications.done, "orders", COMPLETE_ORDER),
        Route(inventory.failed, "orders", FAIL_ORDER, lambda p, q: not _undoes_itself(p, q)),
        Route(inventory.undone, "orders", FAIL_ORDER),
    ]
    for before, stage in itertools.pairwise(STAGES):
        routes += [
            Route(stage.failed, before.service, before.undo, lambda p, q: not _undoes_itself(p, q)),
            Route(stage.undone, before.service, before.undo),
        ]
    routes += [Route(s.failed, s.service, s.undo, _undoes_itself) for s in STAGES]
    return tuple(routes)


ROUTES = _routes()
# Nobody needs telling of a cancel (each service sees it at its next step, in the order's
# row); orders/control.py writes OrderCancelled itself, in the statement that accepts it.
assert not any(route.event == ORDER_CANCELLED for route in ROUTES)


class Carried(NamedTuple):
    """What every event of an order carries to its handlers: the order, the policy it was
    placed under (workflows/order_fulfillment.Policy), and its saga id."""

    saga_id: str
    order: Order
    policy: dict[str, Any]


# The workflow carrying an order now (saga_status.workflow_id, migration 0007), as a column
# `carrier` of a statement on orders.orders: the saga, or a choreographed order's newest
# handler (the one waiting for approval, or parked).
CARRIER = """CASE WHEN orders.coordination = 'choreography'
                THEN (SELECT d.workflow_id FROM orders.deliveries d
                       WHERE d.order_id = orders.order_id
                       ORDER BY d.event_seq DESC, d.subscriber DESC LIMIT 1)
                ELSE orders.saga_id END AS carrier"""


def workflow_id(saga_id: str, event: str, subscriber: str) -> str:
    """The id of the workflow that handles `event` of the order at `subscriber`."""
    return f"{saga_id}:{event}:{subscriber}"


def subscribers(event: str, payload: dict[str, Any], policy: dict[str, Any]) -> list[Route]:
    return [r for r in ROUTES if r.event == event and r.when(payload, policy)]


class Delivery(NamedTuple):
    """One (event, subscriber): the workflow that handles it, and what that workflow gets."""

    workflow_id: str
    subscriber: str
    reaction: str
    event: dict[str, Any]  # type, by, payload

    def arguments(self, carried: Carried) -> tuple[Any, ...]:
        """The handler's arguments (workflows/choreography.handle_event)."""
        return (
            self.subscriber,
            self.reaction,
            self.event,
            carried.order,
            carried.policy,
            carried.saga_id,
        )


def emit(
    conn: Conn,
    carried: Carried,
    event: str,
    payload: dict[str, Any],
    *,
    caused_by: str | None,
    enqueue_as: str | None = None,
    trace: dict[str, str] | None = None,
) -> bool:
    """Write the event and its deliveries, in the caller's transaction (one statement).
    False if the order had this event already: nothing is written again.

    `caused_by`: the handler emitting it (its workflow id), which then starts the handlers
    (`successors`); None for the order service's own requests. With `enqueue_as` (an
    application version), the same statement also enqueues the handlers on EVENT_QUEUE,
    for a process that runs none itself (an API-only one), on the trace `trace` (a W3C
    carrier, as DBOS keeps it with a workflow) if given."""
    routes = subscribers(event, payload, carried.policy)
    by = EMITTED_BY[event]
    deliveries = [
        Delivery(
            workflow_id(carried.saga_id, event, r.subscriber),
            r.subscriber,
            r.reaction,
            {"type": event, "by": by, "payload": payload},
        )
        for r in routes
    ]
    row = conn.execute(
        """WITH event AS (
               INSERT INTO orders.events (order_id, type, by, payload, caused_by)
               VALUES (%(order_id)s, %(type)s, %(by)s, %(payload)s, %(caused_by)s)
               ON CONFLICT (order_id, type) DO NOTHING
               RETURNING seq),
           routed AS (
               SELECT * FROM unnest(%(ids)s::text[], %(subscribers)s::text[],
                                    %(reactions)s::text[], %(arguments)s::text[])
                             AS r(workflow_id, subscriber, reaction, args)),
           delivered AS (
               INSERT INTO orders.deliveries
                      (workflow_id, order_id, event_seq, subscriber, reaction)
               SELECT r.workflow_id, %(order_id)s, event.seq, r.subscriber, r.reaction
                 FROM event, routed r
               RETURNING workflow_id),
           enqueued AS (
               SELECT dbos.enqueue_workflow(
                          workflow_name => %(workflow)s, queue_name => %(queue)s,
                          positional_args => ARRAY(SELECT json_array_elements(r.args::json)),
                          workflow_id => r.workflow_id, app_version => %(version)s)
                 FROM routed r JOIN delivered d USING (workflow_id)
                WHERE %(version)s::text IS NOT NULL)
           SELECT (SELECT count(*) FROM event), (SELECT count(*) FROM enqueued)""",
        {
            "order_id": carried.order["order_id"],
            "type": event,
            "by": by,
            "payload": Jsonb(payload),
            "caused_by": caused_by,
            "ids": [d.workflow_id for d in deliveries],
            "subscribers": [d.subscriber for d in deliveries],
            "reactions": [d.reaction for d in deliveries],
            "arguments": [json.dumps(d.arguments(carried)) for d in deliveries],
            "workflow": HANDLER_WORKFLOW,
            "queue": EVENT_QUEUE,
            "version": enqueue_as,
        },
    ).fetchone()
    assert row is not None
    if trace is not None and row[1]:
        # What DBOS's own enqueue options record (`otel_context`): the worker continues
        # the trace. (A second statement: the first cannot see the rows it enqueued.)
        conn.execute(
            """UPDATE dbos.workflow_status
                  SET attributes = coalesce(attributes, '{}')
                                   || jsonb_build_object(%s::text, %s::jsonb)
                WHERE workflow_uuid = ANY(%s)""",
            (TRACE_ATTRIBUTE, Jsonb(trace), [d.workflow_id for d in deliveries]),
        )
    return bool(row[0])


TRACE_ATTRIBUTE = "dbos.otelContext"  # dbos._context.OTEL_CARRIER_ATTRIBUTE


_DELIVERY = """SELECT d.workflow_id, d.subscriber, d.reaction,
                      jsonb_build_object('type', e.type, 'by', e.by, 'payload', e.payload)
                 FROM orders.deliveries d JOIN orders.events e ON e.seq = d.event_seq"""


def successors(conn: Conn, order_id: str, caused_by: str | None) -> list[Delivery]:
    """The deliveries of the events that `caused_by` emitted for the order (committed ones
    only, whatever a rolled-back attempt had written), in a fixed order: a replay of the
    handler asks again and gets the same answer."""
    rows = conn.execute(
        _DELIVERY
        + """ WHERE e.order_id = %s AND e.caused_by IS NOT DISTINCT FROM %s
              ORDER BY d.event_seq, d.subscriber""",
        (order_id, caused_by),
    ).fetchall()
    return [Delivery(*row) for row in rows]


def unstarted(conn: Conn, min_age_seconds: float) -> list[tuple[Delivery, Carried]]:
    """Deliveries at least `min_age_seconds` old whose workflow does not exist: the process
    that was to start it died first (a handler that dies is recovered, and starts them
    then; this finds those of the order service's requests). Each with what it carries,
    from the order's row and its OrderPlaced (which holds the policy)."""
    rows = conn.execute(
        """SELECT o.saga_id, o.request, placed.payload -> 'policy',
                  d.workflow_id, d.subscriber, d.reaction,
                  jsonb_build_object('type', e.type, 'by', e.by, 'payload', e.payload)
             FROM orders.deliveries d
             JOIN orders.events e ON e.seq = d.event_seq
             JOIN orders.orders o ON o.order_id = d.order_id
             JOIN orders.events placed ON placed.order_id = d.order_id AND placed.type = %s
            WHERE e.at <= clock_timestamp() - make_interval(secs => %s)
              AND NOT EXISTS (SELECT 1 FROM dbos.workflow_status w
                               WHERE w.workflow_uuid = d.workflow_id)
            ORDER BY d.event_seq""",
        (ORDER_PLACED, min_age_seconds),
    ).fetchall()
    return [(Delivery(*row[3:]), Carried(row[0], row[1], row[2])) for row in rows]


def of_order(conn: Conn, order_id: str) -> list[dict[str, Any]]:
    """The order's events in the order they happened: type, time, emitter."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT type, at, by FROM orders.events WHERE order_id = %s ORDER BY seq""",
            (order_id,),
        ).fetchall()


# What a journal write inside a handler announces (set by the handler, around the step).
Announcer = Callable[[Conn, Any], None]


class _Announcing(NamedTuple):
    announcer: Announcer
    order_id: str
    handler: str  # the announcing handler's workflow id


_announcing: ContextVar[_Announcing | None] = ContextVar("announcing", default=None)


@contextmanager
def announcing(announcer: Announcer, order_id: str, handler: str) -> Iterator[None]:
    """Journal writes made inside (by steps/runner.py and steps/saga.py) call `announcer`
    with their connection and what they recorded, in the same transaction. `handler`, the
    workflow announcing for the order, is how a step re-run after a crash knows that it
    has announced already (`announced`)."""
    token = _announcing.set(_Announcing(announcer, order_id, handler))
    try:
        yield
    finally:
        _announcing.reset(token)


def atomic(conn: Conn) -> AbstractContextManager[Any]:
    """A transaction on `conn` if a journal write there will announce something (so the
    event commits with it), else nothing: orchestration's writes stay one round trip."""
    return conn.transaction() if _announcing.get() is not None else nullcontext()


def announce(conn: Conn, recorded: Any) -> None:
    """Tell the announcer, if any, what was just recorded on `conn`."""
    current = _announcing.get()
    if current is not None:
        current.announcer(conn, recorded)


def announced(conn: Conn) -> bool:
    """The announcing handler, if any, has emitted an event already: its step's outcome
    committed with it before a crash, and the order may have moved on since (its next
    handler may even have been started by the sweep, and have undone this step). So the
    step, run again by the handler's recovery, must neither act nor decide again."""
    current = _announcing.get()
    if current is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM orders.events WHERE order_id = %s AND caused_by = %s LIMIT 1",
        (current.order_id, current.handler),
    ).fetchone()
    return row is not None
