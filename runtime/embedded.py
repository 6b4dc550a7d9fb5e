"""The embedded PostgreSQL (pgserver) used when DATABASE_URL is unset."""

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import psutil

from runtime.settings import Settings

log = logging.getLogger(__name__)

_server: Any = None  # this process's handle on the server, if it started or attached to one


def resolve_url(settings: Settings) -> str:
    """DATABASE_URL if set, else the embedded server's URL (starting it if needed)."""
    if settings.database_url:
        return settings.database_url
    return start(settings.data_dir)


def start(data_dir: Path) -> str:
    """Start (or attach to) the PostgreSQL server whose data lives in `data_dir`; its URL.

    The server is stopped when the last live process using it exits cleanly; a process
    killed with SIGKILL leaves it running and the next start attaches to it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server

    pgdata = data_dir.resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata)
    global _server
    _server = get_server(pgdata, cleanup_mode="stop")
    url: str = _server.get_uri()
    log.info("embedded PostgreSQL at %s (data in %s)", url, pgdata)
    return url


def release() -> None:
    """Let go of the server: it stops unless another live process still uses it.

    Called explicitly because uvicorn ends the process by re-raising SIGTERM, and then
    pgserver's atexit hook never runs.
    """
    global _server
    if _server is not None:
        _server.cleanup()
        _server = None


def _forget_dead_handles(pgdata: Path) -> None:
    # pgserver stops the server only when its handle list holds just the exiting process;
    # a process killed with SIGKILL never removes itself, so drop handles of dead processes.
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    pids = [pid for pid in json.loads(handles.read_text()) if psutil.pid_exists(pid)]
    handles.write_text(json.dumps(pids))
