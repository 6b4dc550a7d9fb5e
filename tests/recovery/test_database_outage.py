"""PostgreSQL itself dies (every server process SIGKILLed) under a running service, stays
down for longer than all of a step's tries would last, and comes back: the service answers
503 quickly meanwhile, never hangs, and every saga resumes and finishes exactly once."""

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from chaos.postgres import CrashablePostgres
from orders.audit import audit
from runtime import executors
from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_effects_match, order_body
from tests.support.process import ServiceProcess

DB_WAIT_SECONDS = 2.0
DOWN_SECONDS = 8.0  # four times STEP_TIMEOUT_SECONDS


@pytest.fixture
def own_postgres() -> Iterator[CrashablePostgres]:
    """A server of the test's own: the suite's shared one must not be crashed."""
    server = CrashablePostgres(Path(tempfile.mkdtemp(prefix="saga-outage-")))
    server.start()
    yield server
    server.stop(delete=True)


def test_a_database_crash_pauses_sagas_answers_503_and_loses_nothing(
    own_postgres: CrashablePostgres, request: pytest.FixtureRequest
) -> None:
    service = ServiceProcess(
        own_postgres.url,
        PARTICIPANT_LATENCY_MS="400",
        STEP_ATTEMPTS="1",  # one failed try would make the saga compensate
        STEP_TIMEOUT_SECONDS="2",  # a step waits at most this for a connection to a service
        RETRY_BACKOFF_SECONDS="0.1",
        DB_WAIT_SECONDS=str(DB_WAIT_SECONDS),
        LOG_LEVEL="WARNING",
        SEED_DEMO_CATALOG="false",
    )
    try:
        _crash_the_database_under_load(own_postgres, service)
    except BaseException:
        print(f"--- service log ({service.log}) ---\n{service.tail(120)}")
        raise
    finally:
        service.stop()


def _crash_the_database_under_load(pg: CrashablePostgres, service: ServiceProcess) -> None:
    service.start()
    client = httpx.Client(base_url=service.url, timeout=30)
    client.put("/inventory/WIDGET", json={"available": 20, "price_cents": 500})
    bodies = [order_body({"WIDGET": 1}) for _ in range(6)]
    for body in bodies:
        assert client.post("/orders", json=body).status_code == 202
    sql = psycopg.connect(pg.url, autocommit=True)
    in_flight = "SELECT count(*) FROM orders.orders WHERE state = 'PENDING'"
    wait_until(lambda: sql.execute(in_flight).fetchone() == (6,), "six sagas mid-way")
    pid = service.pid
    sql.close()

    pg.crash()
    down_since = time.monotonic()

    late = order_body({"WIDGET": 1})
    for call in (
        lambda: client.post("/orders", json=late, headers={"Idempotency-Key": "late-1"}),
        lambda: client.get(f"/orders/{bodies[0]['order_id']}"),
        lambda: client.get("/healthz"),
        lambda: client.post(f"/orders/{bodies[0]['order_id']}/cancel"),
    ):
        started = time.monotonic()
        response = call()
        took = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert took < DB_WAIT_SECONDS + 3, f"{response.request.url} took {took:.1f} s"
        assert "database" in response.json()["detail"]
        assert response.headers["Retry-After"]
    time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_since)))
    assert service.pid == pid
    assert service.running(), "the service died with its database"

    pg.start_again()

    # The same key after the outage: accepted now, once.
    response = client.post("/orders", json=late, headers={"Idempotency-Key": "late-1"})
    assert response.status_code == 202, response.text
    views = [wait_for_end(service.url, body["order_id"]) for body in [*bodies, late]]
    with psycopg.connect(pg.url, autocommit=True) as sql:
        for view in views:
            # COMPLETED, not FAILED: an outage is waited out, it never uses up a step's tries.
            assert view["state"] == "COMPLETED", view
            assert_effects_match(sql, view)
        assert sql.execute("SELECT on_hand - reserved FROM inventory.items").fetchone() == (13,)
        # The service holds its executor id again (the crash dropped the lock with the session).
        wait_until(
            lambda: _executor_lock_held(pg.url, "local"), "executor id locked again", timeout=15
        )
        report = audit(sql)
    assert report.violations == []
    assert report.states == {"COMPLETED": 7}


def _executor_lock_held(url: str, executor_id: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l WHERE " + executors.lock_held_sql("%s"),
            (executors.lock_key(executor_id),),
        ).fetchone()
    return row == (1,)


