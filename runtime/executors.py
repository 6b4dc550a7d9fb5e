"""Executors as PostgreSQL sees them: the advisory lock a process holds on its executor id,
the heartbeat row that is its lease (orders.executors), and the session holding the lock.

Held by runtime/lease.py for the life of a process that runs sagas; read by the audit
(orders/audit.py), by takeover (runtime/takeover.py) and by a starting process, which all
tell a live executor from a dead one the same way (`alive_sql`): its lock is held AND its
heartbeat is younger than its lease. A session that holds the lock of an executor whose
heartbeat is older than that is an orphan (its process is gone, or cut off and no longer
acting), and may be ended.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

log = logging.getLogger(__name__)

LOCK_PREFIX = "dbos-executor:"
# application_name of the sessions that take executor-id locks, followed by who they are.
LEASE_APP_PREFIX = "order-saga lease "  # + the holding process's instance nonce
TAKEOVER_APP_PREFIX = "order-saga takeover "  # + the executor id of the worker taking over


def lock_key(executor_id: str) -> str:
    """The text whose hashtextextended(…, 0) is the lock on `executor_id`."""
    return f"{LOCK_PREFIX}{executor_id}"


def lock_held_sql(key_sql: str, lock: str = "l") -> str:
    """An SQL condition: row `lock` of pg_locks is the granted lock on the key that SQL
    expression `key_sql` gives (for example `%s`, or `'dbos-executor:' || executor_id`), in
    this database. A bigint advisory lock shows as classid (high 32 bits) and objid (low)."""
    return f"""({lock}.locktype = 'advisory' AND {lock}.granted AND {lock}.objsubid = 1
           AND {lock}.database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())
           AND (({lock}.classid::bigint << 32) | {lock}.objid::bigint)
               = hashtextextended({key_sql}, 0))"""


def fresh_heartbeat_sql(executor_id_sql: str) -> str:
    """An SQL condition: the executor that SQL expression `executor_id_sql` names has beaten
    within its lease."""
    return f"""EXISTS (SELECT 1 FROM orders.executors e
                    WHERE e.executor_id = {executor_id_sql}
                      AND e.heartbeat_at > now() - make_interval(secs => e.lease_seconds))"""


def alive_sql(executor_id_sql: str) -> str:
    """An SQL condition: a live process runs as that executor (lock held, heartbeat fresh)."""
    key = f"'{LOCK_PREFIX}' || {executor_id_sql}"
    return f"""(EXISTS (SELECT 1 FROM pg_locks l WHERE {lock_held_sql(key)})
            AND {fresh_heartbeat_sql(executor_id_sql)})"""


@dataclass(frozen=True)
class Holder:
    """The session holding an executor id's lock, and that executor's lease row."""

    pid: int
    application_name: str
    instance: str | None  # the process the lease row names (None: taken over, or no row)
    heartbeat_at: datetime | None  # None: no lease row
    heartbeat_age: float | None  # seconds
    lease_seconds: float | None

    @property
    def expired(self) -> bool:
        """The lease row's heartbeat is older than its lease: the holder is an orphan."""
        return (
            self.heartbeat_age is not None
            and self.lease_seconds is not None
            and self.heartbeat_age > self.lease_seconds
        )


def holder(conn: psycopg.Connection[Any], executor_id: str) -> Holder | None:
    """Who holds `executor_id`'s lock now (None: nobody)."""
    row = conn.execute(
        """SELECT l.pid, coalesce(a.application_name, ''), e.instance, e.heartbeat_at,
                  extract(epoch FROM now() - e.heartbeat_at)::float8, e.lease_seconds
             FROM pg_locks l
             LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             LEFT JOIN orders.executors e ON e.executor_id = %s
            WHERE """
        + lock_held_sql("%s")
        + " LIMIT 1",
        (executor_id, lock_key(executor_id)),
    ).fetchone()
    if row is None:
        return None
    pid, application_name, instance, heartbeat_at, age, lease = row
    return Holder(int(pid), str(application_name), instance, heartbeat_at, age, lease)


def end_session(conn: psycopg.Connection[Any], pid: int) -> bool:
    """Ask the server to end session `pid` (releasing its locks); whether it could."""
    try:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        log.warning("not allowed to end session %d (it belongs to another role)", pid)
        return False
    return row == (True,)
