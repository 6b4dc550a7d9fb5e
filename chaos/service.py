"""The service as a user runs it (`python -m api`), in a subprocess one can SIGKILL."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def environment_without_knobs() -> dict[str, str]:
    """This process's environment without any of the service's knobs (runtime/settings.py),
    so that a service started with it gets only the knobs its starter gives."""
    knobs = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k not in knobs}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m api` on a free port of 127.0.0.1, with `base_env` plus `env` as its
    environment, DATABASE_URL pointing at `database_url`, and its output in `self.log`."""

    def __init__(
        self, database_url: str, *, root: Path = ROOT, base_env: dict[str, str] | None = None,
        **env: str,
    ) -> None:  # fmt: skip
        self.root = root
        self.database_url = database_url
        self.base_env = dict(base_env or {})
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="saga-service-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """What the process is started with (`env`: the start's own overrides)."""
        return {
            **self.base_env,
            **self.env,
            **env,
            "DATABASE_URL": self.database_url,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
        }

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "api"],
                cwd=self.root,
                env=self.environment(env),
                stdout=log,
                stderr=log,
            )

    def start(self, timeout: float = 60, **env: str) -> None:
        """Start it (env overrides those given at construction) and wait until healthy."""
        assert self._proc is None, "already running"
        self._proc = self._spawn(env)
        deadline = time.monotonic() + timeout
        # One client for all the polls: making an httpx client costs tens of milliseconds of
        # CPU (its TLS context), which a poll every 50 ms would take from the starting service.
        with httpx.Client(timeout=1) as client:
            while True:
                if self._proc.poll() is not None:
                    code, self._proc = self._proc.returncode, None
                    raise RuntimeError(f"service exited with {code}:\n{self.tail()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service did not become healthy:\n{self.tail()}")
                time.sleep(0.05)

    def start_expecting_failure(self, timeout: float = 60, **env: str) -> int:
        """Start it when it must not come up; its exit code."""
        assert self._proc is None, "already running"
        proc = self._spawn(env)
        try:
            return proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_for_exit(self, timeout: float) -> int:
        """Wait until the running process exits by itself; its exit code."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the service did not exit within {timeout} s") from None
        self._proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C or a supervisor would; the exit code."""
        if self._proc is None:
            return 0
        self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=30)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc = None
        return code

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