def test_the_audit_flags_a_pending_saga_with_no_live_process(
    own_postgres: CrashablePostgres,
) -> None:
    service = ServiceProcess(
        own_postgres.url, PARTICIPANT_LATENCY_MS="2000", LOG_LEVEL="WARNING",
        SEED_DEMO_CATALOG="false",
    )  # fmt: skip
    try:
        service.start()
        client = httpx.Client(base_url=service.url, timeout=30)
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 500})
        body = order_body({"WIDGET": 1})
        assert client.post("/orders", json=body).status_code == 202
        with psycopg.connect(own_postgres.url, autocommit=True) as sql:
            running = "SELECT state FROM orders.orders WHERE order_id = %s"
            wait_until(
                lambda: sql.execute(running, (body["order_id"],)).fetchone() == ("PENDING",),
                "the saga running",
            )
            assert audit(sql).violations == []

            service.kill()
            wait_until(
                lambda: not _executor_lock_held(own_postgres.url, "local"), "the lock released"
            )
            violations = audit(sql).violations

            service.start(PARTICIPANT_LATENCY_MS="0")
            view = wait_for_end(service.url, body["order_id"])
            after = audit(sql).violations
    finally:
        service.stop()
    assert len(violations) == 1
    assert body["order_id"] in violations[0]
    assert violations[0].startswith("stuck: ")
    assert "no live process holds 'local'" in violations[0]
    assert view["state"] == "COMPLETED"
    assert after == []


def test_a_service_started_while_the_database_is_down_comes_up_once_it_is_back(
    own_postgres: CrashablePostgres,
) -> None:
    """Started while PostgreSQL is down (crashed, restarting, or not up yet after a reboot),
    the service waits for it, up to START_WAIT_SECONDS, instead of exiting: its migrations
    and DBOS's launch are tried again. Then it serves."""
    service = ServiceProcess(own_postgres.url, LOG_LEVEL="WARNING", SEED_DEMO_CATALOG="false")
    own_postgres.crash()

    def back_once_it_waits() -> None:  # PostgreSQL is back once the service has tried it
        deadline = time.monotonic() + 60
        while "migrating failed" not in service.tail(400) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # and tried again at least once more
        own_postgres.start_again()

    back = threading.Thread(target=back_once_it_waits, daemon=True)
    back.start()
    try:
        service.start(timeout=90)
        assert "migrating failed" in service.tail(400)  # it really started during the outage
        with httpx.Client(base_url=service.url, timeout=30) as client:
            client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 500})
            placed = client.post("/orders", params={"wait": 20}, json=order_body({"WIDGET": 1}))
        assert placed.status_code == 200, placed.text
        assert placed.json()["state"] == "COMPLETED"
    except BaseException:
        print(f"--- service log ({service.log}) ---\n{service.tail(120)}")
        raise
    finally:
        back.join()
        service.stop()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_call_that_comes_while_the_service_starts_is_answered_503_at_once(
    own_postgres: CrashablePostgres, processes: str
) -> None:
    """The listening socket is there from the service's first moment. While the service
    starts (here: waiting for PostgreSQL, which is down), a call is answered 503 with
    Retry-After at once, not held in the socket's backlog until the service is up and then
    given its own DB_WAIT_SECONDS (runtime/starting.py). Nothing it sent is stored; once the
    database is back the same call succeeds. With several serving processes the supervisor
    answers, with one the process itself."""
    service = ServiceProcess(
        own_postgres.url,
        LOG_LEVEL="WARNING",
        SEED_DEMO_CATALOG="false",
        DB_WAIT_SECONDS=str(DB_WAIT_SECONDS),
        PROCESSES=processes,
    )
    own_postgres.crash()
    starter = threading.Thread(target=service.start, kwargs={"timeout": 90}, daemon=True)
    starter.start()
    body = order_body({"WIDGET": 1})
    key = {"Idempotency-Key": "while-starting"}
    try:
        wait_until(lambda: "migrating failed" in service.tail(400), "a start", timeout=60)
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for call in (
                lambda: client.post("/orders", json=body, headers=key),
                lambda: client.post("/orders", params={"wait": 10}, json=body, headers=key),
                lambda: client.get("/healthz"),
                lambda: client.get("/orders/0f0f0f0f-0000-4000-8000-000000000000"),
            ):
                started = time.monotonic()
                answer = call()
                took = time.monotonic() - started
                assert answer.status_code == 503, answer.text
                assert "starting" in answer.json()["detail"]
                assert answer.headers["Retry-After"] == "1"
                assert took < 1.0, f"answered after {took:.1f} s"
            own_postgres.start_again()
            starter.join(timeout=90)
            assert client.get("/healthz").status_code == 200
            with psycopg.connect(own_postgres.url) as conn:
                stored = conn.execute("SELECT count(*) FROM orders.orders").fetchone()
            assert stored == (0,)  # nothing of the calls answered 503 was kept
            client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 500})
            placed = client.post("/orders", params={"wait": 20}, json=body, headers=key)
        assert placed.status_code == 200, placed.text
        assert placed.json()["state"] == "COMPLETED"
    except BaseException:
        print(f"--- service log ({service.log}) ---\n{service.tail(120)}")
        raise
    finally:
        own_postgres.start_again()  # if a check above failed first
        starter.join(timeout=90)
        service.stop()
