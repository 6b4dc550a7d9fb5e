"""Fixtures the API tests share."""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


def state_a_request_could_change(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """What a refused request must leave as it was: orders, sagas, items (and their prices),
    fault switches. Effects of sagas still finishing from earlier tests are left out."""
    row = db.execute(
        """SELECT (SELECT count(*) FROM orders.orders),
                  (SELECT count(*) FROM dbos.workflow_status),
                  (SELECT count(*) FROM inventory.items),
                  (SELECT md5(coalesce(string_agg(sku || ':' || price_cents, ',' ORDER BY sku), ''))
                     FROM inventory.items),
                  (SELECT coalesce(string_agg(operation || ':' || down || ':' || latency_ms, ','
                                              ORDER BY operation), '')
                     FROM faults.switches)"""
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def nothing_changes(db: psycopg.Connection[Any]) -> Iterator[None]:
    before = state_a_request_could_change(db)
    yield
    assert state_a_request_could_change(db) == before


@pytest.fixture(params=["orchestration", "choreography"])
def style(request: pytest.FixtureRequest) -> dict[str, str]:
    """The body fields of an order in each coordination: a test taking this runs for both
    (orchestration as clients send it, with no `coordination` at all)."""
    return {} if request.param == "orchestration" else {"coordination": request.param}
