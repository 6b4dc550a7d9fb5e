"""A fresh database and a service subprocess per test; helpers to watch a saga from SQL."""

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from orders.audit import audit
from tests.support import postgres
from tests.support.orders import assert_effects_match, available
from tests.support.process import ServiceProcess

pytestmark = pytest.mark.recovery


@pytest.fixture
def service_db() -> Iterator[str]:
    url = postgres.create_database("saga_recovery")
    yield url
    postgres.drop_database(url)


@pytest.fixture
def service(service_db: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """The service, not yet started; its log is shown if the test fails."""
    process = ServiceProcess(
        service_db, RETRY_BACKOFF_SECONDS="0.05", LOG_LEVEL="WARNING", SEED_DEMO_CATALOG="false"
    )
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- service log ({process.log}) ---\n{process.tail()}")


@pytest.fixture
def sql(service_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(service_db, autocommit=True) as conn:
        yield conn


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 30, every: float = 0.005
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(every)


def wait_for_end(base_url: str, order_id: str, timeout: float = 60) -> dict[str, Any]:
    """The order's view once its saga has ended (COMPLETED or FAILED)."""
    with httpx.Client(base_url=base_url, timeout=timeout + 5) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view: dict[str, Any] = client.get(f"/orders/{order_id}").json()
            if view["state"] in ("COMPLETED", "FAILED") and view["dbos_status"] == "SUCCESS":
                return view
            time.sleep(0.05)
    raise AssertionError(f"{order_id} did not finish: {view}")


def all_complete_once(
    base_url: str, sql: psycopg.Connection[Any], bodies: list[dict[str, Any]]
) -> None:
    """Every order of `bodies` (of WIDGET, from a stock of 1000) ends COMPLETED, each effect
    once, and the audit finds nothing."""
    for body in bodies:
        view = wait_for_end(base_url, body["order_id"], timeout=90)
        assert view["state"] == "COMPLETED", view
        assert_effects_match(sql, view)
    assert available(sql, "WIDGET") == 1000 - len(bodies)
    assert audit(sql).violations == []
