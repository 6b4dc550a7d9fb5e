"""Starting and stopping everything a process needs, in the one safe order."""

import logging
import os
import threading
import time

import psycopg
from dbos import DBOS, DBOSConfig, DBOSPortableJSONSerializer

from orders import control, intake
from runtime import database, embedded, seed
from runtime.migrate import migrate
from runtime.settings import Settings
from workflows import order_fulfillment

log = logging.getLogger(__name__)

APP_NAME = "order-saga"

_executor_lock: psycopg.Connection[tuple[object, ...]] | None = None
_keeper_stop = threading.Event()
KEEPER_INTERVAL_SECONDS = 2.0


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
    """Migrate, open the pool, seed, launch DBOS (recovering this executor's sagas), start
    any stored order whose saga was never created, and re-send wake-ups a crash may have
    kept from a waiting saga."""
    url = database.resolve_url(settings)
    _hold_executor_id(url, settings.executor_id, settings.executor_lock_wait_seconds)
    migrate(url)  # before launch: recovery runs steps that need our tables
    database.open_pool(url, settings.db_pool_size, settings.step_timeout_seconds)
    if settings.seed_demo_catalog:
        with database.connection() as conn:
            if seed.seed_demo_catalog(conn):
                log.info("demo catalog stored")
    DBOS(config=dbos_config(url, settings))
    DBOS.launch()
    with database.connection() as conn:
        orphans = intake.unstarted(conn)
        wakes = control.unsent_wakes(conn)
    for saga_id, order in orphans:
        order_fulfillment.start(saga_id, order)
    if orphans:
        log.info("started %d stored orders whose saga had never been created", len(orphans))
    for wake in wakes:
        order_fulfillment.wake(wake.saga_id, wake.topic, wake.idempotency_key)


def stop() -> None:
    """Stop DBOS and close the pool. Unfinished sagas stay PENDING for the next start."""
    global _executor_lock
    _keeper_stop.set()
    DBOS.destroy()  # first: a step still running can then no longer record anything
    database.close_pool()
    if _executor_lock is not None:
        _executor_lock.close()
        _executor_lock = None
    embedded.release()


def _hold_executor_id(url: str, executor_id: str, wait_seconds: float) -> None:
    """Hold a lock on the executor id for the life of the process (its connection).

    DBOS recovers the PENDING workflows of its executor id at launch, so two live processes
    with one id would run each other's sagas. The lock goes when the process dies, even by
    SIGKILL; a restart right after a kill waits a moment for the server to notice. A restart
    of the database drops it too, so a keeper thread takes it again once the database is back.
    """
    global _executor_lock
    _executor_lock = _lock_executor_id(url, executor_id, wait_seconds)
    _keeper_stop.clear()
    keeper = threading.Thread(
        target=_keep_executor_id, args=(url, executor_id), name="executor-id-keeper", daemon=True
    )
    keeper.start()


def _lock_executor_id(
    url: str, executor_id: str, wait_seconds: float
) -> psycopg.Connection[tuple[object, ...]]:
    conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(
        url, autocommit=True, connect_timeout=5
    )
    deadline = time.monotonic() + wait_seconds
    query = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
    while conn.execute(query, (executor_lock_key(executor_id),)).fetchone() != (True,):
        if time.monotonic() > deadline:
            conn.close()
            raise ExecutorIdInUse(
                f"executor id {executor_id!r} is in use by another live process on this "
                "database; stop it, or give this process its own EXECUTOR_ID"
            )
        time.sleep(0.2)
    return conn


def executor_lock_key(executor_id: str) -> str:
    """The advisory lock (hashtextextended of this text) a live process holds on its id."""
    return f"dbos-executor:{executor_id}"


def _keep_executor_id(url: str, executor_id: str) -> None:
    """Every few seconds, make sure the lock is still held; after a database restart, take
    it again. If another process took the id in between, this one stops at once: two live
    processes with one executor id would run the same sagas (killing it loses nothing)."""
    global _executor_lock
    while not _keeper_stop.wait(KEEPER_INTERVAL_SECONDS):
        conn = _executor_lock
        if conn is None:
            return
        try:
            conn.execute("SELECT 1")
            continue
        except psycopg.Error:
            log.warning("lost the lock on executor id %r (database restarted?)", executor_id)
        conn.close()
        while not _keeper_stop.is_set():
            try:
                _executor_lock = _lock_executor_id(url, executor_id, KEEPER_INTERVAL_SECONDS * 5)
                log.warning("holding executor id %r again", executor_id)
                break
            except ExecutorIdInUse:
                log.critical("executor id %r was taken by another process: exiting", executor_id)
                logging.shutdown()
                os._exit(70)
            except psycopg.Error:
                _keeper_stop.wait(KEEPER_INTERVAL_SECONDS)  # the database is not back yet
