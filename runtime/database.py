"""The one PostgreSQL database: its URL, the connection pool the app uses, and what the app
does while the database cannot be reached."""

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg
import sqlalchemy.exc
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from runtime import deadlines

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Connection = psycopg.Connection[tuple[object, ...]]

_pool: ConnectionPool[Connection] | None = None
_url: str | None = None
IDLE_CHECK_SECONDS = 1.0  # a pooled connection idle this long is checked before reuse
PROBE_TIMEOUT_SECONDS = 2
MAX_PAUSE_SECONDS = 5.0
RECONNECT_SECONDS = 5.0
# Every connection gives up on a dead server or a broken network path within seconds, instead
# of waiting for TCP's defaults (hours): connecting, and noticing a silent peer.
LIVENESS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}  # the longest wait between two probes while the database is down
APP_NAME = "order-saga app"  # application_name of the app's pooled sessions (pg_stat_activity)
# A session whose client vanished mid-transaction (a half-open connection) would hold its
# row locks until the server noticed; the server ends it after this long instead. Our
# transactions and DBOS's last milliseconds, so this is far from any legitimate pause.
IDLE_IN_TRANSACTION_SECONDS = 10.0


class RuntimeStopped(BaseException):
    """The pool is closed: the process is stopping. A BaseException, so that neither a step
    (which DBOS would record as failed) nor the saga (which would compensate) catches it."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached: down, restarting, or a connection it cut."""


def url() -> str:
    """The URL of the database the pool is open on."""
    if _url is None:
        raise RuntimeStopped("the database pool is not open")
    return _url


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL using the psycopg 3 driver."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {scheme!r}")
    return f"postgresql+psycopg://{rest}"


def open_pool(url: str, size: int, statement_timeout_seconds: float) -> None:
    """Open the process-wide pool. Connections are autocommit; code opens transactions.
    No statement may run longer than `statement_timeout_seconds` (a hung query is an error)."""
    global _pool, _url
    if _pool is not None:
        raise RuntimeError("the database pool is already open")
    _url = url
    _pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "application_name": APP_NAME, **LIVENESS},
        timeout=30,
        # A failed reconnection is retried with doubling waits; cap them, so that the pool
        # is whole again within seconds of a database outage ending, not minutes.
        reconnect_timeout=RECONNECT_SECONDS,
        name="app",
        configure=lambda conn: _configure(conn, statement_timeout_seconds),
        check=_check_if_idle,
        open=False,
    )
    _pool.open(wait=True, timeout=30)


def _configure(conn: Connection, timeout_seconds: float) -> None:
    conn.execute("SET TIME ZONE 'UTC'")  # every time the API shows is UTC
    conn.execute(f"SET statement_timeout = {int(timeout_seconds * 1000)}")
    conn.execute(
        f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_SECONDS * 1000)}"
    )


# A connection that sat idle may have been cut (a database restart) without the pool
# knowing; one in steady use has just proved itself. Checking only the idle ones keeps the
# round trip off the busy path.
_returned_at: dict[int, float] = {}


def _check_if_idle(conn: Connection) -> None:
    if time.monotonic() - _returned_at.get(id(conn), 0.0) > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)


