"""What operators see and leave behind: each accepted approve, reject, cancel and
retry-compensation is recorded with who asked (X-Operator, else 'unknown') and why (the
body's reason, else null), oldest first; a refused or invalid request records nothing. The
view shows every attempt of every step (orders.step_attempts), and GET /orders searches by
order id prefix or customer id and pages newest first.

APPROVAL_TIMEOUT_SECONDS is 4 in the suite: a test that needs an order AWAITING_APPROVAL acts
on it well within that."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.conftest import state_a_request_could_change
from tests.api.test_approvals import big_order
from tests.api.test_stuck_compensation import park_an_order
from tests.support.orders import new_id, order_body, wait_for_parked_count, wait_for_state

VERBS = ("approve", "reject", "cancel", "retry-compensation")
ACTION_KEYS = {"action", "at", "by", "reason"}
ATTEMPT_KEYS = {"attempt", "started_at", "finished_at", "outcome", "error"}
SUMMARY_KEYS = {
    "order_id", "saga_id", "state", "total_cents", "error", "current_step", "customer_id",
    "needs_attention", "attention_reason", "coordination", "created_at", "updated_at",
}  # fmt: skip
REFUND_DOWN = "ServiceUnavailable: refund_payment: service unreachable (fault switch is on)"
COMPENSATION_ATTEMPTS = 4  # tests/support/knobs.py


def put_sku(api: httpx.Client, available: int, price_cents: int = 1000) -> str:
    sku = new_id("SKU")
    api.put(
        f"/inventory/{sku}", json={"available": available, "price_cents": price_cents}
    ).raise_for_status()
    return sku


def tag() -> str:
    return uuid.uuid4().hex[:10]


def place_fast(api: httpx.Client, order_id: str, customer_id: str = "c-42") -> None:
    """An order that fails at once (its SKU is unknown): it is listed all the same."""
    body = order_body({"NO-SUCH-SKU": 1}, order_id=order_id, customer_id=customer_id)
    assert api.post("/orders", json=body).status_code == 202


def recorded(db: psycopg.Connection[Any], order_id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM orders.operator_actions WHERE order_id = %s", (order_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def without_times(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(set(a) == ACTION_KEYS for a in actions), actions
    return [{k: v for k, v in a.items() if k != "at"} for a in actions]


def moment(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, text
    return parsed


def assert_at_about(action: dict[str, Any], asked: datetime) -> None:
    """Recorded as it was asked (the database's clock is this machine's)."""
    at = moment(action["at"])
    assert asked - timedelta(seconds=1) <= at <= datetime.now(UTC) + timedelta(seconds=1), at


def step(view: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in view["steps"] + view["compensations"] if s["name"] == name]
    return found


def outcomes(view: dict[str, Any], name: str) -> list[str | None]:
    return [a["outcome"] for a in step(view, name)["history"]]


def assert_history_is_whole(view: dict[str, Any]) -> None:
    """Each step's history: attempts 1..n, as many as it counts, each begun after the one
    before and ended after it began."""
    for s in view["steps"] + view["compensations"]:
        history = s["history"]
        assert all(set(a) == ATTEMPT_KEYS for a in history), s
        assert [a["attempt"] for a in history] == list(range(1, len(history) + 1)), s
        assert s["attempts"] == len(history), s
        starts = [moment(a["started_at"]) for a in history]
        assert starts == sorted(starts), s
        for a in history:
            assert a["finished_at"] is not None, s
            assert moment(a["finished_at"]) >= moment(a["started_at"]), s


def attempts_in_sql(db: psycopg.Connection[Any], order_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        """SELECT kind, name, attempt, started_at, finished_at, outcome, error
             FROM orders.step_attempts WHERE order_id = %s ORDER BY kind, name, attempt""",
        (order_id,),
    ).fetchall()


def attempts_in_view(view: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for kind, steps in (("forward", view["steps"]), ("compensation", view["compensations"])):
        for s in steps:
            for a in s["history"]:
                finished = a["finished_at"] and moment(a["finished_at"])
                rows.append(
                    (kind, s["name"], a["attempt"], moment(a["started_at"]), finished,
                     a["outcome"], a["error"])
                )  # fmt: skip
    return sorted(rows, key=lambda row: row[:3])


def listed(api: httpx.Client, **params: Any) -> list[str]:
    response = api.get("/orders", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [o["order_id"] for o in response.json()["orders"]]


@pytest.fixture(scope="module")
def finished(api: httpx.Client) -> dict[str, dict[str, Any]]:
    """Three ended sagas, placed together: completed, flaky (paid on the 3rd try), declined."""
    sku = put_sku(api, 10)
    bodies = {
        "completed": order_body({sku: 1}, customer_id=new_id("cust")),
        "flaky": order_body({sku: 1}, payment_method="pm_card_flaky"),
        "declined": order_body({sku: 1}, payment_method="pm_card_declined"),
    }
    for body in bodies.values():
        assert api.post("/orders", json=body).status_code == 202
    views = {}
    for name, body in bodies.items():
        response = api.post("/orders", json=body, params={"wait": 30})
        assert response.status_code == 200, response.text
        views[name] = response.json() | {"body": body}
    return views


# --- accepted actions are recorded ---------------------------------------------------------


def test_an_approval_is_recorded_with_who_asked_and_why(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    asked = datetime.now(UTC)
    approved = api.post(
        f"/orders/{order_id}/approve", headers={"X-Operator": "ada"}, json={"reason": "checked"}
    )
    done = api.post("/orders", json=body, params={"wait": 30}).json()
    again = api.post(f"/orders/{order_id}/approve", headers={"X-Operator": "ada"})

    assert approved.status_code == 202
    assert done["state"] == "COMPLETED"
    assert without_times(done["actions"]) == [
        {"action": "approve", "by": "ada", "reason": "checked"}
    ]
    assert_at_about(done["actions"][0], asked)
    assert again.status_code == 409  # refused once it went on: not recorded
    assert api.get(f"/orders/{order_id}").json()["actions"] == done["actions"]
    assert recorded(db, order_id) == 1


def test_a_rejection_is_recorded_with_who_asked_and_why(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    asked = datetime.now(UTC)
    rejected = api.post(
        f"/orders/{order_id}/reject", headers={"X-Operator": "grace"}, json={"reason": "too big"}
    )
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert rejected.status_code == 202
    assert (view["state"], view["error"]) == ("FAILED", "rejected by the approver")
    assert without_times(view["actions"]) == [
        {"action": "reject", "by": "grace", "reason": "too big"}
    ]
    assert_at_about(view["actions"][0], asked)
    assert recorded(db, order_id) == 1


def test_a_cancel_is_recorded_and_its_reason_kept_in_the_error(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    asked = datetime.now(UTC)
    cancelled = api.post(
        f"/orders/{order_id}/cancel",
        headers={"X-Operator": "ada"},
        json={"reason": "customer called"},
    )
    view = api.post("/orders", json=body, params={"wait": 30}).json()
    late = api.post(f"/orders/{order_id}/cancel", json={"reason": "again"})

    assert cancelled.status_code == 202
    assert (view["state"], view["error"]) == ("FAILED", "cancelled by request: customer called")
    assert without_times(view["actions"]) == [
        {"action": "cancel", "by": "ada", "reason": "customer called"}
    ]
    assert_at_about(view["actions"][0], asked)
    assert late.status_code == 409
    assert recorded(db, order_id) == 1


@pytest.mark.usefixtures("faults_repaired")
def test_cancels_and_retries_of_a_parked_saga_are_all_recorded_oldest_first(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    _, body = park_an_order(api, stock)
    order_id = body["order_id"]

    parked = api.get(f"/orders/{order_id}").json()
    summaries = api.get("/orders", params={"search": order_id}).json()["orders"]
    # Without X-Operator nor a body, then with both: accepted twice, changing nothing.
    first = api.post(f"/orders/{order_id}/cancel")
    second = api.post(
        f"/orders/{order_id}/cancel", headers={"X-Operator": "ada"}, json={"reason": "stuck"}
    )
    still = api.get(f"/orders/{order_id}").json()
    # A retry while still broken parks it again; one after the repair finishes it.
    broken = api.post(f"/orders/{order_id}/retry-compensation", headers={"X-Operator": "grace"})
    parked_again = wait_for_parked_count(db, order_id, 2)
    api.put("/faults/refund_payment", json={"down": False}).raise_for_status()
    fixed = api.post(
        f"/orders/{order_id}/retry-compensation",
        headers={"X-Operator": "ada"},
        json={"reason": "refunds are back"},
    )
    view = api.post("/orders", json=body, params={"wait": 30}).json()
    late = api.post(f"/orders/{order_id}/retry-compensation", headers={"X-Operator": "ada"})

    assert (parked["state"], parked["parked_count"], parked["actions"]) == (
        "COMPENSATION_FAILED", 1, []
    )  # fmt: skip
    assert [
        (s["current_step"], s["needs_attention"], s["attention_reason"]) for s in summaries
    ] == [("refund_payment", True, "parked")]
    assert (first.status_code, second.status_code) == (202, 202)
    assert (still["state"], still["parked_count"]) == ("COMPENSATION_FAILED", 1)
    assert still["error"].startswith("create_shipment refused")
    assert (broken.status_code, parked_again, fixed.status_code) == (
        202, "COMPENSATION_FAILED", 202
    )  # fmt: skip
    assert (view["state"], view["parked_count"]) == ("FAILED", 2)
    assert view["error"].startswith("create_shipment refused")
    assert without_times(view["actions"]) == [
        {"action": "cancel", "by": "unknown", "reason": None},
        {"action": "cancel", "by": "ada", "reason": "stuck"},
        {"action": "retry-compensation", "by": "grace", "reason": None},
        {"action": "retry-compensation", "by": "ada", "reason": "refunds are back"},
    ]
    times = [moment(a["at"]) for a in view["actions"]]
    assert times == sorted(times)
    assert late.status_code == 409
    assert recorded(db, order_id) == 4
    # Each parking: COMPENSATION_ATTEMPTS transient attempts (a fault switch is a
    # ServiceUnavailable); then the one that worked.
    refund = step(view, "refund_payment")
    tries = 2 * COMPENSATION_ATTEMPTS
    assert [(a["outcome"], a["error"]) for a in refund["history"]] == (
        [("transient", REFUND_DOWN)] * tries + [("ok", None)]
    )
    assert (refund["status"], refund["attempts"]) == ("completed", tries + 1)
    assert outcomes(view, "create_shipment") == ["refused"]
    assert outcomes(view, "release_reservation") == ["ok"]
    assert_history_is_whole(view)
    assert attempts_in_sql(db, order_id) == attempts_in_view(view)


# --- refused and invalid requests record nothing ---------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
def test_an_action_refused_on_a_finished_order_is_not_recorded(
    api: httpx.Client, db: psycopg.Connection[Any], finished: dict[str, Any], verb: str
) -> None:
    order_id = finished["completed"]["order_id"]

    response = api.post(
        f"/orders/{order_id}/{verb}", headers={"X-Operator": "ada"}, json={"reason": "why not"}
    )
    missing = f"no-such-{tag()}"
    unknown = api.post(f"/orders/{missing}/{verb}", headers={"X-Operator": "ada"})
    view = api.get(f"/orders/{order_id}").json()

    assert response.status_code == 409, response.text
    assert unknown.status_code == 404, unknown.text
    assert (view["state"], view["actions"]) == ("COMPLETED", [])
    assert recorded(db, order_id) == 0
    assert recorded(db, missing) == 0


def test_a_retry_of_a_saga_that_is_not_parked_is_not_recorded(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    retried = api.post(f"/orders/{order_id}/retry-compensation", headers={"X-Operator": "ada"})
    waiting = api.get(f"/orders/{order_id}").json()
    rejected = api.post(f"/orders/{order_id}/reject")
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    assert retried.status_code == 409
    assert "only an order in COMPENSATION_FAILED can be retried" in retried.json()["detail"]
    assert (waiting["state"], waiting["actions"]) == ("AWAITING_APPROVAL", [])
    assert rejected.status_code == 202
    assert view["state"] == "FAILED"
    assert without_times(view["actions"]) == [{"action": "reject", "by": "unknown", "reason": None}]
    assert recorded(db, order_id) == 1


BAD_OPERATORS: list[tuple[str, str | bytes]] = [
    ("101-chars", "x" * 101),
    ("empty", ""),
    ("tab", b"ada\tlovelace"),
    ("non-ascii", "Adé".encode()),
    ("latin-1", b"Ad\xe9"),
]
BAD_BODIES: list[tuple[str, Any]] = [
    ("empty-reason", {"reason": ""}),
    ("number-reason", {"reason": 5}),
    ("other-field", {"other": 1}),
    ("201-char-reason", {"reason": "r" * 201}),
    ("newline-in-reason", {"reason": "a\nb"}),
    ("not-an-object", ["checked"]),
]


def test_a_bad_operator_or_reason_is_a_422_and_changes_nothing(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = big_order(api, stock)
    order_id = body["order_id"]
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    def order_row() -> tuple[Any, ...]:
        row = db.execute(
            """SELECT state, decision, decided_at, cancel_requested_at, cancel_reason, error,
                      updated_at FROM orders.orders WHERE order_id = %s""",
            (order_id,),
        ).fetchone()
        assert row is not None
        return tuple(row)

    before, row_before = state_a_request_could_change(db), order_row()
    answers: dict[tuple[str, str], tuple[int, list[Any]]] = {}
    for verb in VERBS:
        url = f"/orders/{order_id}/{verb}"
        for name, operator in BAD_OPERATORS:
            response = api.post(url, headers={"X-Operator": operator}, json={"reason": "ok"})
            answers[verb, name] = _status_and_locations(response)
        for name, bad in BAD_BODIES:
            response = api.post(url, headers={"X-Operator": "ada"}, json=bad)
            answers[verb, name] = _status_and_locations(response)
    after, row_after = state_a_request_could_change(db), order_row()
    still = api.get(f"/orders/{order_id}").json()
    rejected = api.post(f"/orders/{order_id}/reject", headers={"X-Operator": "ada"})
    view = api.post("/orders", json=body, params={"wait": 30}).json()

    header = ["header", "X-Operator"]
    expected = {}
    for verb in VERBS:
        expected |= {(verb, name): (422, [header]) for name, _ in BAD_OPERATORS}
        expected |= {
            (verb, "empty-reason"): (422, [["body", "reason"]]),
            (verb, "number-reason"): (422, [["body", "reason"]]),
            (verb, "other-field"): (422, [["body", "other"]]),
            (verb, "201-char-reason"): (422, [["body", "reason"]]),
            (verb, "newline-in-reason"): (422, [["body", "reason"]]),
            (verb, "not-an-object"): (422, [["body"]]),
        }
    assert answers == expected
    assert after == before
    assert row_after == row_before
    assert (still["state"], still["actions"]) == ("AWAITING_APPROVAL", [])
    assert rejected.status_code == 202  # still waiting, and still decidable
    assert without_times(view["actions"]) == [{"action": "reject", "by": "ada", "reason": None}]


def _status_and_locations(response: httpx.Response) -> tuple[int, list[Any]]:
    if response.status_code != 422:
        return response.status_code, [response.text]
    return 422, [e["loc"] for e in response.json()["detail"]]


# --- every attempt of every step --------------------------------------------------------------


def test_a_flaky_payment_shows_each_of_its_attempts(
    db: psycopg.Connection[Any], finished: dict[str, Any]
) -> None:
    view = finished["flaky"]
    payment = step(view, "process_payment")

    assert view["state"] == "COMPLETED"
    assert outcomes(view, "process_payment") == ["transient", "transient", "ok"]
    assert [a["error"] for a in payment["history"]] == [
        "ServiceUnavailable: process_payment: provider timed out "
        f"(pm_card_flaky, call {n} of 2 that fail)"
        for n in (1, 2)
    ] + [None]
    assert (payment["status"], payment["attempts"], payment["error"]) == ("completed", 3, None)
    for name in ("reserve_inventory", "create_shipment", "send_confirmation"):
        assert outcomes(view, name) == ["ok"], name
    assert view["compensations"] == []
    assert_history_is_whole(view)
    assert attempts_in_sql(db, view["order_id"]) == attempts_in_view(view)


def test_a_declined_payment_shows_its_refusal_and_the_undo(
    db: psycopg.Connection[Any], finished: dict[str, Any]
) -> None:
    view = finished["declined"]
    payment = step(view, "process_payment")

    assert view["state"] == "FAILED"
    assert [(a["outcome"], a["error"]) for a in payment["history"]] == [
        ("refused", "payment declined: card declined (pm_card_declined)")
    ]
    assert outcomes(view, "reserve_inventory") == ["ok"]
    assert [c["name"] for c in view["compensations"]] == ["release_reservation"]
    assert [(a["outcome"], a["error"]) for a in step(view, "release_reservation")["history"]] == [
        ("ok", None)
    ]
    for name in ("create_shipment", "send_confirmation"):  # never reached
        assert (step(view, name)["status"], step(view, name)["history"]) == ("pending", []), name
    assert_history_is_whole(view)
    assert attempts_in_sql(db, view["order_id"]) == attempts_in_view(view)


def test_a_completed_order_shows_one_good_attempt_of_each_step_and_its_new_fields(
    db: psycopg.Connection[Any], finished: dict[str, Any]
) -> None:
    view = finished["completed"]
    workflow = db.execute(
        """SELECT executor_id, application_version FROM dbos.workflow_status
            WHERE workflow_uuid = %s""",
        (view["saga_id"],),
    ).fetchone()

    assert view["state"] == "COMPLETED"
    for s in view["steps"]:
        assert [(a["attempt"], a["outcome"], a["error"]) for a in s["history"]] == [
            (1, "ok", None)
        ], s["name"]
    assert view["compensations"] == []
    assert_history_is_whole(view)
    assert attempts_in_sql(db, view["order_id"]) == attempts_in_view(view)
    assert view["customer_id"] == view["body"]["customer_id"]
    assert (view["parked_count"], view["actions"]) == (0, [])
    assert isinstance(view["executor_id"], str)
    assert view["executor_id"]
    assert isinstance(view["application_version"], str)
    assert view["application_version"]
    assert workflow == (view["executor_id"], view["application_version"])


# --- GET /orders: summaries, search, pages --------------------------------------------------


def test_summaries_have_the_step_the_customer_and_attention(
    api: httpx.Client, finished: dict[str, Any]
) -> None:
    completed = finished["completed"]

    response = api.get("/orders", params={"search": completed["customer_id"]})

    assert response.status_code == 200
    (summary,) = response.json()["orders"]
    assert set(summary) == SUMMARY_KEYS
    assert summary["order_id"] == completed["order_id"]
    assert (summary["current_step"], summary["customer_id"]) == (None, completed["customer_id"])
    assert (summary["needs_attention"], summary["attention_reason"]) == (False, None)
    assert response.json()["next"] is None


def test_search_finds_orders_by_id_prefix_or_by_exact_customer_id(api: httpx.Client) -> None:
    t = tag()
    customer = f"cust-{t}"
    ids = [f"srch-{t}-{i}" for i in range(3)]
    place_fast(api, ids[0], customer)
    place_fast(api, ids[1])
    place_fast(api, ids[2])
    place_fast(api, f"other-{t}", customer)

    assert listed(api, search=f"srch-{t}-") == ids[::-1]  # newest first
    assert listed(api, search=f"srch-{t}-1") == [ids[1]]
    assert listed(api, search=customer) == [f"other-{t}", ids[0]]
    assert listed(api, search=customer[:-1]) == []  # a customer id is matched whole
    assert listed(api, search=f"rch-{t}") == []  # an order id by its start only


def test_percent_and_underscore_in_a_search_are_literal(api: httpx.Client) -> None:
    t = tag()
    underscore, x = f"{t}_a-1", f"{t}Xa-2"
    percent_customer = f"50%-{t}"
    place_fast(api, underscore)
    place_fast(api, x, percent_customer)

    assert listed(api, search=f"{t}_") == [underscore]
    assert listed(api, search=f"{t}X") == [x]
    assert listed(api, search=f"{t}%") == []
    assert listed(api, search=t) == [x, underscore]
    assert listed(api, search=percent_customer) == [x]
    assert listed(api, search=f"5_%-{t}") == []


def test_pages_go_newest_first_with_none_twice_and_none_skipped(
    api: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    prefix = f"page-{tag()}-"
    for i in range(7):
        place_fast(api, f"{prefix}{i}")
    newest_first = [
        r[0]
        for r in db.execute(
            """SELECT order_id FROM orders.orders WHERE order_id LIKE %s
                ORDER BY created_at DESC, order_id DESC""",
            (prefix + "%",),
        ).fetchall()
    ]

    def pages(limit: int) -> list[tuple[list[str], str | None]]:
        found, before = [], None
        while True:
            params: dict[str, Any] = {"search": prefix, "limit": limit}
            if before is not None:
                params["before"] = before
            response = api.get("/orders", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found.append(([o["order_id"] for o in page["orders"]], page["next"]))
            if (before := page["next"]) is None:
                return found
            assert len(found) < 10, found

    assert len(newest_first) == 7
    assert newest_first == [f"{prefix}{i}" for i in reversed(range(7))]
    by_3 = pages(3)
    assert [ids for ids, _ in by_3] == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert [next_ for _, next_ in by_3] == [newest_first[2], newest_first[5], None]
    assert pages(7) == [(newest_first, None)]  # exactly a page: no next
    assert pages(6) == [(newest_first[:6], newest_first[5]), (newest_first[6:], None)]
    assert listed(api, search=prefix, before=newest_first[-1]) == []


def test_before_an_unknown_order_is_a_404(api: httpx.Client) -> None:
    # Not an empty page: a client could not tell a wrong cursor from the end of the list.
    missing = f"no-such-{tag()}"
    response = api.get("/orders", params={"before": missing})

    assert response.status_code == 404
    assert response.json() == {"detail": f"order {missing!r} not found"}


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"search": "s" * 65}, ["query", "search"]),
        ({"search": ""}, ["query", "search"]),
        ({"search": "a\x01b"}, ["query", "search"]),
        ({"before": "has space"}, ["query", "before"]),
        ({"before": "b" * 65}, ["query", "before"]),
        ({"limit": 0}, ["query", "limit"]),
    ],
    ids=["search-65", "search-empty", "search-control", "before-space", "before-65", "limit-0"],
)
def test_a_bad_search_or_page_is_a_422(
    api: httpx.Client, params: dict[str, Any], loc: list[str]
) -> None:
    response = api.get("/orders", params=params)

    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [loc]
