"""Starting and stopping everything a process needs, in the one safe order."""

import logging
import os
import socket
import threading
import time

import psycopg
from dbos import DBOS, DBOSClient, DBOSConfig, DBOSPortableJSONSerializer

from orders import control, intake
from runtime import database, embedded, executors, seed
from runtime.migrate import migrate
from runtime.settings import Settings
from workflows import order_fulfillment

log = logging.getLogger(__name__)

APP_NAME = "order-saga"

KEEPER_INTERVAL_SECONDS = 2.0
SWEEP_INTERVAL_SECONDS = 10.0
TAKEOVER_CHECK_SECONDS = 5.0
_keeper: "ExecutorLock | None" = None
_client: DBOSClient | None = None  # an API-only process's way to the queue


class ExecutorIdInUse(RuntimeError):
    """Another live process runs with this executor id on this database."""


def dbos_config(url: str, settings: Settings) -> DBOSConfig:
    return {
        "name": APP_NAME,
        "system_database_url": url,
        # Pinned: a process recovers only sagas of its own version (README, "Changing the saga").
        "application_version": settings.application_version,
        "executor_id": settings.executor_id,
        "serializer": DBOSPortableJSONSerializer(),  # readable in psql, no pickle
        "run_migrations": False,  # runtime.migrate ran them, under a lock
        "log_level": settings.log_level,
    }


def start(settings: Settings) -> None:
    """Migrate, open the pool, seed; then, by PROCESS_ROLE:

    - all, worker: launch DBOS (recovering this executor's sagas) and run SAGA_QUEUE; start
      any stored order whose saga was never created, re-send wake-ups a crash may have kept
      from a waiting saga, and keep doing so, and take over the sagas of dead workers;
    - api: run no saga; sagas are put on SAGA_QUEUE through a DBOS client.
    """
    global _client
    url = database.resolve_url(settings)
    runs_sagas = settings.process_role != "api"
    if runs_sagas:
        _hold_executor_id(url, settings.executor_id, settings.executor_lock_wait_seconds)
    migrate(url)  # before launch: recovery runs steps that need our tables
    database.open_pool(url, settings.db_pool_size, settings.step_timeout_seconds)
    if settings.seed_demo_catalog:
        with database.connection() as conn:
            if seed.seed_demo_catalog(conn):
                log.info("demo catalog stored")
    if not runs_sagas:
        _client = DBOSClient(
            system_database_url=url,
            serializer=DBOSPortableJSONSerializer(),
            application_name=APP_NAME,
        )
        order_fulfillment.enqueue_only(_client)
        return
    DBOS(config=dbos_config(url, settings))
    DBOS.launch()
    DBOS.register_queue(
        order_fulfillment.SAGA_QUEUE,
        worker_concurrency=settings.worker_concurrency,
        polling_interval_sec=settings.queue_poll_seconds,
    )
    sweep()
    if _keeper is not None:
        _keeper.start_keeping(settings)


def stop() -> None:
    """Stop DBOS and close the pool. Unfinished sagas stay PENDING for the next start."""
    global _keeper, _client
    keeper, _keeper = _keeper, None
    client, _client = _client, None
    if keeper is not None:
        keeper.stop_keeping()  # no sweep may start while DBOS is being destroyed
    if client is not None:
        order_fulfillment.enqueue_only(None)
        client.destroy()
    else:
        DBOS.destroy()  # first: a step still running can then no longer record anything
    database.close_pool()
    if keeper is not None:
        keeper.release()
    embedded.release()


def _hold_executor_id(url: str, executor_id: str, wait_seconds: float) -> None:
    """Hold a lock on the executor id for the life of the process (its connection).

    DBOS recovers the PENDING workflows of its executor id at launch, so two live processes
    with one id would run each other's sagas. The lock goes when the process dies, even by
    SIGKILL; a restart right after a kill waits a moment for the server to notice. A restart
    of the database drops it too, so a keeper thread takes it again once the database is back.
    """
    global _keeper
    _keeper = ExecutorLock(url, executor_id)
    _keeper.acquire(wait_seconds)