def close_pool() -> None:
    """Close the pool (idempotent)."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None
        _returned_at.clear()


@contextmanager
def connection(
    timeout: float | None = None, *, deadline: float | None = None
) -> Iterator[Connection]:
    """A pooled autocommit connection; use `with conn.transaction():` for atomic work.

    `timeout`: how long to wait for a free connection (default: the pool's 30 s).
    `deadline` (a time.monotonic() value): the wait and all the work on the connection must
    end by then; if they have not, the connection is cut from this side (runtime.deadlines),
    so that a stalled or half-open network path cannot hold the caller any longer.

    Raises DatabaseUnavailable when the database cannot be reached, cut the connection, or
    did not answer by the deadline, and PoolTimeout when it can be reached but no connection
    was free in time.
    """
    pool = _pool
    if pool is None:
        raise RuntimeStopped("the database pool is closed")
    if deadline is not None:
        left = max(deadline - time.monotonic(), 0.001)
        timeout = left if timeout is None else min(timeout, left)
    try:
        with pool.connection(timeout=timeout) as conn, deadlines.cut_at(conn, deadline):
            yield conn
            _returned_at[id(conn)] = time.monotonic()  # it just worked
    except PoolClosed as error:
        raise RuntimeStopped("the database pool is closed") from error
    except deadlines.DeadlinePassed as error:
        raise DatabaseUnavailable("the database did not answer in time") from error
    except PoolTimeout as error:
        if deadline is not None:  # no time is left to probe: the wait was all of it
            raise DatabaseUnavailable(f"no database connection in time: {error}") from error
        if not reachable():
            raise DatabaseUnavailable(f"the database cannot be reached: {error}") from error
        raise
    except psycopg.OperationalError as error:
        if is_connection_failure(error):
            raise DatabaseUnavailable(f"the database connection failed: {error}") from error
        raise


def is_connection_failure(error: BaseException) -> bool:
    """The connection itself failed (refused, cut, server shutting down): not a statement
    timeout, a lock timeout or a deadlock, which the database itself reported."""
    if not isinstance(error, psycopg.OperationalError) or isinstance(error, PoolTimeout):
        return False
    state = error.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


# A start rides out a database outage (a restart, a bad network) this long before it gives up.
START_WAIT_SECONDS = 30.0


def through_start_outages(
    attempt: Callable[[], T],
    what: str,
    *,
    between: Callable[[], None] | None = None,
    seconds: float = START_WAIT_SECONDS,
) -> T:
    """attempt() until it returns, again after each connection failure (psycopg's or
    SQLAlchemy's) for up to `seconds`, waiting 0.2 s, 0.4 s, ... 2 s in between and calling
    `between` first. Any other error, or a failure once the time is up, is raised. For
    work that may be done again from the top: a start's migrations, DBOS's launch."""
    deadline = time.monotonic() + seconds
    pause = 0.2
    while True:
        try:
            return attempt()
        except (sqlalchemy.exc.OperationalError, psycopg.OperationalError) as error:
            failure = getattr(error, "orig", None) or error
            if not is_connection_failure(failure) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s failed (%s); trying again", what, str(failure).strip())
        if between is not None:
            between()
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def reachable() -> bool:
    """Whether a new connection to the database can be made and answers, right now."""
    if _url is None:
        return False
    try:
        with psycopg.connect(
            _url, **{**LIVENESS, "connect_timeout": PROBE_TIMEOUT_SECONDS}
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def outlasting_outages(work: Callable[P, T]) -> Callable[P, T]:
    """Make `work` wait out database outages: while the database cannot be reached it is
    paused, then run again, as DBOS pauses its own operations. For idempotent work only.

    A step wrapped in this does not use up its tries while the database is down, so an
    outage never turns into a compensation. A connection cut by a restart of a database
    that is back already is retried at once, a few times (stale pooled connections).
    """

    @functools.wraps(work)
    def paused_while_down(*args: P.args, **kwargs: P.kwargs) -> T:
        stale_retries = 0
        while True:
            try:
                return work(*args, **kwargs)
            except DatabaseUnavailable:
                if reachable():
                    stale_retries += 1
                    if stale_retries > 3:
                        raise
                    continue
                _wait_until_reachable()
                pool = _pool
                if pool is not None:
                    pool.check()  # drop the connections the outage broke, all at once

    return paused_while_down


def _wait_until_reachable() -> None:
    started = time.monotonic()
    log.warning("database unreachable: pausing until it is back")
    pause = 0.25
    while not reachable():
        if _pool is None:
            raise RuntimeStopped("the database pool is closed")
        time.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_SECONDS)
    log.warning("database reachable again after %.1f s: resuming", time.monotonic() - started)
