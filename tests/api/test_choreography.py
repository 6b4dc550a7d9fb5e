"""Choreographed orders: the same saga carried by the services' events.

The modules of the business outcomes, approvals, cancel, parked compensations and deadlines
run every test for both coordinations (the `style` fixture). This one checks what only a
choreographed order has: its events, in order, with their emitters; each event handled
once per subscriber; duplicates that change nothing; and the same saga, step for step and
effect for effect, as its orchestrated twin.
"""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import effects, order_body, wait_for_state

CHOREOGRAPHY = {"coordination": "choreography"}
AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}

PLACED = [("OrderPlaced", "orders"), ("InventoryReserved", "inventory")]
CAPTURED = [*PLACED, ("PaymentCaptured", "payments")]
SHIPPED = [*CAPTURED, ("ShipmentCreated", "shipping")]
UNDONE_FROM_PAYMENT = [("PaymentRefunded", "payments"), ("InventoryReleased", "inventory")]
FAILED = [("OrderFailed", "orders")]


def place_and_wait(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/orders", params={"wait": 30}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def events(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["by"]) for e in view["events"]]


@pytest.mark.usefixtures("faults_repaired")
@pytest.mark.parametrize(
    ("fields", "down", "expected"),  # down: a service switched down (or an unknown SKU)
    [
        pytest.param(
            {},
            None,
            [*SHIPPED, ("OrderConfirmed", "notifications"), ("OrderCompleted", "orders")],
            id="completed",
        ),
        pytest.param(
            {"payment_method": "pm_card_declined"},
            None,
            [*PLACED, ("PaymentFailed", "payments"), ("InventoryReleased", "inventory"), *FAILED],
            id="declined",
        ),
        pytest.param(
            {"shipping_address": AQ},
            None,
            [*CAPTURED, ("ShipmentFailed", "shipping"), *UNDONE_FROM_PAYMENT, *FAILED],
            id="country-not-served",
        ),
        pytest.param(
            {"customer_email": "ada@bounce.test"},
            None,
            [
                *SHIPPED,
                ("ConfirmationFailed", "notifications"),
                ("ShipmentCancelled", "shipping"),
                *UNDONE_FROM_PAYMENT,
                *FAILED,
            ],
            id="email-bounces",
        ),
        pytest.param(
            {},
            "create_shipment",
            [
                *CAPTURED,
                ("ShipmentFailed", "shipping"),  # it may have acted: shipping undoes its own
                ("ShipmentCancelled", "shipping"),
                *UNDONE_FROM_PAYMENT,
                *FAILED,
            ],
            id="service-stays-down",
        ),
        pytest.param(
            {},
            "unknown-sku",
            [("OrderPlaced", "orders"), ("ReservationFailed", "inventory"), *FAILED],
            id="unknown-sku",
        ),
    ],
)
def test_both_styles_give_the_same_saga_and_a_choreographed_one_its_events(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    fields: dict[str, Any],
    down: str | None,
    expected: list[tuple[str, str]],
) -> None:
    if down not in (None, "unknown-sku"):
        api.put(f"/faults/{down}", json={"down": True}).raise_for_status()
    sku = stock(10, price_cents=1999) if down != "unknown-sku" else "NO-SUCH-SKU"
    orchestrated = order_body({sku: 2}, **fields)
    choreographed = order_body({sku: 2}, **fields, **CHOREOGRAPHY)

    twin = place_and_wait(api, orchestrated)
    view = place_and_wait(api, choreographed)

    assert (view["coordination"], twin["coordination"]) == ("choreography", "orchestration")
    assert events(view) == expected
    assert twin["events"] == []
    times = [e["at"] for e in view["events"]]
    assert times == sorted(times)
    assert same_saga(view) == same_saga(twin)
    assert effects(db, view["order_id"]) == effects(db, twin["order_id"])
    assert view["dbos_status"] == "SUCCESS"
    assert not view["needs_attention"]


def same_saga(view: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the coordination: states, errors, steps and compensations
    (their order, status, attempts and errors)."""

    def step(s: dict[str, Any]) -> tuple[Any, ...]:
        return (s["name"], s["status"], s["attempts"], s["error"])

    return {
        "state": view["state"],
        "error": view["error"],
        "total_cents": view["total_cents"],
        "current_step": view["current_step"],
        "steps": [step(s) for s in view["steps"]],
        "compensations": [step(s) for s in view["compensations"]],
    }


def test_an_approval_is_an_event_of_the_order_service(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    sku = stock(5, price_cents=50_000)
    body = order_body({sku: 2}, **CHOREOGRAPHY)
    api.post("/orders", json=body).raise_for_status()
    waiting = wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")

    api.post(f"/orders/{body['order_id']}/approve").raise_for_status()
    done = place_and_wait(api, body)

    assert events(waiting) == PLACED
    assert waiting["dbos_status"] == "PENDING"  # the order service's handler, waiting
    assert done["state"] == "COMPLETED"
    assert events(done)[2] == ("OrderApproved", "orders")
    assert events(done)[-1] == ("OrderCompleted", "orders")


def test_a_rejection_and_a_cancel_are_events_too(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    sku = stock(5, price_cents=50_000)
    rejected, cancelled = (order_body({sku: 1}, **CHOREOGRAPHY) for _ in range(2))
    for body in (rejected, cancelled):
        body["items"][0]["quantity"] = 2
        api.post("/orders", json=body).raise_for_status()
        wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")

    api.post(f"/orders/{rejected['order_id']}/reject").raise_for_status()
    api.post(f"/orders/{cancelled['order_id']}/cancel").raise_for_status()
    views = [place_and_wait(api, body) for body in (rejected, cancelled)]

    released = [("InventoryReleased", "inventory"), *FAILED]
    assert events(views[0]) == [*PLACED, ("ApprovalFailed", "orders"), *released]
    assert events(views[1]) == [
        *PLACED,
        ("OrderCancelled", "orders"),
        ("ApprovalFailed", "orders"),
        *released,
    ]
    assert [v["state"] for v in views] == ["FAILED", "FAILED"]


def test_each_event_is_handled_once_per_subscriber(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    view = place_and_wait(api, order_body({stock(5): 1}, shipping_address=AQ, **CHOREOGRAPHY))

    handlers = db.execute(
        """SELECT e.type, d.subscriber, w.status, w.queue_name, w.name
             FROM orders.events e
             JOIN orders.deliveries d ON d.event_seq = e.seq
             LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = d.workflow_id
            WHERE e.order_id = %s ORDER BY e.seq""",
        (view["order_id"],),
    ).fetchall()
    every_handler = db.execute(
        """SELECT count(*) FROM dbos.workflow_status w
            WHERE w.name = 'handle_event' AND w.workflow_uuid LIKE %s""",
        (view["saga_id"] + ":%",),
    ).fetchone()

    assert handlers == [
        ("OrderPlaced", "inventory", "SUCCESS", None, "handle_event"),
        ("InventoryReserved", "payments", "SUCCESS", None, "handle_event"),
        ("PaymentCaptured", "shipping", "SUCCESS", None, "handle_event"),
        ("ShipmentFailed", "payments", "SUCCESS", None, "handle_event"),
        ("PaymentRefunded", "inventory", "SUCCESS", None, "handle_event"),
        ("InventoryReleased", "orders", "SUCCESS", None, "handle_event"),
    ]  # started by the handler before them, not through a queue
    assert every_handler == (len(handlers),)  # none besides the deliveries
    # No orchestrating workflow: the saga id names the order's handlers, not a workflow.
    assert (
        db.execute(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = %s", (view["saga_id"],)
        ).fetchone()
        is None
    )


def test_a_duplicated_event_changes_nothing(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    sku = stock(5)
    view = place_and_wait(api, order_body({sku: 2}, **CHOREOGRAPHY))
    order_id = view["order_id"]
    before = (effects(db, order_id), snapshot(db, order_id), api.get(f"/orders/{order_id}").json())
    deliveries = db.execute(
        """SELECT d.workflow_id, i.inputs FROM orders.deliveries d
             JOIN dbos.workflow_input i ON i.workflow_uuid = d.workflow_id
            WHERE d.order_id = %s ORDER BY d.event_seq""",
        (order_id,),
    ).fetchall()
    assert len(deliveries) == 5

    for workflow_id, inputs in deliveries:
        arguments = json.loads(inputs)["positionalArgs"]
        # The same event delivered again under its own id (DBOS enqueues an id once), and
        # under a new one (a bus that delivers twice): the handler runs, and sees it is no
        # delivery of the bus.
        for again in (workflow_id, workflow_id + ":again"):
            db.execute(
                """SELECT dbos.enqueue_workflow('handle_event', 'events',
                          ARRAY(SELECT json_array_elements(%s::json)), workflow_id => %s,
                          app_version => (SELECT application_version FROM dbos.workflow_status
                                           WHERE workflow_uuid = %s))""",
                (json.dumps(arguments), again, workflow_id),
            )
    duplicates = [workflow_id + ":again" for workflow_id, _ in deliveries]
    wait_for_handlers(db, duplicates)

    outputs = db.execute(
        "SELECT output FROM dbos.workflow_output WHERE workflow_uuid = ANY(%s)", (duplicates,)
    ).fetchall()
    assert [json.loads(o) for (o,) in outputs] == ["duplicate"] * 5
    after = (effects(db, order_id), snapshot(db, order_id), api.get(f"/orders/{order_id}").json())
    assert after == before


def snapshot(db: psycopg.Connection[Any], order_id: str) -> tuple[Any, ...]:
    """The order's journal, events and deliveries as they are."""
    row = db.execute(
        """SELECT (SELECT json_agg(s ORDER BY seq) FROM orders.saga_steps s WHERE order_id = %s),
                  (SELECT json_agg(e ORDER BY seq) FROM orders.events e WHERE order_id = %s),
                  (SELECT json_agg(d ORDER BY workflow_id) FROM orders.deliveries d
                    WHERE order_id = %s),
                  (SELECT count(*) FROM orders.step_attempts WHERE order_id = %s)""",
        (order_id,) * 4,
    ).fetchone()
    assert row is not None
    return tuple(row)


def wait_for_handlers(db: psycopg.Connection[Any], workflow_ids: list[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = db.execute(
            """SELECT count(*) FROM dbos.workflow_status
                WHERE workflow_uuid = ANY(%s) AND status = 'SUCCESS'""",
            (workflow_ids,),
        ).fetchone()
        if row == (len(workflow_ids),):
            return
        time.sleep(0.05)
    raise AssertionError(f"handlers {workflow_ids} did not all finish")


def test_the_coordination_is_part_of_the_request(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1}, **CHOREOGRAPHY)
    first = api.post("/orders", json=body, headers={"Idempotency-Key": body["order_id"]})
    again = api.post("/orders", json=body, headers={"Idempotency-Key": body["order_id"]})
    other = api.post(
        "/orders",
        json={**body, "coordination": "orchestration"},
        headers={"Idempotency-Key": body["order_id"]},
    )
    bad = api.post("/orders", json={**body, "coordination": "telepathy"})

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["saga_id"] == first.json()["saga_id"]
    assert other.status_code == 409
    assert bad.status_code == 422
    assert "coordination" in bad.text
    assert place_and_wait(api, body)["state"] == "COMPLETED"


def test_the_list_filters_by_coordination(api: httpx.Client, stock: Callable[..., str]) -> None:
    sku = stock(10)
    customer = f"c-{time.monotonic_ns()}"
    ours = [
        place_and_wait(api, order_body({sku: 1}, customer_id=customer, **style))["order_id"]
        for style in ({}, CHOREOGRAPHY, {"coordination": "orchestration"})
    ]

    def listed(coordination: str | None) -> list[tuple[str, str]]:
        params = {"search": customer} | ({"coordination": coordination} if coordination else {})
        response = api.get("/orders", params=params)
        assert response.status_code == 200, response.text
        return [(o["order_id"], o["coordination"]) for o in response.json()["orders"]]

    assert listed("choreography") == [(ours[1], "choreography")]
    assert listed("orchestration") == [(ours[2], "orchestration"), (ours[0], "orchestration")]
    assert len(listed(None)) == 3
    assert api.get("/orders", params={"coordination": "both"}).status_code == 422


def test_an_order_whose_first_handler_was_never_started_is_started_by_the_sweep(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    """POST /orders stores a choreographed order with its OrderPlaced and, once that has
    committed, starts the handler; a process that dies in between leaves a delivery with no
    workflow, which the housekeeping sweep starts (here called at once)."""
    from api import db as api_db
    from orders import intake
    from runtime import lifecycle
    from workflows import choreography

    body = order_body({stock(5): 1}, **CHOREOGRAPHY)
    with api_db.connection() as conn:  # stored as POST /orders stores it; never begun
        intake.place(conn, body, None, lambda c, p: choreography.place(c, p.saga_id, p.order))
    time.sleep(0.5)
    assert api.get(f"/orders/{body['order_id']}").json()["state"] == "STARTED"
    assert events(api.get(f"/orders/{body['order_id']}").json()) == [("OrderPlaced", "orders")]

    lifecycle.sweep(min_age_seconds=0.0)
    wait_for_state(api, body["order_id"], "COMPLETED")
    wait_for_handlers(db, [f"{view_of(api, body)['saga_id']}:OrderConfirmed:orders"])
    view = view_of(api, body)

    assert view["state"] == "COMPLETED"
    assert events(view)[-1] == ("OrderCompleted", "orders")
    assert effects(db, body["order_id"])["payments"] == [("captured", 1000)]


def view_of(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = api.get(f"/orders/{body['order_id']}").json()
    return view


def test_a_choreographed_saga_is_counted_in_the_metrics_as_an_orchestrated_one(
    api: httpx.Client, live_url: str, stock: Callable[..., str]
) -> None:
    from tests.support.scrape import moved, scrape

    before = scrape(live_url)
    view = place_and_wait(api, order_body({stock(5): 1}, **CHOREOGRAPHY))
    wait_for_handlers_of(api, view)
    after = scrape(live_url)

    changes = moved(before, after, ("saga_",))
    # (at least: sagas of other modules may still be finishing in this process meanwhile)
    assert changes.get("saga_started_total{}", 0) >= 1
    assert changes.get("saga_finished_total{state=COMPLETED}", 0) >= 1
    for step in ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation"):
        assert changes.get(f"saga_step_attempts_total{{result=ok,step={step}}}", 0) >= 1
        assert changes.get(f"saga_step_duration_seconds_count{{step={step}}}", 0) >= 1


def wait_for_handlers_of(api: httpx.Client, view: dict[str, Any]) -> None:
    deadline = time.monotonic() + 20
    while view_of(api, view)["dbos_status"] != "SUCCESS" and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.usefixtures("faults_repaired")
def test_a_handler_replayed_after_its_event_neither_acts_nor_decides_again(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    """A handler killed after its step's outcome and event committed, but before DBOS
    checkpointed the step, runs the step again when it is recovered; meanwhile the order
    may have moved on (the sweep may even have started the next handler, which undid the
    step). `make chaos` saw both: a payment re-run after its refund, refused, announcing a
    second PaymentFailed; a cancelled shipment re-run while its service was down, parking a
    FAILED order. Here the steps are run again in the handlers' names, as a recovery does."""
    from orders import events
    from steps.payments import process_payment, refund_payment
    from steps.runner import ANNOUNCED

    view = place_and_wait(api, order_body({stock(5): 1}, shipping_address=AQ, **CHOREOGRAPHY))
    order_id, saga_id = view["order_id"], view["saga_id"]
    order = db.execute("SELECT request FROM orders.orders WHERE order_id = %s", (order_id,))
    stored = order.fetchone()
    assert stored is not None
    before = (effects(db, order_id), snapshot(db, order_id), view_of(api, view))
    heard: list[Any] = []
    api.put("/faults/refund_payment", json={"down": True}).raise_for_status()

    payer = events.workflow_id(saga_id, "InventoryReserved", "payments")
    with events.announcing(lambda conn, recorded: heard.append(recorded), order_id, payer):
        paid = process_payment(stored[0], view["total_cents"])
    refunder = events.workflow_id(saga_id, "ShipmentFailed", "payments")
    with events.announcing(lambda conn, recorded: heard.append(recorded), order_id, refunder):
        refunded = refund_payment(stored[0], "again")  # its service is down: it would fail

    assert (paid, refunded) == (ANNOUNCED, ANNOUNCED)
    assert heard == []
    assert (effects(db, order_id), snapshot(db, order_id), view_of(api, view)) == before
    # The control: in the name of a handler that announced nothing, the step does run.
    stranger = events.workflow_id(saga_id, "NoSuchEvent", "payments")
    with events.announcing(lambda conn, recorded: heard.append(recorded), order_id, stranger):
        again = process_payment(stored[0], view["total_cents"])
    assert again["outcome"] == "refused"  # the key's answer now: refunded
    assert len(heard) == 1
