"""How HTTP handlers use the database: never waiting on it for long.

Each HTTP call has DB_WAIT_SECONDS for all its database work, from the moment it arrives:
waiting for a pooled connection, its statements, and the DBOS calls it makes. While the
database is down, or the path to it stalls or goes half-open, the call answers 503 by then
(api/errors.py) instead of hanging; a client retries it, and the same Idempotency-Key makes
the retry safe.
"""

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import psycopg
import sqlalchemy.exc
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime import database
from runtime.settings import get_settings

T = TypeVar("T")

# When the current HTTP call's database work must be over (a time.monotonic() value).
_deadline: ContextVar[float | None] = ContextVar("database_deadline", default=None)


@contextmanager
def budget(seconds: float | None = None) -> Iterator[None]:
    """Within the block, database work must be over `seconds` (default DB_WAIT_SECONDS)
    from now. Threads the block starts through FastAPI's thread pool inherit it."""
    wait = get_settings().db_wait_seconds if seconds is None else seconds
    token = _deadline.set(time.monotonic() + wait)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline() -> float:
    """The current call's deadline (outside a call: DB_WAIT_SECONDS from now)."""
    at = _deadline.get()
    return time.monotonic() + get_settings().db_wait_seconds if at is None else at


class DatabaseBudget:
    """ASGI middleware: every HTTP call gets its budget of DB_WAIT_SECONDS on arrival."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with budget():
            await self.app(scope, receive, send)


@contextmanager
def connection() -> Iterator[database.Connection]:
    """A pooled connection for the current call's remaining budget: DatabaseUnavailable or
    PoolTimeout if none came free in time, DatabaseUnavailable if the work on it did not
    end in time (the connection is then cut)."""
    with database.connection(deadline=deadline()) as conn:
        yield conn


def within_wait(call: Callable[[], T]) -> T:
    """Run a DBOS call and return what it returns, answering DatabaseUnavailable if it has
    not returned within the current call's budget. The call goes on in its own thread
    through an outage and takes effect once the database is back (a saga start or a wake-up
    is idempotent), so an order stored just before the database went away still gets its
    saga, whether or not the client comes back."""
    done = threading.Event()
    failure: list[BaseException] = []
    result: list[T] = []

    def run() -> None:
        try:
            result.append(_through_outages(call))
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    # A daemon thread: one still waiting for the database must not hold the process's exit.
    # It runs in a copy of the caller's context: the request's trace (runtime/tracing.py).
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="api-dbos-call", daemon=True).start()
    if not done.wait(max(deadline() - time.monotonic(), 0.0)):
        raise database.DatabaseUnavailable(
            f"the database did not answer within DB_WAIT_SECONDS={get_settings().db_wait_seconds}"
        )
    if failure:
        raise failure[0]
    return result[0]


@database.outlasting_outages
def _through_outages(call: Callable[[], T]) -> T:
    # DBOS waits out most outages itself, but not all of its calls do (a start can raise
    # SQLAlchemy's OperationalError); those are waited out here.
    try:
        return call()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError) as error:
        raise database.DatabaseUnavailable(f"the database failed: {error}") from error
    except psycopg.OperationalError as error:
        if not database.is_connection_failure(error):
            raise
        raise database.DatabaseUnavailable(f"the database failed: {error}") from error
