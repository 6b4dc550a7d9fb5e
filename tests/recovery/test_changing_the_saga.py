"""A change to the saga, deployed while sagas are in flight: sagas started on the old code
are killed mid-way and finish on the new code. A new step goes behind DBOS.patch; without
it, a saga already past the new step's place no longer replays (the negative control)."""

import shutil
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_effects_match, order_body
from tests.support.process import ROOT, ServiceProcess

ANCHOR = '        saga.attempt(process_payment, refund_payment, reservation["total_cents"])\n'
NEW_STEP = """

@DBOS.step(name="review_fraud")
def review_fraud(order_id: str) -> str:
    return "passed"
"""


def changed_service(tmp_path: Path, database_url: str, *, patched: bool) -> ServiceProcess:
    """This project with a fraud review added after the payment, in its own directory."""
    root = tmp_path / "changed"
    for package in ("api", "workflows", "steps", "services", "orders", "runtime", "migrations"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    workflow = root / "workflows" / "order_fulfillment.py"
    source = workflow.read_text()
    assert ANCHOR in source, "the saga changed: update this test's anchor"
    review = '        review_fraud(order["order_id"])\n'
    if patched:
        review = '        if DBOS.patch("fraud-review"):\n    ' + review
    workflow.write_text(source.replace(ANCHOR, ANCHOR + review) + NEW_STEP)
    return ServiceProcess(database_url, root=root, LOG_LEVEL="WARNING", SEED_DEMO_CATALOG="false")


def recorded(sql: psycopg.Connection[Any], order_id: str) -> list[str]:
    rows = sql.execute(
        """SELECT op.function_name FROM dbos.operation_outputs op
             JOIN orders.orders o ON o.saga_id = op.workflow_uuid
            WHERE o.order_id = %s ORDER BY op.function_id""",
        (order_id,),
    ).fetchall()
    return [name for (name,) in rows]


def step_status(sql: psycopg.Connection[Any], order_id: str, name: str) -> str | None:
    row = sql.execute(
        "SELECT status FROM orders.saga_steps WHERE order_id = %s AND name = %s", (order_id, name)
    ).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("patched", [True, False], ids=["with-dbos-patch", "without"])
def test_sagas_in_flight_finish_on_the_changed_code_when_the_change_is_patched(
    service: ServiceProcess,
    service_db: str,
    sql: psycopg.Connection[Any],
    tmp_path: Path,
    patched: bool,
) -> None:
    service.start(PARTICIPANT_LATENCY_MS="800")
    past, before = order_body({"WIDGET": 1}), order_body({"WIDGET": 1})
    with httpx.Client(base_url=service.url) as client:
        client.put("/inventory/WIDGET", json={"available": 10, "price_cents": 1500})
        client.post("/orders", json=past).raise_for_status()
        wait_until(
            lambda: step_status(sql, past["order_id"], "send_confirmation") == "executing",
            "the first saga is past the payment, its shipment recorded",
        )
        client.post("/orders", json=before).raise_for_status()
        wait_until(
            lambda: step_status(sql, before["order_id"], "reserve_inventory") == "executing",
            "the second saga is before the payment",
        )
    service.kill()

    changed = changed_service(tmp_path, service_db, patched=patched)
    changed.start()
    try:
        later = order_body({"WIDGET": 1})
        httpx.post(f"{changed.url}/orders", json=later).raise_for_status()
        for order_id in (before["order_id"], later["order_id"]):
            view = wait_for_end(changed.url, order_id)
            assert view["state"] == "COMPLETED"
            assert_effects_match(sql, view)
            assert "review_fraud" in recorded(sql, order_id)  # new code from the payment on

        if patched:
            view = wait_for_end(changed.url, past["order_id"])
            assert view["state"] == "COMPLETED"
            assert_effects_match(sql, view)
            assert "review_fraud" not in recorded(sql, past["order_id"])  # old path kept
        else:
            row = "SELECT dbos_status, state FROM saga_status WHERE order_id = %s"
            wait_until(
                lambda: sql.execute(row, (past["order_id"],)).fetchone() == ("ERROR", "PENDING"),
                "the saga past the change fails to replay and is stranded",
                timeout=60,
            )
            assert "review_fraud" not in recorded(sql, past["order_id"])
    finally:
        changed.stop()
