"""A saga re-run from its records (DBOS.fork_workflow from each step) ends the same way,
and its downstream effects stay exactly as they were: steps are idempotent by business key,
and a key that a compensation undid refuses to act again."""

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from dbos import DBOS

from tests.support.orders import available, effects, order_body


@pytest.fixture(scope="module")
def fork_queue(live_url: str) -> str:
    """Forks run from a queue; this one is polled often so the test does not wait ~1 s each."""
    DBOS.register_queue("test_forks", polling_interval_sec=0.02)
    return "test_forks"


@pytest.mark.parametrize(
    ("fields", "recorded_steps"),
    [
        pytest.param({}, 4, id="completed"),
        pytest.param({"payment_method": "pm_card_declined"}, 4, id="declined"),
        pytest.param({"customer_email": "ada@bounce.test"}, 8, id="bounced"),
    ],
)
def test_forking_a_saga_from_any_step_reaches_the_same_outcome(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    fork_queue: str,
    fields: dict[str, Any],
    recorded_steps: int,
) -> None:
    sku = stock(5)
    body = order_body({sku: 2}, **fields)
    original = api.post("/orders", json=body, params={"wait": 30}).json()
    recorded = DBOS.list_workflow_steps(original["saga_id"])
    settled = effects(db, body["order_id"]), available(db, sku)
    assert len(recorded) == recorded_steps

    for step in recorded:
        fork = DBOS.fork_workflow(original["saga_id"], step["function_id"], queue_name=fork_queue)
        result = fork.get_result(polling_interval_sec=0.02)

        assert result["state"] == original["state"], step
        assert (effects(db, body["order_id"]), available(db, sku)) == settled, step
        view = api.get(f"/orders/{body['order_id']}").json()
        assert (view["state"], view["error"]) == (original["state"], original["error"]), step


@pytest.mark.usefixtures("faults_repaired")
def test_a_failed_saga_forked_after_its_cause_is_fixed_stays_failed_and_undone(
    api: httpx.Client,
    db: psycopg.Connection[Any],
    stock: Callable[..., str],
    fork_queue: str,
) -> None:
    """Its compensations voided or undid every key, so a re-run cannot act again."""
    sku = stock(5)
    body = order_body({sku: 2})
    api.put("/faults/create_shipment", json={"down": True}).raise_for_status()
    original = api.post("/orders", json=body, params={"wait": 30}).json()
    assert original["state"] == "FAILED"
    api.put("/faults/create_shipment", json={"down": False}).raise_for_status()
    settled = effects(db, body["order_id"]), available(db, sku)

    for step in DBOS.list_workflow_steps(original["saga_id"]):
        fork = DBOS.fork_workflow(original["saga_id"], step["function_id"], queue_name=fork_queue)

        assert fork.get_result(polling_interval_sec=0.02)["state"] == "FAILED", step
        assert (effects(db, body["order_id"]), available(db, sku)) == settled, step
    assert available(db, sku) == 5
