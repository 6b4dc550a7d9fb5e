"""Starting and stopping everything a process needs, in the one safe order."""

import logging
import threading

from dbos import DBOS, DBOSClient, DBOSConfig, DBOSPortableJSONSerializer

from orders import control, events, intake
from runtime import database, embedded, lease, seed, takeover, tracing
from runtime.lease import ExecutorIdInUse, ExecutorLease
from runtime.migrate import migrate
from runtime.settings import Settings
from workflows import choreography, order_fulfillment

__all__ = ["ExecutorIdInUse", "dbos_config", "start", "stop", "sweep"]

log = logging.getLogger(__name__)

APP_NAME = "order-saga"

ALL_ROLE_QUEUE_POLL_SECONDS = 1.0
SWEEP_INTERVAL_SECONDS = 10.0
TAKEOVER_CHECK_SECONDS = 5.0
_lease: ExecutorLease | None = None
_housekeeper: "Housekeeper | None" = None
_client: DBOSClient | None = None  # an API-only process's way to the queue


def dbos_config(url: str, settings: Settings) -> DBOSConfig:
    return {
        "name": APP_NAME,
        "system_database_url": url,
        # Pinned: a process recovers only sagas of its own version (docs/SAGA.md, "Changing
        # the saga").
        "application_version": settings.application_version,
        "executor_id": settings.executor_id,
        "serializer": DBOSPortableJSONSerializer(),  # readable in psql, no pickle
        "run_migrations": False,  # runtime.migrate ran them, under a lock
        "log_level": settings.log_level,
        # DBOS's own connections give up on a dead server or a broken path within seconds,
        # as the app's do, and a session cut off mid-transaction is ended by the server
        # soon, releasing its row locks for the saga's recovery.
        "db_engine_kwargs": {
            "connect_args": {"application_name": "dbos_transact", **database.LIVENESS},
            "pool_timeout": 30,
            "max_overflow": 0,
            "pool_size": 20,
            # No SELECT 1 before every statement: DBOS retries a statement whose
            # connection turns out to be broken (its db_retry), so the ping buys nothing.
            "pool_pre_ping": False,
        },
        "sys_db_idle_transaction_timeout_sec": database.IDLE_IN_TRANSACTION_SECONDS,
        # DBOS's spans of the saga and its steps, with the exporter of runtime/tracing.py;
        # off (no spans at all) unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
        "enable_otlp": tracing.active(),
    }


def start(settings: Settings) -> None:
    """Migrate, take the lease on the executor id, open the pool, seed; then, by role:

    - all, worker: launch DBOS (recovering this executor's sagas) and run SAGA_QUEUE; start
      any stored order whose saga was never created, re-send wake-ups a crash may have kept
      from a waiting saga, and keep doing so, and take over the sagas of dead workers;
    - api: run no saga; sagas are put on SAGA_QUEUE through a DBOS client.
    """
    global _client, _lease, _housekeeper
    tracing.configure()  # before DBOS, which makes its spans with it
    url = embedded.resolve_url(settings)
    runs_sagas = settings.process_role != "api"
    migrate(url, settings)  # first: the lease lives in orders.executors; recovery needs our tables
    if runs_sagas:
        # DBOS recovers the PENDING sagas of its executor id at launch: two live processes
        # with one id would run each other's sagas (runtime/lease.py).
        _lease = lease.hold(
            url,
            settings.executor_id,
            settings.process_role,
            settings.takeover_after_seconds,
            settings.executor_lock_wait_seconds,
        )
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
    _launch(url, settings)
    # In `make run` the queue only carries sagas that an API process put there (this process
    # starts its own directly): looking once a second is enough, and a poll costs CPU.
    poll = settings.queue_poll_seconds
    if settings.process_role == "all":
        poll = max(poll, ALL_ROLE_QUEUE_POLL_SECONDS)
    DBOS.register_queue(
        order_fulfillment.SAGA_QUEUE,
        worker_concurrency=settings.worker_concurrency,
        polling_interval_sec=poll,
    )
    # Where API-only processes put the first handler of a choreographed order (every other
    # handler is started by the one before it, with no queue): polled like SAGA_QUEUE.
    DBOS.register_queue(
        events.EVENT_QUEUE,
        worker_concurrency=settings.worker_concurrency,
        polling_interval_sec=poll,
    )
    sweep()
    assert _lease is not None
    _housekeeper = Housekeeper(settings, _lease)


def _launch(url: str, settings: Settings) -> None:
    """Launch DBOS, again if a connection fails while it does (the database restarting, a
    lost answer on a bad network), for up to START_WAIT_SECONDS: DBOS retries its own
    statements once launched, but not during the launch, which fails before it begins
    recovering sagas (and recovery is idempotent anyway)."""

    def launch() -> None:
        DBOS(config=dbos_config(url, settings))
        DBOS.launch()

    logging.getLogger("dbos").addFilter(_without_conductor_hint)
    database.through_start_outages(launch, "launching DBOS", between=DBOS.destroy)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{settings.port}"
    log.info(
        "to see the sagas: %s/ (the operator's console), %s/orders (the API, %s/docs), "
        "%s/metrics (Prometheus)",
        *[base] * 4,
    )


def _without_conductor_hint(record: logging.LogRecord) -> bool:
    """False for the line DBOS logs at launch sending users to DBOS Conductor, its commercial
    console (dbos/_dbos.py, after "DBOS launched!"); ours, on our own tools, follows it."""
    return not record.getMessage().startswith("To view and manage workflows, connect to DBOS")


def stop() -> None:
    """Stop DBOS and close the pool. Unfinished sagas stay PENDING for the next start."""
    global _lease, _housekeeper, _client
    held, _lease = _lease, None
    housekeeper, _housekeeper = _housekeeper, None
    client, _client = _client, None
    if housekeeper is not None:
        housekeeper.stop()  # no sweep may start while DBOS is being destroyed
    if client is not None:
        order_fulfillment.enqueue_only(None)
        client.destroy()
    else:
        DBOS.destroy()  # first: a step still running can then no longer record anything
    database.close_pool()
    if held is not None:
        held.release()
    embedded.release()
    tracing.flush()


class Housekeeper:
    """A thread that, every SWEEP_INTERVAL_SECONDS, starts stored orders whose saga was
    never created and re-sends wake-ups a waiting saga may have missed (a request answered
    503 in an outage, whose client never came back, must not wait for the next restart),
    and every TAKEOVER_CHECK_SECONDS resumes the sagas of executors whose lease ran out."""

    def __init__(self, settings: Settings, held: ExecutorLease) -> None:
        self._settings = settings
        self._lease = held
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        since_sweep = 0.0
        while not self._stopping.wait(TAKEOVER_CHECK_SECONDS):
            since_sweep += TAKEOVER_CHECK_SECONDS
            try:
                if since_sweep >= SWEEP_INTERVAL_SECONDS:
                    since_sweep = 0.0
                    sweep(min_age_seconds=SWEEP_INTERVAL_SECONDS)
                # After a database restart, live workers need a moment to take their locks
                # again: only a process that has held its own that long takes over others.
                if self._lease.held_for() >= self._settings.takeover_after_seconds:
                    takeover.take_over_dead_executors(
                        self._settings.executor_id, self._settings.application_version
                    )
            except Exception:  # the database may be down again: next round
                log.warning("housekeeping failed; trying again later", exc_info=True)


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
    handlers = choreography.start_unstarted(min_age_seconds)
    if handlers:
        log.info("started %d event handlers that had never been started", handlers)
    for wake in wakes:
        order_fulfillment.wake(wake.workflow_id, wake.topic, wake.idempotency_key)
