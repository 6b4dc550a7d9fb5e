"""The one PostgreSQL database: its URL and the connection pool the app uses."""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

from runtime import embedded
from runtime.settings import Settings

_pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]] | None = None


def resolve_url(settings: Settings) -> str:
    """DATABASE_URL if set, else the embedded server's URL (starting it if needed)."""
    if settings.database_url:
        return settings.database_url
    return embedded.start(settings.data_dir)


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL using the psycopg 3 driver."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {scheme!r}")
    return f"postgresql+psycopg://{rest}"


def open_pool(url: str, size: int, statement_timeout_seconds: float) -> None:
    """Open the process-wide pool. Connections are autocommit; code opens transactions.
    No statement may run longer than `statement_timeout_seconds` (a hung query is an error)."""
    global _pool
    if _pool is not None:
        raise RuntimeError("the database pool is already open")
    _pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        timeout=30,
        name="app",
        configure=lambda conn: _configure(conn, statement_timeout_seconds),
        open=False,
    )
    _pool.open(wait=True, timeout=30)


def _configure(conn: psycopg.Connection[tuple[object, ...]], timeout_seconds: float) -> None:
    conn.execute("SET TIME ZONE 'UTC'")  # every time the API shows is UTC
    conn.execute(f"SET statement_timeout = {int(timeout_seconds * 1000)}")


def close_pool() -> None:
    """Close the pool (idempotent)."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


class RuntimeStopped(BaseException):
    """The pool is closed: the process is stopping. A BaseException, so that neither a step
    (which DBOS would record as failed) nor the saga (which would compensate) catches it."""


@contextmanager
def connection(timeout: float | None = None) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A pooled autocommit connection; use `with conn.transaction():` for atomic work.
    `timeout`: how long to wait for a free connection (default: the pool's 30 s)."""
    pool = _pool
    if pool is None:
        raise RuntimeStopped("the database pool is closed")
    try:
        with pool.connection(timeout=timeout) as conn:
            yield conn
    except PoolClosed as error:
        raise RuntimeStopped("the database pool is closed") from error
