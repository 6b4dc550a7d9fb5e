"""Split mode with real processes: an API process that only enqueues (DBOSClient, no
executor) and workers with their own executor ids running the queue. A worker restarted with
its id resumes its sagas; a worker that never comes back has its sagas taken over by the
live ones, each effect still exactly once."""

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from orders.audit import audit
from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_effects_match, available, order_body
from tests.support.process import ServiceProcess

COMMON = {
    "LOG_LEVEL": "WARNING",
    "SEED_DEMO_CATALOG": "false",
    "RETRY_BACKOFF_SECONDS": "0.05",
    "WORKER_CONCURRENCY": "10",
}


@pytest.fixture
def processes(service_db: str) -> Iterator[list[ServiceProcess]]:
    """Processes the test starts; stopped (and their logs shown on failure) at the end."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        if process.running():
            process.stop()


def spawn(
    processes: list[ServiceProcess], service_db: str, role: str, **env: str
) -> ServiceProcess:
    process = ServiceProcess(service_db, PROCESS_ROLE=role, **COMMON, **env)
    processes.append(process)
    process.start()
    return process


def pending_by_executor(sql: psycopg.Connection[Any]) -> dict[str, list[str]]:
    rows = sql.execute(
        """SELECT executor_id, array_agg(workflow_uuid) FROM dbos.workflow_status
            WHERE status = 'PENDING' GROUP BY executor_id"""
    ).fetchall()
    return {executor: list(ids) for executor, ids in rows}


def place(
    api: ServiceProcess, count: int, coordination: str = "orchestration"
) -> list[dict[str, Any]]:
    bodies = [order_body({"WIDGET": 1}, coordination=coordination) for _ in range(count)]
    with httpx.Client(base_url=api.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 1000, "price_cents": 900})
        for body in bodies:
            assert client.post("/orders", json=body).status_code == 202
    return bodies


def all_finish_once(
    api: ServiceProcess, sql: psycopg.Connection[Any], bodies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    views = [wait_for_end(api.url, body["order_id"], timeout=90) for body in bodies]
    for view in views:
        assert view["state"] == "COMPLETED", view
        assert_effects_match(sql, view)
    assert available(sql, "WIDGET") == 1000 - len(bodies)
    assert audit(sql).violations == []
    return views


def workflows_of(sql: psycopg.Connection[Any], views: list[dict[str, Any]]) -> list[str]:
    """The DBOS workflows that carried these orders: each saga's, or each choreographed
    order's event handlers."""
    rows = sql.execute(
        """SELECT saga_id FROM orders.orders WHERE order_id = ANY(%(ids)s)
              AND coordination = 'orchestration'
           UNION ALL
           SELECT workflow_id FROM orders.deliveries WHERE order_id = ANY(%(ids)s)""",
        {"ids": [view["order_id"] for view in views]},
    ).fetchall()
    return [row[0] for row in rows]


# Split mode runs a choreographed order's event handlers on the workers, as it runs sagas.
COORDINATIONS = pytest.mark.parametrize("coordination", ["orchestration", "choreography"])


@COORDINATIONS
def test_a_worker_that_never_comes_back_has_its_sagas_taken_over(
    processes: list[ServiceProcess],
    service_db: str,
    sql: psycopg.Connection[Any],
    coordination: str,
) -> None:
    env = {"PARTICIPANT_LATENCY_MS": "300", "TAKEOVER_AFTER_SECONDS": "4"}
    api = spawn(processes, service_db, "api", **env)
    spawn(processes, service_db, "worker", EXECUTOR_ID="w1", **env)
    w2 = spawn(processes, service_db, "worker", EXECUTOR_ID="w2", **env)
    bodies = place(api, 30, coordination)
    wait_until(lambda: {"w1", "w2"} <= set(pending_by_executor(sql)), "both workers running sagas")
    orphaned = pending_by_executor(sql)["w2"]

    w2.kill()  # and never started again

    all_finish_once(api, sql, bodies)
    rows = sql.execute(
        "SELECT executor_id, status FROM dbos.workflow_status WHERE workflow_uuid = ANY(%s)",
        (orphaned,),
    ).fetchall()
    assert rows
    assert {tuple(row) for row in rows} == {("w1", "SUCCESS")}  # finished by the live worker
    executors = {r[0] for r in sql.execute("SELECT executor_id FROM dbos.workflow_status")}
    assert executors <= {"w1", "w2"}  # the API process ran nothing itself


