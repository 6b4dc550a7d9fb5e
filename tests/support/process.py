"""The service as a user runs it (`python -m api`) in a subprocess, to kill with SIGKILL."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support import knobs
from tests.support.live import free_port

ROOT = Path(__file__).resolve().parents[2]


def inherited() -> dict[str, str]:
    """This process's environment without the knobs the suite set for the in-process app."""
    return {k: v for k, v in os.environ.items() if k not in knobs.IN_PROCESS}


class ServiceProcess:
    def __init__(self, database_url: str, root: Path = ROOT, **env: str) -> None:
        self.root = root
        self.database_url = database_url
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="saga-service-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60, **env: str) -> None:
        """Start it (env overrides those given at construction) and wait until healthy."""
        assert self._proc is None, "already running"
        environment = {
            **inherited(),
            **self.env,
            **env,
            "DATABASE_URL": self.database_url,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
        }
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "api"],
                cwd=self.root,
                env=environment,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"service exited with {self._proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service did not become healthy:\n{self.tail()}")
            time.sleep(0.05)

    def start_expecting_failure(self, timeout: float = 60, **env: str) -> int:
        """Start it when it must not come up; its exit code."""
        assert self._proc is None, "already running"
        environment = {**inherited(), **self.env, **env, "DATABASE_URL": self.database_url}
        environment |= {"PORT": str(self.port), "HOST": "127.0.0.1"}
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "api"],
                cwd=self.root,
                env=environment,
                stdout=log,
                stderr=log,
            )
        try:
            return proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

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
