"""Starting and stopping everything a process needs, in the one safe order."""

import logging

from dbos import DBOS, DBOSConfig, DBOSPortableJSONSerializer

from orders import intake
from runtime import database, embedded, seed
from runtime.migrate import migrate
from runtime.settings import Settings
from workflows import order_fulfillment

log = logging.getLogger(__name__)

APP_NAME = "order-saga"


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
    """Migrate, open the pool, seed, launch DBOS (recovering this executor's sagas), and
    start any stored order whose saga was never created."""
    url = database.resolve_url(settings)
    migrate(url)  # before launch: recovery runs steps that need our tables
    database.open_pool(url, settings.db_pool_size)
    if settings.seed_demo_catalog:
        with database.connection() as conn:
            if seed.seed_demo_catalog(conn):
                log.info("demo catalog stored")
    DBOS(config=dbos_config(url, settings))
    DBOS.launch()
    with database.connection() as conn:
        orphans = intake.unstarted(conn)
    for saga_id, order in orphans:
        order_fulfillment.start(saga_id, order)
    if orphans:
        log.info("started %d stored orders whose saga had never been created", len(orphans))


def stop() -> None:
    """Stop DBOS and close the pool. Unfinished sagas stay PENDING for the next start."""
    DBOS.destroy()  # first: a step still running can then no longer record anything
    database.close_pool()
    embedded.release()
