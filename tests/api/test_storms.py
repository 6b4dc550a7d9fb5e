"""Duplicate storms: the same request sent many times at once, from many clients.

500 POST /orders over 50 Idempotency-Keys from 20 clients make exactly 50 orders, 50 sagas
and 50 captures. Approve, reject and cancel sent 30 at a time to one saga decide it once and
undo it once. What a repeated request answers is orders/control.py's contract:

- approve / reject: 202 while the order is AWAITING_APPROVAL and no other decision stands
  (the same decision again is accepted: the first request may not have woken the saga);
  409 "was already <decision>" once another decision stands or the saga moved on; 409
  "was cancelled" once a cancel came first.
- cancel: 202 until the saga has ended (asking again changes nothing; the first reason
  stays); 409 "can no longer be cancelled" once it is COMPLETED or FAILED. A 202 means the
  saga ends FAILED.
"""

import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import (
    assert_effects_match,
    assert_nothing_lost,
    available,
    new_id,
    order_body,
    wait_for_state,
    wait_for_step,
)

Call = tuple[str, str, dict[str, Any]]  # method, url, httpx keyword arguments
CLIENTS = 20
STORM = 30  # concurrent requests on one saga
BIG = 100_000  # cents: at APPROVAL_THRESHOLD_CENTS, so the saga waits for a decision
SLOW_MS = 700  # a step held in flight, under the suite's STEP_TIMEOUT_SECONDS of 1


@pytest.fixture(scope="module")
def clients(live_url: str) -> Iterator[list[httpx.Client]]:
    """STORM clients, each with its own connection, made and connected ahead of time: a storm
    must land while a step is still in flight, not after the clients' set-up."""
    with ExitStack() as stack:
        made = [
            stack.enter_context(httpx.Client(base_url=live_url, timeout=60)) for _ in range(STORM)
        ]
        for client in made:
            client.get("/healthz").raise_for_status()
        yield made


TRIES_AFTER_503 = 5  # a 503 is "try again": an operator's script would, so the storm does