@COORDINATIONS
def test_a_worker_restarted_with_its_id_resumes_its_own_sagas(
    processes: list[ServiceProcess],
    service_db: str,
    sql: psycopg.Connection[Any],
    coordination: str,
) -> None:
    env = {"PARTICIPANT_LATENCY_MS": "300", "TAKEOVER_AFTER_SECONDS": "600"}
    api = spawn(processes, service_db, "api", **env)
    w1 = spawn(processes, service_db, "worker", EXECUTOR_ID="w1", **env)
    bodies = place(api, 8, coordination)
    wait_until(lambda: "w1" in pending_by_executor(sql), "the worker running sagas")

    w1.kill()
    w1.start()

    views = all_finish_once(api, sql, bodies)
    carriers = workflows_of(sql, views)
    rows = sql.execute(
        "SELECT DISTINCT executor_id FROM dbos.workflow_status WHERE workflow_uuid = ANY(%s)",
        (carriers,),
    ).fetchall()
    assert len(carriers) == len(views) * (1 if coordination == "orchestration" else 5)
    assert rows == [("w1",)]


def test_a_live_worker_is_never_taken_over(
    processes: list[ServiceProcess], service_db: str, sql: psycopg.Connection[Any]
) -> None:
    """w1 runs sagas whose steps take longer than its lease, while w2 checks for dead
    executors every few seconds: w1 beats several times within each lease (and holds its
    lock), so none of its sagas moves."""
    env = {"PARTICIPANT_LATENCY_MS": "1500", "TAKEOVER_AFTER_SECONDS": "2"}
    api = spawn(processes, service_db, "api", **env)
    spawn(processes, service_db, "worker", EXECUTOR_ID="w1", **env)
    bodies = place(api, 4)
    wait_until(lambda: len(pending_by_executor(sql).get("w1", [])) == 4, "w1 running all four")
    spawn(processes, service_db, "worker", EXECUTOR_ID="w2", **env)

    all_finish_once(api, sql, bodies)
    rows = sql.execute("SELECT DISTINCT executor_id FROM dbos.workflow_status").fetchall()
    assert rows == [("w1",)]


def test_an_api_process_and_workers_started_at_once_on_a_new_database_all_come_up(
    processes: list[ServiceProcess], service_db: str, sql: psycopg.Connection[Any]
) -> None:
    """As `make cluster` starts them: all migrate at once (one at a time, under a lock that
    is polled, so DBOS's CREATE INDEX CONCURRENTLY never waits on a blocked starter)."""
    group = [
        ServiceProcess(service_db, PROCESS_ROLE="api", **COMMON),
        ServiceProcess(service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **COMMON),
        ServiceProcess(service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w2", **COMMON),
    ]
    processes.extend(group)
    threads = [threading.Thread(target=process.start, kwargs={"timeout": 60}) for process in group]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(process.running() for process in group)
    bodies = place(group[0], 6)
    all_finish_once(group[0], sql, bodies)


@pytest.mark.parametrize("worker_concurrency", [None, "30"], ids=["default", "control-30"])
def test_sagas_waiting_for_approval_leave_a_worker_room_for_new_ones(
    processes: list[ServiceProcess],
    service_db: str,
    sql: psycopg.Connection[Any],
    worker_concurrency: str | None,
) -> None:
    """DBOS counts every unfinished saga a worker took from the queue against its
    WORKER_CONCURRENCY, those waiting for approval included. With the default, 30 sagas
    waiting (more than the old default of 20) leave room to run a new order at once; the
    control, a limit of exactly 30, shows the new order held back in the queue."""
    env = {"APPROVAL_THRESHOLD_CENTS": "10000"}
    common = {k: v for k, v in COMMON.items() if k != "WORKER_CONCURRENCY"}
    if worker_concurrency is not None:
        common["WORKER_CONCURRENCY"] = worker_concurrency
    api = ServiceProcess(service_db, PROCESS_ROLE="api", **common, **env)
    worker = ServiceProcess(service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **common, **env)
    processes.extend([api, worker])
    api.start()
    worker.start()
    big = [order_body({"BIG": 1}) for _ in range(30)]
    small = order_body({"WIDGET": 1})
    with httpx.Client(base_url=api.url, timeout=30) as client:
        client.put("/inventory/BIG", json={"available": 100, "price_cents": 20_000})
        client.put("/inventory/WIDGET", json={"available": 100, "price_cents": 900})
        for body in big:
            assert client.post("/orders", json=body).status_code == 202
        ids = [body["order_id"] for body in big]
        wait_until(
            lambda: (
                sql.execute(
                    "SELECT count(*) FROM orders.orders WHERE order_id = ANY(%s) "
                    "AND state = 'AWAITING_APPROVAL'",
                    (ids,),
                ).fetchone()
                == (30,)
            ),
            "30 sagas waiting for approval",
        )
        assert client.post("/orders", json=small).status_code == 202
        if worker_concurrency is not None:  # the control: the worker is full
            with pytest.raises(AssertionError):
                wait_for_end(api.url, small["order_id"], timeout=5)
        else:
            assert wait_for_end(api.url, small["order_id"], timeout=30)["state"] == "COMPLETED"
        for order_id in ids:
            assert client.post(f"/orders/{order_id}/approve", json={}).status_code == 202
    views = [wait_for_end(api.url, body["order_id"], timeout=90) for body in [*big, small]]
    for view in views:
        assert view["state"] == "COMPLETED", view
        assert_effects_match(sql, view)
    assert audit(sql).violations == []
