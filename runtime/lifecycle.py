"""Starting and stopping everything a process needs, in the one safe order."""

import logging
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
    SIGKILL; a restart right after a kill waits a moment for the server to notice.
    """
    global _executor_lock
    conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(url, autocommit=True)
    deadline = time.monotonic() + wait_seconds
    query = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
    while conn.execute(query, (f"dbos-executor:{executor_id}",)).fetchone() != (True,):
        if time.monotonic() > deadline:
            conn.close()
            raise ExecutorIdInUse(
                f"executor id {executor_id!r} is in use by another live process on this "
                "database; stop it, or give this process its own EXECUTOR_ID"
            )
        time.sleep(0.2)
    _executor_lock = conn
