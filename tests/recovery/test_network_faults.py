"""A bad network between the service and PostgreSQL, made by a fault proxy (chaos/faultproxy.py)
in front of the suite's real server: connections cut (also half-open, the server keeping the
session), stalled, partitioned, and answers lost after the server applied the request. The
service (`python -m api`, a subprocess) keeps running, answers every call within its budget,
and every saga finishes with each effect once."""

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from chaos.faultproxy import FaultProxy
from orders.audit import audit
from runtime import database, executors
from runtime.migrate import MIGRATE_APP_PREFIX, migrate
from tests.recovery.conftest import all_complete_once as completed_once
from tests.recovery.conftest import wait_for_end, wait_until
from tests.support.orders import assert_effects_match, order_body
from tests.support.process import ROOT, ServiceProcess

COMMON = {"LOG_LEVEL": "WARNING", "SEED_DEMO_CATALOG": "false", "RETRY_BACKOFF_SECONDS": "0.05"}
HEARTBEAT = r"^UPDATE orders\.executors SET heartbeat_at"
BEFORE_THE_FIX = "45a1271"  # the last commit whose lease did not survive lost replies
DB_WAIT_SECONDS = 2.0
LOST_ANSWERS = 12


@pytest.fixture
def proxy(service_db: str) -> Iterator[FaultProxy]:
    with FaultProxy(service_db) as started:
        yield started


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[list[ServiceProcess]]:
    """Services the test starts; stopped, and their logs shown if the test fails."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in started:
            print(f"--- service log ({process.log}) ---\n{process.tail(80)}")


def service(
    processes: list[ServiceProcess], url: str, *, root: Path = ROOT, **env: str
) -> ServiceProcess:
    process = ServiceProcess(url, root=root, **{**COMMON, **env})
    processes.append(process)
    return process


def place(base_url: str, bodies: list[dict[str, Any]], stock: int | None = 1000) -> None:
    """Stock WIDGET (unless `stock` is None) and POST every body, each with its own
    Idempotency-Key, resending it until the API answers (a 503 or a cut connection only
    mean: again)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        if stock is not None:
            _until_answered(lambda: client.put("/inventory/WIDGET", json=_item(stock)))
        for body in bodies:
            key = f"key-{body['order_id']}"
            answer = _until_answered(
                lambda body=body, key=key: client.post(
                    "/orders", json=body, headers={"Idempotency-Key": key}
                )
            )
            assert answer.status_code == 202, answer.text


def _item(available: int) -> dict[str, int]:
    return {"available": available, "price_cents": 900}


def _until_answered(call: Any, tries: int = 100) -> httpx.Response:
    for _ in range(tries):
        try:
            response: httpx.Response = call()
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if response.status_code != 503:
            return response
        time.sleep(0.1)
    raise AssertionError("the API never answered")


def pending(sql: psycopg.Connection[Any]) -> int:
    row = sql.execute("SELECT count(*) FROM orders.orders WHERE state = 'PENDING'").fetchone()
    return int(row[0]) if row else 0


def all_complete_once(
    base_url: str, sql: psycopg.Connection[Any], bodies: list[dict[str, Any]]
) -> None:
    completed_once(base_url, sql, bodies)
    orders = sql.execute("SELECT count(*) FROM orders.orders").fetchone()
    assert orders == (len(bodies),)  # one order per key, however often it was sent


def lock_holder(sql: psycopg.Connection[Any], executor_id: str = "local") -> executors.Holder:
    found = executors.holder(sql, executor_id)
    assert found is not None, f"nobody holds executor id {executor_id!r}"
    return found


