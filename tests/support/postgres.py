"""The PostgreSQL server the suite runs on, and the databases it creates there.

DATABASE_URL's server if set (its role needs CREATEDB), else an embedded one in a temporary
directory that is deleted at the end of the run.
"""

import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

_admin_url: str | None = None
_embedded: Any = None
_tmpdir: Path | None = None


def start(database_url: str | None) -> None:
    global _admin_url, _embedded, _tmpdir
    if database_url:
        _admin_url = database_url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server

    _tmpdir = Path(tempfile.mkdtemp(prefix="saga-test-"))
    _embedded = get_server(_tmpdir / "pg", cleanup_mode="delete")
    _admin_url = _embedded.get_uri()
    # No fsync on the suite's own throwaway server: three of them (one per worker) fsyncing
    # on 2 cores' one disk stalled commits past the suite's 1 s statement and step timeouts.
    # Nothing the tests prove depends on it: their crashes SIGKILL processes (the service's,
    # or PostgreSQL's), and the kernel keeps every write a commit made; an OS crash is out
    # of scope (docs/RELIABILITY.md). Commits still wait for their WAL write
    # (synchronous_commit stays on). `make chaos` and the service itself keep fsync.
    with psycopg.connect(_admin_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")


def stop() -> None:
    if _embedded is not None:
        _embedded.cleanup()
    if _tmpdir is not None:
        shutil.rmtree(_tmpdir, ignore_errors=True)


def create_database(prefix: str = "saga_test") -> str:
    """A new empty database; its URL."""
    assert _admin_url is not None, "postgres.start() was not called"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(_admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    assert _admin_url is not None
    name = make_url(url).database
    with psycopg.connect(_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
