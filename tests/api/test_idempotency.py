"""POST /orders is safe to repeat: one order, one saga, one charge per key or order_id."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.orders import effects, new_id, order_body


def sagas_for(db: psycopg.Connection[Any], order_id: str) -> int:
    row = db.execute(
        """SELECT count(*) FROM dbos.workflow_status w JOIN orders.orders o
               ON o.saga_id = w.workflow_uuid WHERE o.order_id = %s""",
        (order_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def orders_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM orders.orders").fetchone()
    assert row is not None
    return int(row[0])


def test_the_same_key_and_body_return_the_same_order_and_saga(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1})
    del body["order_id"]  # the service names the order
    key = {"Idempotency-Key": new_id("key")}

    first = api.post("/orders", json=body, headers=key)
    again = api.post("/orders", json=body, headers=key, params={"wait": 30})

    assert first.status_code == 202
    assert first.headers["Location"] == f"/orders/{first.json()['order_id']}"
    assert again.status_code == 200  # waited, and the saga had ended
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.json()["saga_id"] == first.json()["saga_id"]
    assert sagas_for(db, first.json()["order_id"]) == 1
    assert len(effects(db, first.json()["order_id"])["payments"]) == 1


def test_the_same_order_id_without_a_key_is_the_same_order(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1})

    first, again = api.post("/orders", json=body), api.post("/orders", json=body)

    assert first.status_code == again.status_code == 202
    assert first.json() == {**again.json(), "state": first.json()["state"]}
    assert sagas_for(db, body["order_id"]) == 1


@pytest.mark.parametrize("by", ["idempotency-key", "order-id"])
def test_reusing_a_key_with_another_body_is_a_conflict_that_changes_nothing(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str], by: str
) -> None:
    sku = stock(5)
    body = order_body({sku: 1})
    headers = {"Idempotency-Key": new_id("key")} if by == "idempotency-key" else {}
    assert api.post("/orders", json=body, headers=headers, params={"wait": 30}).status_code == 200
    before = orders_count(db)

    changed = {**body, "items": [{"sku": sku, "quantity": 2}]}
    response = api.post("/orders", json=changed, headers=headers)

    assert response.status_code == 409
    assert "different request body" in response.json()["detail"]
    assert orders_count(db) == before
    view = api.get(f"/orders/{body['order_id']}").json()
    assert view["state"] == "COMPLETED"
    assert effects(db, body["order_id"])["payments"] == [("captured", 1000)]


def test_an_order_id_taken_under_another_key_is_a_conflict(
    api: httpx.Client, stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1})
    assert api.post("/orders", json=body, headers={"Idempotency-Key": new_id("k")}).is_success

    response = api.post("/orders", json=body, headers={"Idempotency-Key": new_id("k")})

    assert response.status_code == 409
    assert "different Idempotency-Key" in response.json()["detail"]


def test_twenty_concurrent_requests_with_one_key_make_one_saga_and_one_charge(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1})
    del body["order_id"]
    key = {"Idempotency-Key": new_id("storm")}

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: api.post("/orders", json=body, headers=key), range(20)))

    assert {r.status_code for r in responses} == {202}
    assert len({(r.json()["order_id"], r.json()["saga_id"]) for r in responses}) == 1
    order_id = responses[0].json()["order_id"]
    final = api.post("/orders", json=body, headers=key, params={"wait": 30}).json()
    assert final["state"] == "COMPLETED"
    assert sagas_for(db, order_id) == 1
    assert effects(db, order_id)["payments"] == [("captured", 1000)]