def storm(clients: list[httpx.Client], calls: list[Call]) -> list[httpx.Response]:
    """Send `calls` from `clients`, each in its own thread, all released at the same moment,
    each sending every len(clients)-th call; the answers in the calls' order.

    A 503 is sent again, as the API asks (Retry-After): on a loaded machine a statement can
    wait out its 1 s timeout behind the row lock that the other calls queue on (seen with a
    disk busy with fsyncs, before and after the operator-actions change). That statement was
    rolled back; the call's final answer is what the assertions check."""
    answers: list[httpx.Response | None] = [None] * len(calls)
    start = threading.Barrier(len(clients), timeout=30)

    def send(index: int) -> None:
        start.wait()
        for i in range(index, len(calls), len(clients)):
            method, url, kwargs = calls[i]
            for _ in range(TRIES_AFTER_503):
                answers[i] = answer = clients[index].request(method, url, **kwargs)
                if answer.status_code != 503:
                    break
                assert answer.headers.get("Retry-After"), answer.text
                time.sleep(0.2)

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        list(pool.map(send, range(len(clients))))  # re-raises a client's exception
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def count(db: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def sagas_started(db: psycopg.Connection[Any]) -> int:
    return count(db, "SELECT count(*) FROM dbos.workflow_status WHERE name = 'order_fulfillment'")


def test_500_posts_over_50_keys_from_20_clients_make_50_sagas_and_50_captures(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    sku = stock(1000)
    keys = [new_id("storm-key") for _ in range(50)]
    bodies = {}
    for i, key in enumerate(keys):
        bodies[key] = order_body({sku: 1}, customer_id=f"storm-{i}")
        del bodies[key]["order_id"]  # the service names each order
    calls: list[Call] = [
        ("POST", "/orders", {"json": bodies[key], "headers": {"Idempotency-Key": key}})
        for key in keys
        for _ in range(10)
    ]
    random.Random(500).shuffle(calls)
    sagas_before = sagas_started(db)

    answers = storm(clients[:CLIENTS], calls)

    assert Counter(a.status_code for a in answers) == {202: 500}
    seen: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for (_, _, kwargs), answer in zip(calls, answers, strict=True):
        body = answer.json()
        seen[kwargs["headers"]["Idempotency-Key"]].add(
            (body["order_id"], body["saga_id"], answer.headers["Location"])
        )
    assert set(seen) == set(keys)
    assert all(len(replies) == 1 for replies in seen.values()), "a key got two orders"
    placed = {key: replies.pop() for key, replies in seen.items()}
    order_ids = sorted(order_id for order_id, _, _ in placed.values())
    saga_ids = sorted(saga_id for _, saga_id, _ in placed.values())
    assert len(set(order_ids)) == len(set(saga_ids)) == 50
    assert all(location == f"/orders/{order_id}" for order_id, _, location in placed.values())
    # In PostgreSQL: one order per key, one DBOS workflow per order, and no other saga started.
    rows = db.execute(
        "SELECT idempotency_key, order_id, saga_id FROM orders.orders "
        "WHERE idempotency_key = ANY(%s)",
        (keys,),
    ).fetchall()
    assert sorted(rows) == sorted((key, o, s) for key, (o, s, _) in placed.items())
    assert count(db, "SELECT count(*) FROM dbos.workflow_status WHERE workflow_uuid = ANY(%s)",
                 saga_ids) == 50  # fmt: skip
    assert sagas_started(db) - sagas_before == 50
    # Each saga ends with exactly one capture.
    for order_id in order_ids:
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"}, timeout=60)
        assert view["state"] == "COMPLETED", view
        payments = api.get("/payments", params={"order_id": order_id}).json()
        assert [(p["status"], p["amount_cents"]) for p in payments] == [("captured", 1000)]
        assert_effects_match(db, view)
    assert available(db, sku) == 1000 - 50


def waiting_order(api: httpx.Client, stock: Callable[..., str]) -> tuple[dict[str, Any], str]:
    """A 100000-cent order placed and AWAITING_APPROVAL (for 4 s in the suite); its body and
    saga id."""
    body = order_body({stock(5, price_cents=BIG): 1})
    placed = api.post("/orders", json=body)
    assert placed.status_code == 202, placed.text
    wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")
    return body, placed.json()["saga_id"]


def sku_of(body: dict[str, Any]) -> str:
    return str(body["items"][0]["sku"])


def assert_accepted(answer: httpx.Response, order_id: str, saga_id: str) -> None:
    assert answer.status_code == 202, answer.text
    assert answer.json()["order_id"] == order_id
    assert answer.json()["saga_id"] == saga_id
    assert answer.headers["Location"] == f"/orders/{order_id}"


def test_thirty_concurrent_approves_decide_once_and_charge_once(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    storms = []
    for _ in range(3):  # one at a time: each must land within its 4 s approval window
        body, saga_id = waiting_order(api, stock)
        approve: Call = ("POST", f"/orders/{body['order_id']}/approve", {})
        storms.append((body, saga_id, storm(clients, [approve] * STORM)))

    for body, saga_id, answers in storms:
        order_id = body["order_id"]
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"})
        assert view["state"] == "COMPLETED", view
        assert view["approval"]["decision"] == "approved"
        accepted = [a for a in answers if a.status_code == 202]
        refused = [a for a in answers if a.status_code != 202]
        assert accepted, "no approve was accepted"
        for answer in accepted:
            assert_accepted(answer, order_id, saga_id)
        already = re.compile(rf"order '{order_id}' was already approved; it is [A-Z_]+")
        for answer in refused:
            assert answer.status_code == 409, answer.text
            assert already.fullmatch(answer.json()["detail"]), answer.text
            assert "AWAITING_APPROVAL" not in answer.json()["detail"]
        payments = api.get("/payments", params={"order_id": order_id}).json()
        assert [(p["status"], p["amount_cents"]) for p in payments] == [("captured", BIG)]
        assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 1})


def test_approves_and_rejects_racing_on_one_saga_let_exactly_one_decision_win(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    outcomes = []
    for _ in range(4):
        body, saga_id = waiting_order(api, stock)
        calls: list[Call] = [
            ("POST", f"/orders/{body['order_id']}/{verb}", {})
            for _ in range(STORM // 2)
            for verb in ("approve", "reject")
        ]
        outcomes.append((body, saga_id, calls, storm(clients, calls)))

    for body, saga_id, calls, answers in outcomes:
        order_id = body["order_id"]
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"})
        by_verb: dict[str, list[httpx.Response]] = defaultdict(list)
        for (_, url, _), answer in zip(calls, answers, strict=True):
            by_verb[url.rsplit("/", 1)[1]].append(answer)
        winners = {
            v for v, answers_ in by_verb.items() if any(a.status_code == 202 for a in answers_)
        }
        assert len(winners) == 1, f"{order_id}: both decisions accepted"
        winner = winners.pop()
        loser = "reject" if winner == "approve" else "approve"
        decided = {"approve": "approved", "reject": "rejected"}[winner]
        for answer in by_verb[loser]:
            assert answer.status_code == 409, answer.text
            assert answer.json()["detail"].startswith(f"order {order_id!r} was already {decided}")
        for answer in by_verb[winner]:
            if answer.status_code == 202:
                assert_accepted(answer, order_id, saga_id)
            else:  # a repeat that came after the saga moved on
                assert answer.status_code == 409, answer.text
                assert answer.json()["detail"].startswith(
                    f"order {order_id!r} was already {decided}"
                )
        assert view["approval"]["decision"] == decided
        payments = [
            (p["status"], p["amount_cents"])
            for p in api.get("/payments", params={"order_id": order_id}).json()
        ]
        if winner == "approve":
            assert view["state"] == "COMPLETED", view
            assert payments == [("captured", BIG)]
        else:
            assert view["state"] == "FAILED", view
            assert view["error"] == "rejected by the approver"
            assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
            assert payments == []
        assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 1})


def assert_cancel_answers(answers: list[httpx.Response], order_id: str, saga_id: str) -> None:
    """202 until the saga ended, 409 "can no longer be cancelled" after; at least one 202."""
    assert any(a.status_code == 202 for a in answers)
    for answer in answers:
        if answer.status_code == 202:
            assert_accepted(answer, order_id, saga_id)
        else:
            assert answer.status_code == 409, answer.text
            assert answer.json()["detail"] == (
                f"order {order_id!r} is FAILED; it can no longer be cancelled"
            )


def cancel_storm(order_id: str) -> list[Call]:
    """Thirty cancels, each with its own reason."""
    return [
        ("POST", f"/orders/{order_id}/cancel", {"json": {"reason": f"storm {i}"}})
        for i in range(STORM)
    ]


def test_a_cancel_storm_on_a_waiting_saga_undoes_it_once(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    storms = []
    for _ in range(3):
        body, saga_id = waiting_order(api, stock)
        storms.append((body, saga_id, storm(clients, cancel_storm(body["order_id"]))))

    for body, saga_id, answers in storms:
        order_id = body["order_id"]
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"})
        assert view["state"] == "FAILED", view
        assert re.fullmatch(r"cancelled by request: storm \d+", view["error"]), view["error"]
        assert view["approval"]["decision"] is None  # ended by the cancel, not timed out
        assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
        assert [c["attempts"] for c in view["compensations"]] == [1]
        assert_cancel_answers(answers, order_id, saga_id)
        assert api.get("/payments", params={"order_id": order_id}).json() == []
        assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 1})