def code_before_the_fix(tmp_path: Path) -> Path:
    """This project as it was at BEFORE_THE_FIX, in a directory of its own."""
    root = tmp_path / "before-the-fix"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_THE_FIX], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.fail(f"the negative control needs commit {BEFORE_THE_FIX} in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


# --- the lease on the executor id ---------------------------------------------------------


@pytest.mark.parametrize("code", ["this", "before-the-fix"])
def test_a_lost_heartbeat_answer_then_a_lost_lock_answer_leave_the_service_running(
    code: str,
    proxy: FaultProxy,
    service_db: str,
    sql: psycopg.Connection[Any],
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    """The issue's sequence: the answer to a heartbeat is lost (the session ends with it),
    then the answer to the retake's pg_try_advisory_lock is lost with the server's side left
    open, so the server grants the lock to a session the service no longer knows. The
    service ends that session (its own, by its application_name) and goes on. The code
    before the fix exits with 70 after about 12 s instead (the negative control); its
    executor is then stuck behind an orphan, which the audit now reports once the orphan's
    heartbeat is past its lease, and this code starts at once on that database anyway."""
    root = ROOT if code == "this" else code_before_the_fix(tmp_path)
    # Before the fix, sagas must still be in flight when it exits, some 15 s from now.
    latency = "400" if code == "this" else "5000"
    first = service(processes, proxy.url_for(service_db), root=root, PARTICIPANT_LATENCY_MS=latency)
    first.start()
    bodies = [order_body({"WIDGET": 1}) for _ in range(6)]
    place(first.url, bodies)
    wait_until(lambda: pending(sql) == 6, "six sagas mid-way")

    # (Before the fix, the heartbeat was an INSERT and the lock session had no name.)
    lease_app = executors.LEASE_APP_PREFIX if code == "this" else None
    beat = HEARTBEAT if code == "this" else r"^INSERT INTO orders\.executors"
    lost_beat = proxy.lose_reply(sql=beat, application_name=lease_app)
    lost_lock = proxy.lose_reply(
        sql=r"pg_try_advisory_lock", application_name=lease_app, half_open=True
    )
    assert lost_beat.wait(10), "no heartbeat went through the proxy"
    assert lost_lock.wait(10), "the service did not try to take its lock again"
    orphan = _lock_pid(sql)  # the session the service no longer knows
    fired_at = time.monotonic()

    if code == "before-the-fix":
        assert first.wait_for_exit(timeout=40) == 70
        assert "was taken by another process: exiting" in first.tail()
        assert _lock_pid(sql) == orphan  # still held by the orphan
        migrate(service_db)  # this code's schema, as an upgrade would bring it
        wait_until(lambda: _heartbeat_age(sql) > 15, "the orphan's heartbeat past its lease", 30)
        stuck = audit(sql).violations
        assert len(stuck) == 6, stuck
        assert all(v.startswith("stuck: ") and "no live process holds 'local'" in v for v in stuck)
        restarted = service(processes, proxy.url_for(service_db))
        restarted.start(timeout=30)  # ends the orphan (its lease ran out) and starts
        assert "past its lease" in restarted.tail()
        all_complete_once(restarted.url, sql, bodies)
        return

    wait_until(lambda: _lock_pid(sql) not in (None, orphan), "the lock taken again", 15)
    assert lock_holder(sql).application_name.startswith(executors.LEASE_APP_PREFIX)
    assert not _session_exists(sql, orphan), "the orphaned session was not ended"
    all_complete_once(first.url, sql, bodies)
    time.sleep(max(0.0, fired_at + 15 - time.monotonic()))  # past where the old code exits
    assert first.running(), f"the service exited:\n{first.tail()}"
    assert "ending this process's orphaned session" in first.tail()


def _lock_pid(sql: psycopg.Connection[Any], executor_id: str = "local") -> int | None:
    """The session holding the executor id's lock (None: nobody), from pg_locks alone."""
    row = sql.execute(
        "SELECT l.pid FROM pg_locks l WHERE " + executors.lock_held_sql("%s"),
        (executors.lock_key(executor_id),),
    ).fetchone()
    return None if row is None else int(row[0])


def _heartbeat_age(sql: psycopg.Connection[Any], executor_id: str = "local") -> float:
    row = sql.execute(
        "SELECT extract(epoch FROM now() - heartbeat_at) FROM orders.executors "
        "WHERE executor_id = %s",
        (executor_id,),
    ).fetchone()
    assert row is not None
    return float(row[0])


def _session_exists(sql: psycopg.Connection[Any], pid: int) -> bool:
    row = sql.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row == (1,)


@pytest.mark.parametrize(
    "application",
    [MIGRATE_APP_PREFIX, executors.LEASE_APP_PREFIX, database.APP_NAME, "dbos_transact"],
    ids=["migrations", "lease", "app-pool", "dbos"],
)
def test_a_lost_answer_while_the_service_starts_does_not_stop_the_start(
    application: str,
    proxy: FaultProxy,
    service_db: str,
    sql: psycopg.Connection[Any],
    processes: list[ServiceProcess],
) -> None:
    """The answer to the first commit of each kind of connection a start makes (migrating,
    taking the lease, the pool, DBOS's launch) is lost, the server's side left open: the
    start tries again, ending its own orphan where it holds a lock, and comes up."""
    lost = proxy.lose_reply(
        sql=r"^\s*(COMMIT|INSERT|UPDATE|WITH|SET|SELECT pg_try_advisory_lock)\b",
        application_name=application,
        half_open=True,
    )
    starting = service(processes, proxy.url_for(service_db))
    starting.start(timeout=60)
    assert lost.wait(0), f"no answer to {application!r} was lost"
    bodies = [order_body({"WIDGET": 1}) for _ in range(3)]
    place(starting.url, bodies)
    all_complete_once(starting.url, sql, bodies)


# --- answers within their budget ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["partition", "stalled-connections"])
def test_every_call_answers_within_its_budget_while_the_path_stalls(
    fault: str,
    proxy: FaultProxy,
    service_db: str,
    sql: psycopg.Connection[Any],
    processes: list[ServiceProcess],
) -> None:
    """While every connection the service has stalls (and, in a partition, new ones too),
    each kind of call still answers within DB_WAIT_SECONDS + 1 s, and the sagas in flight
    pause and then finish once the path is back."""
    running = service(
        processes,
        proxy.url_for(service_db),
        PARTICIPANT_LATENCY_MS="300",
        DB_WAIT_SECONDS=str(DB_WAIT_SECONDS),
    )
    running.start()
    bodies = [order_body({"WIDGET": 1}) for _ in range(4)]
    place(running.url, bodies)
    wait_until(lambda: pending(sql) == 4, "four sagas mid-way")
    late = order_body({"WIDGET": 1})
    key = {"Idempotency-Key": f"key-{late['order_id']}"}

    if fault == "partition":
        proxy.partition()
    else:
        for link in proxy.links():
            proxy.stall(link.id, 12)
    took: dict[str, tuple[int, float]] = {}
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for name, call in {
            "POST /orders": lambda: client.post("/orders", json=late, headers=key),
            "GET /orders/{id}": lambda: client.get(f"/orders/{bodies[0]['order_id']}"),
            "GET /orders": lambda: client.get("/orders"),
            "POST /orders/{id}/cancel": lambda: client.post(
                f"/orders/{bodies[1]['order_id']}/cancel"
            ),
            "GET /inventory/{sku}": lambda: client.get("/inventory/WIDGET"),
            "GET /payments": lambda: client.get("/payments", params={"order_id": "x"}),
            "GET /healthz": lambda: client.get("/healthz"),
        }.items():
            started = time.monotonic()
            response = call()
            took[name] = (response.status_code, time.monotonic() - started)
    if fault == "partition":
        proxy.heal()
    slow = {name: t for name, (_, t) in took.items() if t > DB_WAIT_SECONDS + 1}
    assert not slow, f"answered later than DB_WAIT_SECONDS + 1 s: {took}"
    if fault == "partition":
        assert all(status == 503 for status, _ in took.values()), took
    assert running.running()

    place(running.url, [late])  # the same key again: accepted now, once
    cancelled = bodies[1]["order_id"]
    for body in [*bodies, late]:
        view = wait_for_end(running.url, body["order_id"], timeout=90)
        assert_effects_match(sql, view)
        if body["order_id"] != cancelled or took["POST /orders/{id}/cancel"][0] == 503:
            assert view["state"] == "COMPLETED", view  # a stall is waited out, never failed
    assert audit(sql).violations == []


# --- answers lost after the server applied the request ------------------------------------


@pytest.mark.parametrize("application", ["dbos_transact", "order-saga app"])
def test_lost_answers_to_commits_lose_nothing_and_do_nothing_twice(
    application: str,
    proxy: FaultProxy,
    service_db: str,
    sql: psycopg.Connection[Any],
    processes: list[ServiceProcess],
) -> None:
    """The answer to a COMMIT or an autocommit write is lost after the server applied it,
    again and again, on DBOS's connections or on the app's own (steps, services, intake),
    with the server's side sometimes left open: every saga completes, each effect once, and
    every order is stored once however often its POST had to be resent."""
    running = service(
        processes,
        proxy.url_for(service_db),
        PARTICIPANT_LATENCY_MS="50",
        DB_WAIT_SECONDS=str(DB_WAIT_SECONDS),
    )
    running.start()
    bodies: list[dict[str, Any]] = []
    fired: list[str] = []
    stop = threading.Event()

    def lose_answers() -> None:
        while not stop.is_set() and len(fired) < LOST_ANSWERS:
            armed = proxy.lose_reply(
                sql=r"^\s*(COMMIT|INSERT|UPDATE|DELETE|WITH)\b",
                application_name=application,
                half_open=len(fired) % 2 == 1,
            )
            if armed.wait(5):
                fired.append(armed.sql or "")
            else:
                armed.disarm()
            time.sleep(0.2)

    saboteur = threading.Thread(target=lose_answers, daemon=True)
    saboteur.start()
    try:
        while len(fired) < LOST_ANSWERS and len(bodies) < 120:  # orders until enough struck
            batch = [order_body({"WIDGET": 1}) for _ in range(4)]
            place(running.url, batch, stock=None if bodies else 1000)
            bodies += batch
        all_complete_once(running.url, sql, bodies)
    finally:
        stop.set()
        saboteur.join(timeout=10)
    assert len(fired) >= LOST_ANSWERS, f"only {len(fired)} answers were lost: {fired}"
    assert running.running()


# --- split mode: a worker whose lease ran out -----------------------------------------------

SPLIT = {"PARTICIPANT_LATENCY_MS": "400", "TAKEOVER_AFTER_SECONDS": "3", "WORKER_CONCURRENCY": "10"}


def pending_of(sql: psycopg.Connection[Any], executor_id: str) -> int:
    row = sql.execute(
        "SELECT count(*) FROM dbos.workflow_status WHERE status = 'PENDING' AND executor_id = %s",
        (executor_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_worker_cut_off_past_its_lease_is_taken_over_and_exits_when_it_comes_back(
    proxy: FaultProxy,
    service_db: str,
    sql: psycopg.Connection[Any],
    processes: list[ServiceProcess],
) -> None:
    """w2 reaches the database through the proxy, and the path goes silent for longer than
    its lease: w1 takes its sagas over (ending w2's lock session, which the server still
    keeps). When the path comes back, w2 finds its lease row taken and exits with 70 rather
    than run sagas that are w1's now; started again, it comes up at once."""
    api = service(processes, service_db, PROCESS_ROLE="api", **SPLIT)
    api.start()
    service(processes, service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **SPLIT).start()
    w2 = service(
        processes, proxy.url_for(service_db), PROCESS_ROLE="worker", EXECUTOR_ID="w2", **SPLIT
    )
    w2.start()
    bodies = [order_body({"WIDGET": 1}) for _ in range(16)]
    place(api.url, bodies)
    wait_until(lambda: pending_of(sql, "w2") >= 2, "w2 running sagas")

    proxy.partition()
    taken = "SELECT taken_over_by FROM orders.executors WHERE executor_id = 'w2'"
    wait_until(lambda: sql.execute(taken).fetchone() == ("w1",), "w1 taking over w2", 30)
    proxy.heal()

    assert w2.wait_for_exit(timeout=30) == 70
    assert "was taken over by another process" in w2.tail()
    all_complete_once(api.url, sql, bodies)
    w2.start(timeout=30)


def test_a_worker_whose_lock_is_held_by_a_session_that_does_not_beat_is_taken_over(
    service_db: str, sql: psycopg.Connection[Any], processes: list[ServiceProcess]
) -> None:
    """w2 dies, and a session that is not its process holds its executor-id lock (as an
    orphan left half-open by a path failure does, on a server that would keep it for hours).
    Its heartbeat ages past its lease: the audit reports its sagas stuck, and a worker that
    comes up ends that session and takes the sagas over, each effect once."""
    api = service(processes, service_db, PROCESS_ROLE="api", **SPLIT)
    api.start()
    w2 = service(processes, service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w2", **SPLIT)
    w2.start()
    bodies = [order_body({"WIDGET": 1}) for _ in range(8)]
    place(api.url, bodies)
    wait_until(lambda: pending_of(sql, "w2") >= 2, "w2 running sagas")

    orphan = psycopg.connect(service_db, autocommit=True)
    w2.kill()
    orphan.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (executors.lock_key("w2"),))
    wait_until(lambda: _heartbeat_age(sql, "w2") > 3, "w2's heartbeat past its lease", 15)
    stuck = [v for v in audit(sql).violations if "no live process holds 'w2'" in v]
    assert stuck, "the audit counts an orphan-held executor as alive"

    w1 = service(processes, service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **SPLIT)
    w1.start()
    all_complete_once(api.url, sql, bodies)
    with pytest.raises(psycopg.OperationalError):
        orphan.execute("SELECT 1")  # w1 ended it
    assert "past its lease" in w1.tail()
