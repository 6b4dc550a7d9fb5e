"""The lease a process that runs sagas holds on its executor id.

DBOS recovers the PENDING workflows of its executor id, so two live processes with one id
would run each other's sagas. A process therefore holds a PostgreSQL advisory lock on its id
and, on that lock's own session, beats a heartbeat into orders.executors every few seconds.
Together they are its lease: it is alive only while both hold (runtime/executors.py).

A bad network must not turn that into an outage, nor into two processes acting at once:
- Every lock session of this process carries its instance nonce in application_name. A
  retake that finds the lock held by one of them (its answer was lost; the server kept the
  session) ends it and takes the lock again.
- Anyone may end a session holding the lock of an executor whose heartbeat is older than
  its lease (an orphan): a new start does, takeover does. The server itself ends a silent
  lock session after the lease, too (idle_session_timeout).
- So this process makes no downstream call unless its last confirmed heartbeat is younger
  than the lease minus a margin (`wait_until_held`): by the time anyone may call it dead,
  it has stopped acting.
- If the lease row names another process when it comes back (a start or a takeover took
  the id meanwhile), it exits with status 70: its sagas are someone else's now, and a
  restart recovers what is still its own.
"""

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from typing import Any

import psycopg

from runtime import database, deadlines, executors

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]

EXIT_DISPLACED = 70
MAX_BEAT_SECONDS = 2.0
RETAKE_TRIES = 5
_current: "ExecutorLease | None" = None

_TAKE = """
WITH lock AS (SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0)) AS held),
beat AS (
    INSERT INTO orders.executors AS e (executor_id, role, host, pid, started_at,
                                       heartbeat_at, instance, lease_seconds)
    SELECT %(id)s, %(role)s, %(host)s, %(pid)s, now(), now(), %(instance)s, %(lease)s
      FROM lock WHERE held
    ON CONFLICT (executor_id) DO UPDATE
       SET heartbeat_at = now(), role = EXCLUDED.role, host = EXCLUDED.host,
           pid = EXCLUDED.pid, instance = EXCLUDED.instance,
           lease_seconds = EXCLUDED.lease_seconds, taken_over_at = NULL, taken_over_by = NULL,
           started_at = CASE WHEN e.instance = EXCLUDED.instance THEN e.started_at
                             ELSE now() END
     WHERE %(starting)s OR e.instance = EXCLUDED.instance
    RETURNING 1)
SELECT (SELECT held FROM lock), EXISTS (SELECT 1 FROM beat)"""
_BEAT = """UPDATE orders.executors SET heartbeat_at = now()
            WHERE executor_id = %s AND instance = %s"""


class ExecutorIdInUse(RuntimeError):
    """Another live process runs with this executor id on this database."""


class Displaced(Exception):
    """Another process took this executor id while this one was cut off from the database."""