@pytest.mark.usefixtures("faults_repaired")
def test_a_cancel_storm_during_a_step_undoes_every_effect_once(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    """create_shipment is held in flight for SLOW_MS and 30 cancels are sent meanwhile. On a
    machine too busy to get them there in time, the saga completes first and every cancel
    is refused: that attempt proves only consistency, and another order is tried."""
    api.put(
        "/faults/create_shipment", json={"down": False, "latency_ms": SLOW_MS}
    ).raise_for_status()
    landed = 0
    for _ in range(6):
        body = order_body({stock(5): 1})
        placed = api.post("/orders", json=body)
        order_id = body["order_id"]
        wait_for_step(api, order_id, "create_shipment", "executing")
        answers = storm(clients, cancel_storm(order_id))
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"})
        assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 1})
        if not any(a.status_code == 202 for a in answers):  # all came after the end
            assert view["state"] == "COMPLETED", view
            assert {a.json()["detail"] for a in answers} == {
                f"order {order_id!r} is COMPLETED; it can no longer be cancelled"
            }
            continue
        landed += 1
        assert view["state"] == "FAILED", view
        assert re.fullmatch(r"cancelled by request: storm \d+", view["error"]), view["error"]
        undone = ["cancel_shipment", "refund_payment", "release_reservation"]
        assert [c["name"] for c in view["compensations"]] in (
            undone,
            ["send_cancellation_notice", *undone],  # it landed during the last step
        )
        assert all(c["attempts"] == 1 for c in view["compensations"])
        assert_cancel_answers(answers, order_id, placed.json()["saga_id"])
        payments = api.get("/payments", params={"order_id": order_id}).json()
        assert [(p["status"], p["amount_cents"]) for p in payments] == [("refunded", 1000)]
        shipments = api.get("/shipments", params={"order_id": order_id}).json()
        assert [s["status"] for s in shipments] == ["cancelled"]
        if landed == 2:
            break
    assert landed == 2, "the cancels never arrived while the saga was running"


