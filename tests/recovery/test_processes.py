"""`python -m api` with several serving processes (PROCESSES, one per core by default): they
share the port, each runs sagas under its own executor id, and the service behaves as one:
a SIGKILL of it leaves nothing running, a restart resumes every process's sagas, a serving
process that dies is started again, and one that cannot start stops the service."""

import threading
import time
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from runtime import executors
from tests.recovery.conftest import all_complete_once, wait_until
from tests.support.orders import order_body
from tests.support.process import ServiceProcess

TWO = {"PROCESSES": "2", "PARTICIPANT_LATENCY_MS": "300"}


@pytest.fixture
def two(service_db: str) -> Any:
    process = ServiceProcess(service_db, LOG_LEVEL="WARNING", SEED_DEMO_CATALOG="false", **TWO)
    yield process
    process.stop()


def serving(service: ServiceProcess) -> list[psutil.Process]:
    return psutil.Process(service.pid).children()


def pending_by_executor(sql: psycopg.Connection[Any]) -> dict[str, int]:
    rows = sql.execute(
        """SELECT executor_id, count(*) FROM dbos.workflow_status
            WHERE status = 'PENDING' GROUP BY executor_id"""
    ).fetchall()
    return dict(rows)


def place_until_both_run(
    service: ServiceProcess, sql: psycopg.Connection[Any]
) -> list[dict[str, Any]]:
    """Orders from fresh connections, four at a time, until both processes run some."""
    bodies: list[dict[str, Any]] = []
    httpx.put(f"{service.url}/inventory/WIDGET", json={"available": 1000, "price_cents": 900})

    def post(body: dict[str, Any]) -> None:
        answer = httpx.post(f"{service.url}/orders", json=body, timeout=30)
        assert answer.status_code == 202, answer.text

    while set(pending_by_executor(sql)) != {"local", "local-2"}:
        assert len(bodies) < 48, f"one process got every order: {pending_by_executor(sql)}"
        batch = [order_body({"WIDGET": 1}) for _ in range(4)]
        threads = [threading.Thread(target=post, args=(body,)) for body in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bodies += batch
        time.sleep(0.1)
    return bodies


def test_two_processes_share_the_port_and_a_kill_of_the_service_leaves_nothing_running(
    two: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    two.start()
    assert len(serving(two)) == 2
    bodies = place_until_both_run(two, sql)
    children = serving(two)

    two.kill()  # SIGKILL of the service (its supervisor), as `kill -9` would

    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"serving processes outlived the service: {alive}"
    two.start(PARTICIPANT_LATENCY_MS="0")  # the port is free at once
    # Each process put its own sagas back on DBOS's queue at launch; either may finish them.
    all_complete_once(two.url, sql, bodies)


def test_a_serving_process_that_dies_is_started_again_and_resumes_its_sagas(
    two: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    two.start()
    bodies = place_until_both_run(two, sql)
    second = next(p for p in serving(two) if "local-2" in " ".join(p.environ().values()))

    second.kill()

    wait_until(
        lambda: len(serving(two)) == 2 and second.pid not in {p.pid for p in serving(two)},
        "the dead serving process started again",
        timeout=30,
    )
    all_complete_once(two.url, sql, bodies)
    assert two.running()
    assert "serving process 2 exited" in two.tail()


def test_sigterm_stops_every_serving_process(two: ServiceProcess) -> None:
    two.start()
    children = serving(two)

    assert two.stop() == 0

    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive


def test_a_serving_process_that_cannot_start_stops_the_service(
    two: ServiceProcess, service_db: str
) -> None:
    """A second service on the same database, on another port: its first process finds
    executor id 'local' in use, so the whole second service exits, leaving nothing."""
    two.start()
    second = ServiceProcess(
        service_db, LOG_LEVEL="WARNING", SEED_DEMO_CATALOG="false",
        EXECUTOR_LOCK_WAIT_SECONDS="1", **TWO,
    )  # fmt: skip
    assert second.start_expecting_failure(timeout=60) != 0
    assert "executor id 'local' is in use by another live process" in second.tail()
    assert "did not start" in second.tail()
    assert two.running()


def test_a_serving_process_that_cannot_start_while_the_other_serves_is_tried_again(
    two: ServiceProcess, service_db: str, sql: psycopg.Connection[Any]
) -> None:
    """Serving process 2 is SIGKILLed and, before it is back, another live holder takes its
    executor id (this test: the lock, and a heartbeat that keeps moving). Its starts fail
    while process 1 goes on serving, and the service stays up; once the id is free again,
    the next start comes up. (With no other process serving, a failed start stops the
    service: the test above.)"""
    two.start(EXECUTOR_LOCK_WAIT_SECONDS="1")
    second = next(p for p in serving(two) if "local-2" in " ".join(p.environ().values()))
    holder = psycopg.connect(service_db, autocommit=True)
    beating = threading.Event()

    def beat() -> None:
        with psycopg.connect(service_db, autocommit=True) as conn:
            while not beating.wait(0.2):
                conn.execute(
                    """UPDATE orders.executors SET heartbeat_at = now()
                        WHERE executor_id = 'local-2'"""
                )

    beater = threading.Thread(target=beat, daemon=True)
    try:
        second.kill()
        second.wait(timeout=10)
        wait_until(
            lambda: (
                holder.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended('dbos-executor:local-2', 0))"
                ).fetchone()
                == (True,)
            ),
            "the test holds executor id 'local-2'",
            timeout=5,
            every=0.01,
        )
        beater.start()
        wait_until(
            lambda: two.log.read_text().count("serving process 2 did not start") >= 2,
            "two failed starts of serving process 2",
            timeout=60,
        )
        assert two.running()
        assert "executor id 'local-2' is in use by another live process" in two.log.read_text()
        with httpx.Client(base_url=two.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200  # process 1 serves all along
    finally:
        beating.set()
        if beater.is_alive():
            beater.join(timeout=5)
        holder.close()  # the id is free again

    alive = f"SELECT {executors.alive_sql(repr('local-2'))}"
    wait_until(
        lambda: sql.execute(alive).fetchone() == (True,),
        "serving process 2 up again, holding its id",
        timeout=60,
    )
    assert len(serving(two)) == 2
    assert two.running()
    with httpx.Client(base_url=two.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 500})
        placed = client.post("/orders", params={"wait": 20}, json=order_body({"WIDGET": 1}))
    assert placed.status_code == 200, placed.text
    assert placed.json()["state"] == "COMPLETED"
