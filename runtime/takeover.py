"""Split mode: the unfinished sagas of a worker that is gone are resumed by the live ones.

A worker is gone when its lease has run out: its heartbeat is older than its lease_seconds
(runtime/executors.py), whether or not a session still holds its lock. Such a session is an
orphan (its process died with the connection half-open, or is cut off and, its lease having
lapsed, no longer acts: runtime/lease.py): it is ended, and the lock taken, so that no
process with that id can start and recover those sagas meanwhile. The lease row is marked
taken over, so that a process that was only cut off learns it when it comes back, and
exits instead of running sagas that are someone else's now.
"""

import logging
import time

import psycopg
from dbos import DBOS

from runtime import database, deadlines, executors

log = logging.getLogger(__name__)

END_TRIES = 3
TAKEOVER_SECONDS = 30.0  # a takeover whose connection stalls longer is cut and tried later


def take_over_dead_executors(own_id: str, application_version: str) -> None:
    """Resume, on the queue, the PENDING sagas of every executor whose lease ran out."""
    with database.connection() as conn:
        candidates = conn.execute(
            """SELECT DISTINCT w.executor_id FROM dbos.workflow_status w
                WHERE w.status = 'PENDING' AND w.application_version = %s
                  AND w.executor_id <> %s AND NOT """
            + executors.fresh_heartbeat_sql("w.executor_id"),
            (application_version, own_id),
        ).fetchall()
    for (executor_id,) in candidates:
        _take_over(database.url(), str(executor_id), own_id, application_version)


def _take_over(url: str, executor_id: str, own_id: str, version: str) -> None:
    with (
        psycopg.connect(
            url,
            autocommit=True,
            application_name=executors.TAKEOVER_APP_PREFIX + own_id,
            **database.LIVENESS,
        ) as probe,
        deadlines.cut_at(probe, time.monotonic() + TAKEOVER_SECONDS),
    ):
        if not _lock(probe, executor_id):
            return  # its process is alive after all (its heartbeat is fresh again)
        probe.execute(
            """UPDATE orders.executors SET instance = NULL, taken_over_at = now(),
                      taken_over_by = %s
                WHERE executor_id = %s""",
            (own_id, executor_id),
        )
        sagas = probe.execute(
            """SELECT workflow_uuid FROM dbos.workflow_status
                WHERE status = 'PENDING' AND executor_id = %s AND application_version = %s""",
            (executor_id, version),
        ).fetchall()
        for (saga_id,) in sagas:
            DBOS.resume_workflow(str(saga_id))
        log.warning(
            "executor %r is gone: %d of its sagas resumed elsewhere", executor_id, len(sagas)
        )


def _lock(probe: psycopg.Connection[tuple[object, ...]], executor_id: str) -> bool:
    """Take `executor_id`'s lock, ending an orphaned session that holds it."""
    key = executors.lock_key(executor_id)
    for _ in range(END_TRIES):
        taken = probe.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
        ).fetchone()
        if taken == (True,):
            return True
        found = executors.holder(probe, executor_id)
        if found is None:
            continue
        if not found.expired:
            return False
        log.warning(
            "ending session %d (%r), which holds executor id %r with a heartbeat %.0f s "
            "old, past its lease of %g s",
            found.pid,
            found.application_name,
            executor_id,
            found.heartbeat_age or 0.0,
            found.lease_seconds or 0.0,
        )
        executors.end_session(probe, found.pid)
        probe.execute("SELECT pg_sleep(0.1)")  # the ended session lets go of the lock
    return False