def test_approves_racing_cancels_end_as_the_cancels_were_answered(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    clients: list[httpx.Client],
    stock: Callable[..., str],
) -> None:
    """A cancel answered 202 means the saga ends FAILED, however many approves got in first;
    if every cancel came too late (409), the approve stands and the order is COMPLETED."""
    outcomes = []
    for _ in range(4):
        body, saga_id = waiting_order(api, stock)
        order_id = body["order_id"]
        calls: list[Call] = []
        for i in range(STORM // 2):
            calls.append(("POST", f"/orders/{order_id}/approve", {}))
            calls.append(("POST", f"/orders/{order_id}/cancel", {"json": {"reason": f"r{i}"}}))
        outcomes.append((body, saga_id, calls, storm(clients, calls)))

    for body, saga_id, calls, answers in outcomes:
        order_id = body["order_id"]
        view = wait_for_state(api, order_id, {"COMPLETED", "FAILED"})
        cancels = [
            a for (_, url, _), a in zip(calls, answers, strict=True) if url.endswith("/cancel")
        ]
        approves = [
            a for (_, url, _), a in zip(calls, answers, strict=True) if url.endswith("/approve")
        ]
        for answer in approves:
            if answer.status_code == 202:
                assert_accepted(answer, order_id, saga_id)
            else:
                assert answer.status_code == 409, answer.text
                assert re.fullmatch(
                    rf"order '{order_id}' (was cancelled; it cannot be approved"
                    rf"|was already approved; it is [A-Z_]+)",
                    answer.json()["detail"],
                ), answer.text
        payments = [
            (p["status"], p["amount_cents"])
            for p in api.get("/payments", params={"order_id": order_id}).json()
        ]
        if any(a.status_code == 202 for a in cancels):
            assert view["state"] == "FAILED", view
            assert re.fullmatch(r"cancelled by request: r\d+", view["error"]), view["error"]
            assert all(a.status_code in (202, 409) for a in cancels)
            assert payments in ([], [("refunded", BIG)])
        else:
            assert view["state"] == "COMPLETED", view
            assert view["approval"]["decision"] == "approved"
            for answer in cancels:
                assert answer.status_code == 409, answer.text
                assert answer.json()["detail"] == (
                    f"order {order_id!r} is COMPLETED; it can no longer be cancelled"
                )
            assert payments == [("captured", BIG)]
        assert_nothing_lost(db, view, {sku_of(body): 5}, {sku_of(body): 1})