class ExecutorLease:
    """The lock on `executor_id` and the heartbeat thread that keeps it (see the module)."""

    def __init__(self, url: str, executor_id: str, role: str, lease_seconds: float) -> None:
        self.url = url
        self.executor_id = executor_id
        self.role = role
        self.lease_seconds = lease_seconds
        self.instance = secrets.token_hex(6)
        self.application_name = executors.LEASE_APP_PREFIX + self.instance
        self.beat_every = min(MAX_BEAT_SECONDS, lease_seconds / 5)
        self._statement_seconds = min(5.0, lease_seconds / 3)
        self._conn: Connection | None = None
        self._confirmed_at: float | None = None  # when the last confirmed beat was sent
        self._held_since = time.monotonic()
        self._renewed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lapsed_logged = False

    # --- taking and giving back ------------------------------------------------------

    def acquire(self, wait_seconds: float) -> None:
        """Take the lease at start, and keep it from now on. Waits up to `wait_seconds` for
        a live holder to go; a holder whose lease ran out (an orphaned session) is ended.
        Raises ExecutorIdInUse if another live process holds the id."""
        global _current
        deadline = time.monotonic() + wait_seconds
        first_beat: datetime | None = None
        conn: Connection | None = None
        try:
            while True:
                try:
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    sent = time.monotonic()
                    held, wrote = self._take(conn, starting=True)
                    if held and wrote:
                        break
                    found = executors.holder(conn, self.executor_id)
                    if found is not None and self._may_end(found, starting=True):
                        executors.end_session(conn, found.pid)
                    elif found is not None:
                        first_beat = first_beat or found.heartbeat_at
                        self._refuse_if_alive(found, first_beat, deadline)
                except (psycopg.OperationalError, deadlines.DeadlinePassed):
                    # The lock's answer may have been lost: try again, and end that session
                    # if it is ours. Past the wait, the error stands.
                    if conn is not None:
                        conn.close()
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        self._confirm(sent)
        _current = self
        self._thread = threading.Thread(target=self._keep, name="executor-lease", daemon=True)
        self._thread.start()

    def _refuse_if_alive(
        self, found: executors.Holder, first_beat: datetime | None, deadline: float
    ) -> None:
        """Past the wait, refuse to start if the holder is a live process: its heartbeat
        moved meanwhile. An orphan's stands still until its lease runs out, and then it is
        ended; one that cannot be ended is refused too, a while after that."""
        beating = found.heartbeat_at is None or found.heartbeat_at != first_beat
        give_up = deadline + (found.lease_seconds or self.lease_seconds) + 10
        now = time.monotonic()
        if (now > deadline and beating) or now > give_up:
            raise ExecutorIdInUse(
                f"executor id {self.executor_id!r} is in use by another live process on "
                "this database; stop it, or give this process its own EXECUTOR_ID"
            )

    def release(self) -> None:
        """Stop beating and give the lock back (closing its session)."""
        global _current
        self._stopping.set()
        with self._renewed:
            self._renewed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if _current is self:
            _current = None

    # --- what the rest of the process asks ------------------------------------------

    def valid(self) -> bool:
        """Whether this process may act: its last confirmed heartbeat is young enough that
        nobody will consider it dead for two more heartbeats at least."""
        confirmed = self._confirmed_at
        margin = 2 * self.beat_every
        return confirmed is not None and time.monotonic() - confirmed < self.lease_seconds - margin

    def held_for(self) -> float:
        """Seconds the lock has been held without a gap (takeover waits for enough)."""
        return time.monotonic() - self._held_since if self.valid() else 0.0

    def wait_until_valid(self) -> None:
        """Return once the lease is valid; meanwhile the caller is paused, as in an outage."""
        if self.valid():
            return
        with self._renewed:
            while not self.valid():
                if self._stopping.is_set():
                    raise database.RuntimeStopped("the process is stopping")
                if not self._lapsed_logged:
                    self._lapsed_logged = True
                    log.warning(
                        "the lease on executor id %r has lapsed: downstream calls wait until "
                        "it is renewed",
                        self.executor_id,
                    )
                self._renewed.wait(0.5)

    # --- the heartbeat thread ---------------------------------------------------------

    def _keep(self) -> None:
        while not self._stopping.wait(self.beat_every):
            try:
                if self._conn is None:
                    self._retake()
                else:
                    self._beat(self._conn)
            except Displaced as displaced:
                if self._stopping.is_set():
                    return
                log.critical("%s: exiting; a restart recovers what is still its own", displaced)
                logging.shutdown()
                os._exit(EXIT_DISPLACED)
            except (psycopg.Error, deadlines.DeadlinePassed, OSError) as error:
                self._drop(error)
            except Exception as error:  # never let the lease die with its thread
                log.exception("keeping the lease on executor id %r failed", self.executor_id)
                self._drop(error)

    def _beat(self, conn: Connection) -> None:
        sent = time.monotonic()
        with deadlines.cut_at(conn, sent + self._statement_seconds):
            cursor = conn.execute(_BEAT, (self.executor_id, self.instance))
        if cursor.rowcount != 1:
            raise Displaced(f"executor id {self.executor_id!r} was taken over by another process")
        self._confirm(sent)

    def _drop(self, error: BaseException) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            log.warning(
                "lost the lock session on executor id %r (%s): taking it again",
                self.executor_id,
                str(error).strip() or type(error).__name__,
            )
            conn.close()

    def _retake(self) -> None:
        """Take the lock again after its session was lost (a restart of the database, a cut
        or stalled connection). Raises Displaced if another process has the id now."""
        conn = self._connect()
        try:
            for _ in range(RETAKE_TRIES):
                sent = time.monotonic()
                held, wrote = self._take(conn, starting=False)
                if held and not wrote:
                    raise Displaced(
                        f"executor id {self.executor_id!r} was taken over by another process "
                        "while this one was cut off"
                    )
                if held:
                    self._conn, self._held_since = conn, time.monotonic()
                    self._confirm(sent)
                    log.warning("holding executor id %r again", self.executor_id)
                    return
                found = executors.holder(conn, self.executor_id)
                if found is None:
                    continue  # let go in between
                if self._may_end(found, starting=False):
                    executors.end_session(conn, found.pid)
                    continue
                if found.instance != self.instance and not found.application_name.startswith(
                    executors.TAKEOVER_APP_PREFIX
                ):
                    raise Displaced(
                        f"executor id {self.executor_id!r} is held by another process now "
                        f"(session {found.pid}, {found.application_name!r})"
                    )
                return  # a takeover is moving our sagas: look again next round
        finally:
            if self._conn is not conn:
                conn.close()

    def _may_end(self, found: executors.Holder, *, starting: bool) -> bool:
        """Whether the session holding the lock is an orphan this process may end: one of
        its own (a lock whose answer was lost), or, at a start, any whose lease ran out."""
        if found.application_name == self.application_name:
            log.warning(
                "ending this process's orphaned session %d, which holds executor id %r",
                found.pid,
                self.executor_id,
            )
            return True
        if (
            starting
            and found.expired
            and not found.application_name.startswith(executors.TAKEOVER_APP_PREFIX)
        ):
            log.warning(
                "ending session %d (%r), which holds executor id %r with a heartbeat %.0f s "
                "old, past its lease of %g s: its process is gone",
                found.pid,
                found.application_name,
                self.executor_id,
                found.heartbeat_age or 0.0,
                found.lease_seconds or 0.0,
            )
            return True
        return False

    def _take(self, conn: Connection, *, starting: bool) -> tuple[bool, bool]:
        """Try the lock and, if it is ours, beat: (lock held, lease row ours)."""
        params = {
            "key": executors.lock_key(self.executor_id),
            "id": self.executor_id,
            "role": self.role,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "instance": self.instance,
            "lease": self.lease_seconds,
            "starting": starting,
        }
        with deadlines.cut_at(conn, time.monotonic() + self._statement_seconds):
            row = conn.execute(_TAKE, params).fetchone()
        assert row is not None
        return bool(row[0]), bool(row[1])

    def _confirm(self, sent: float) -> None:
        with self._renewed:
            self._confirmed_at = sent
            self._lapsed_logged = False
            self._renewed.notify_all()

    def _connect(self) -> Connection:
        conn: Connection = psycopg.connect(
            self.url,
            autocommit=True,
            application_name=self.application_name,
            **database.LIVENESS,
        )
        try:
            with deadlines.cut_at(conn, time.monotonic() + self._statement_seconds):
                conn.execute(f"SET statement_timeout = {int(self._statement_seconds * 1000)}")
                # The server ends this session by itself once it has been silent for the
                # lease: an orphan (its client gone) releases the lock without anyone's help.
                conn.execute(f"SET idle_session_timeout = {int(self.lease_seconds * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn


def hold(url: str, executor_id: str, role: str, lease_seconds: float, wait: float) -> ExecutorLease:
    """Take this process's lease on `executor_id` (see ExecutorLease.acquire)."""
    lease = ExecutorLease(url, executor_id, role, lease_seconds)
    lease.acquire(wait)
    return lease


def current() -> ExecutorLease | None:
    """This process's lease, if it holds one (a process that runs sagas)."""
    return _current


def wait_until_held() -> None:
    """Pause while this process's lease has lapsed (no-op in a process without one)."""
    lease = _current
    if lease is not None:
        lease.wait_until_valid()