class ExecutorLock:
    """The lock on this process's executor id, and the thread that keeps it and sweeps.

    Every KEEPER_INTERVAL_SECONDS the thread checks the lock's connection; when it was lost
    (a database restart) it takes the lock again. Every SWEEP_INTERVAL_SECONDS it also
    starts stored orders whose saga was never created and re-sends wake-ups a waiting saga
    may have missed: a request answered 503 in an outage, whose client never came back,
    must not wait for the next restart.
    """

    def __init__(self, url: str, executor_id: str) -> None:
        self.url = url
        self.executor_id = executor_id
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._backend_pid: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._settings: Settings | None = None
        self._held_since = time.monotonic()  # since when the lock has been held without a gap

    def acquire(self, wait_seconds: float) -> None:
        self._lock(wait_seconds)

    def start_keeping(self, settings: Settings) -> None:
        self._settings = settings
        self._heartbeat()
        self._thread = threading.Thread(target=self._keep, name="executor-keeper", daemon=True)
        self._thread.start()

    def stop_keeping(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def release(self) -> None:
        self.stop_keeping()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _lock(self, wait_seconds: float) -> None:
        key = executors.lock_key(self.executor_id)
        conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(
            self.url, autocommit=True, **database.LIVENESS
        )
        deadline = time.monotonic() + wait_seconds
        query = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
        while conn.execute(query, (key,)).fetchone() != (True,):
            if self._backend_pid is not None and self._end_own_stale_session(conn, key):
                continue
            if time.monotonic() > deadline or self._stopping.is_set():
                conn.close()
                raise ExecutorIdInUse(
                    f"executor id {self.executor_id!r} is in use by another live process on "
                    "this database; stop it, or give this process its own EXECUTOR_ID"
                )
            time.sleep(0.2)
        self._backend_pid = conn.info.backend_pid
        self._conn = conn
        self._held_since = time.monotonic()

    def _end_own_stale_session(
        self, conn: psycopg.Connection[tuple[object, ...]], key: str
    ) -> bool:
        """The lock may still be held by this process's own old session, cut off from us
        (a broken network path) but not yet noticed by the server: end that session."""
        row = conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.pid = %s AND "
            + executors.lock_held_sql("%s"),
            (self._backend_pid, key),
        ).fetchone()
        if row is None:
            return False
        log.warning("ended this process's stale session holding executor id %r", self.executor_id)
        time.sleep(0.2)
        return True

    def _keep(self) -> None:
        since_sweep = since_takeover = 0.0
        while not self._stopping.wait(KEEPER_INTERVAL_SECONDS):
            if not self._still_held():
                self._take_again()
            since_sweep += KEEPER_INTERVAL_SECONDS
            since_takeover += KEEPER_INTERVAL_SECONDS
            try:
                if since_sweep >= SWEEP_INTERVAL_SECONDS and not self._stopping.is_set():
                    since_sweep = 0.0
                    sweep(min_age_seconds=SWEEP_INTERVAL_SECONDS)
                if since_takeover >= TAKEOVER_CHECK_SECONDS and not self._stopping.is_set():
                    since_takeover = 0.0
                    self._take_over_dead_executors()
            except Exception:  # the database may be down again: next round
                log.warning("housekeeping failed; trying again later", exc_info=True)

    def _heartbeat(self) -> None:
        """Written on the lock's own connection: a heartbeat means the lock is held."""
        assert self._conn is not None
        role = self._settings.process_role if self._settings else "all"
        self._conn.execute(
            """INSERT INTO orders.executors
                   (executor_id, role, host, pid, started_at, heartbeat_at)
               VALUES (%s, %s, %s, %s, now(), now())
               ON CONFLICT (executor_id) DO UPDATE
                  SET heartbeat_at = now(), role = EXCLUDED.role, host = EXCLUDED.host,
                      pid = EXCLUDED.pid,
                      started_at = CASE WHEN orders.executors.pid = EXCLUDED.pid
                                        THEN orders.executors.started_at ELSE now() END""",
            (self.executor_id, role, socket.gethostname(), os.getpid()),
        )

    def _take_over_dead_executors(self) -> None:
        """Resume the unfinished sagas of executors that are gone: their heartbeat is older
        than TAKEOVER_AFTER_SECONDS and nobody holds their executor-id lock. This process
        must itself have held its lock that long without a gap (after a database restart,
        live workers need a moment to take their locks again). The resumed sagas go back on
        the queue, for whichever process dequeues them first; their steps are idempotent."""
        settings = self._settings
        if settings is None:
            return
        after = settings.takeover_after_seconds
        if time.monotonic() - self._held_since < after:
            return
        with database.connection() as conn:
            candidates = conn.execute(
                """SELECT DISTINCT w.executor_id FROM dbos.workflow_status w
                     LEFT JOIN orders.executors e ON e.executor_id = w.executor_id
                    WHERE w.status = 'PENDING' AND w.application_version = %s
                      AND w.executor_id <> %s
                      AND (e.heartbeat_at IS NULL
                           OR e.heartbeat_at < now() - make_interval(secs => %s))""",
                (settings.application_version, self.executor_id, after),
            ).fetchall()
        for (executor_id,) in candidates:
            self._take_over(str(executor_id), settings.application_version)

    def _take_over(self, executor_id: str, version: str) -> None:
        with psycopg.connect(self.url, autocommit=True, **database.LIVENESS) as probe:
            taken = probe.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                (executors.lock_key(executor_id),),
            ).fetchone()
            if taken != (True,):
                return  # its process is alive after all (just slow to beat)
            # Holding its lock, no process with that id can start and recover them meanwhile.
            sagas = probe.execute(
                """SELECT workflow_uuid FROM dbos.workflow_status
                    WHERE status = 'PENDING' AND executor_id = %s
                      AND application_version = %s""",
                (executor_id, version),
            ).fetchall()
            for (saga_id,) in sagas:
                DBOS.resume_workflow(str(saga_id))
            log.warning(
                "executor %r is gone: %d of its sagas resumed elsewhere", executor_id, len(sagas)
            )

    def _still_held(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            self._heartbeat()
            return True
        except psycopg.Error:
            log.warning("lost the lock on executor id %r (database restarted?)", self.executor_id)
            conn.close()
            self._conn = None
            return False

    def _take_again(self) -> None:
        """If another process took the id in between, this one stops at once: two live
        processes with one executor id would run the same sagas (killing it loses nothing)."""
        while not self._stopping.is_set():
            try:
                self._lock(KEEPER_INTERVAL_SECONDS * 5)
                log.warning("holding executor id %r again", self.executor_id)
                return
            except ExecutorIdInUse:
                if self._stopping.is_set():
                    return
                log.critical(
                    "executor id %r was taken by another process: exiting", self.executor_id
                )
                logging.shutdown()
                os._exit(70)
            except psycopg.Error:
                self._stopping.wait(KEEPER_INTERVAL_SECONDS)  # the database is not back yet


def sweep(min_age_seconds: float = 0.0) -> None:
    """Start every stored order whose saga was never created, and re-send the wake-ups of
    settled requests a waiting saga may not have heard of (both idempotent), if older than
    `min_age_seconds` (younger ones are still being handled by their request)."""
    with database.connection() as conn:
        orphans = intake.unstarted(conn, min_age_seconds)
        wakes = control.unsent_wakes(conn, min_age_seconds)
    for saga_id, order in orphans:
        order_fulfillment.start(saga_id, order)
    if orphans:
        log.info("started %d stored orders whose saga had never been created", len(orphans))
    for wake in wakes:
        order_fulfillment.wake(wake.saga_id, wake.topic, wake.idempotency_key)
