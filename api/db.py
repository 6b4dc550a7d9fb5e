"""How HTTP handlers use the database: never waiting on it for long.

While the database is down, a call answers 503 within DB_WAIT_SECONDS (api/errors.py) instead
of hanging; a client retries it, and the same Idempotency-Key makes the retry safe.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy.exc

from runtime import database
from runtime.settings import get_settings


@contextmanager
def connection() -> Iterator[database.Connection]:
    """A pooled connection, or DatabaseUnavailable / PoolTimeout after DB_WAIT_SECONDS."""
    with database.connection(timeout=get_settings().db_wait_seconds) as conn:
        yield conn


def within_wait(call: Callable[[], None]) -> None:
    """Run a DBOS call, answering DatabaseUnavailable if it has not returned within
    DB_WAIT_SECONDS. The call goes on in its own thread through an outage and takes effect
    once the database is back (a saga start or a wake-up is idempotent), so an order stored
    just before the database went away still gets its saga, whether or not the client
    comes back."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _through_outages(call)
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    # A daemon thread: one still waiting for the database must not hold the process's exit.
    threading.Thread(target=run, name="api-dbos-call", daemon=True).start()
    if not done.wait(get_settings().db_wait_seconds):
        raise database.DatabaseUnavailable(
            f"the database did not answer within DB_WAIT_SECONDS={get_settings().db_wait_seconds}"
        )
    if failure:
        raise failure[0]


@database.outlasting_outages
def _through_outages(call: Callable[[], None]) -> None:
    # DBOS waits out most outages itself, but not all of its calls do (a start can raise
    # SQLAlchemy's OperationalError); those are waited out here.
    try:
        call()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError) as error:
        raise database.DatabaseUnavailable(f"the database failed: {error}") from error
    except psycopg.OperationalError as error:
        if not database.is_connection_failure(error):
            raise
        raise database.DatabaseUnavailable(f"the database failed: {error}") from error
