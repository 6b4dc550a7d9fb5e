"""A PostgreSQL server of the chaos run's own (embedded, from pgserver) that it can crash.

The run needs to take the database away and bring it back, which it cannot do to a server
it does not own, so it always runs its own, whatever DATABASE_URL says.
"""

import contextlib
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import psycopg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
    from pgserver.postgres_server import PostgresServer, get_server


class CrashablePostgres:
    """An embedded server in `root`; `crash()` kills every one of its processes with SIGKILL
    (as a power cut or the OOM killer would), `start_again()` restarts it (crash recovery)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pg"
        self._server: Any = None
        self.url = ""

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        self.url = str(self._server.get_uri())
        return self.url

    def crash(self) -> None:
        """SIGKILL the postmaster and all its children at once: no shutdown of any kind."""
        postmaster = psutil.Process(self.postmaster_pid())
        victims = [postmaster, *postmaster.children(recursive=True)]
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(victims, timeout=10)

    def start_again(self, timeout: float = 60) -> None:
        """Start the server after a crash (it replays its WAL) and wait until it answers."""
        with PostgresServer._lock:
            self._server.ensure_postgres_running()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, *, delete: bool) -> None:
        """Stop the server; delete its data too unless asked to keep it (for a post-mortem)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if delete:
            shutil.rmtree(self.root, ignore_errors=True)

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
