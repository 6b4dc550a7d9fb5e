"""One service, several processes: `python -m api` with PROCESSES=N > 1 is a small supervisor
that binds the listening socket, starts N serving processes that all accept on it, and
stands for them as one.

Python runs one thread at a time per process, so a process that runs sagas uses about one
core; N processes use N. Each serving process is a whole service (the same role) with an
executor id of its own (EXECUTOR_ID for the first, EXECUTOR_ID-2, -3, ... for the others),
and so holds its own lease and recovers its own sagas on its next start; a process left out
by a smaller PROCESSES later is taken over like any dead executor.

As one: a serving process dies with the supervisor, even by SIGKILL (PR_SET_PDEATHSIG), so a
`kill -9` of the service leaves nothing behind; SIGTERM and Ctrl-C stop them all cleanly. A
serving process that dies is started again after a second. One that fails to start (it
exits before it serves) stops the service if no other serves (a broken configuration, an
executor id in use: its exit status is the service's); while others serve, it is started
again after a pause that doubles with each failed start (1 s, 2 s, ... 30 s), since the
cause is then one that passes, such as the database going down while it started. While none
of them serves, the supervisor answers calls 503 itself (runtime/starting.py).
"""

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass

from runtime import starting
from runtime.settings import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
RESTART_PAUSE_SECONDS = 1.0  # before a serving process is started again; doubled while
MAX_PAUSE = 30.0  # its starts keep failing, up to this
STOP_SECONDS = 30.0
ALL_SERVE = "all %d serving processes serve"  # logged each time they all do again


def executor_id(settings: Settings, number: int) -> str:
    """The executor id of serving process `number` (1-based)."""
    return settings.executor_id if number == 1 else f"{settings.executor_id}-{number}"


@dataclass
class _Serving:
    number: int
    proc: subprocess.Popen[bytes] | None  # None: waiting to be started again
    ready: int  # the read end of a pipe the process writes to once it serves
    healthy: bool = False
    failed_starts: int = 0  # starts in a row that ended before it served
    start_at: float = 0.0  # time.monotonic() when a waiting one is started again

    def came_up(self) -> bool:
        """Whether it has said it serves (checked without waiting)."""
        if not self.healthy and select.select([self.ready], [], [], 0)[0]:
            self.healthy = os.read(self.ready, 1) == b"1"
        return self.healthy

    def serves(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.came_up()


class Supervisor:
    """Starts `processes` serving processes on `listener` and keeps them running until
    stopped; `run()` returns the service's exit status."""

    def __init__(
        self, settings: Settings, processes: int, listener: socket.socket, database_url: str
    ) -> None:
        self.settings = settings
        self.processes = processes
        self.listener = listener
        self.database_url = database_url
        self._serving: list[_Serving] = []
        self._stopping: int | None = None  # the signal that asked us to stop
        self._metrics_dir = ""

    def run(self) -> int:
        # The serving processes keep their metrics in files here, so that any of them
        # answers GET /metrics for all (runtime/metrics.py); a fresh one for each run.
        self._metrics_dir = tempfile.mkdtemp(prefix="saga-metrics-")
        try:
            return self._run()
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._serving = [self._spawn(number) for number in range(1, self.processes + 1)]
        code = 0
        all_serve = False
        while self._stopping is None:
            if all_serve != all(serving.serves() for serving in self._serving):
                all_serve = not all_serve
                if all_serve:  # a client's kept-alive connection stays with one process
                    log.info(ALL_SERVE, self.processes)
            for index, serving in enumerate(self._serving):
                if serving.proc is None:  # waiting to be started again
                    if time.monotonic() >= serving.start_at:
                        self._serving[index] = self._spawn(serving.number, serving.failed_starts)
                    continue
                serving.came_up()
                status = serving.proc.poll()
                if status is not None:
                    served = serving.came_up()  # its "ready", or the pipe's end
                    os.close(serving.ready)
                    if not served and not any(other.serves() for other in self._serving):
                        log.error(
                            "serving process %d did not start (exit %d)", serving.number, status
                        )
                        code, self._stopping = status or 1, signal.SIGTERM
                        break
                    self._serving[index] = self._later(serving, served, status)
            self._wait(0.1)
        self._stop_all()
        return 130 if self._stopping == signal.SIGINT and code == 0 else code

    def _wait(self, seconds: float) -> None:
        """Pause for `seconds`, answering 503 to the calls that come while none serves
        (runtime/starting.py): the service starting, or all its serving processes restarting."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0 and self._stopping is None:
            if self._any_serves():
                time.sleep(left)
                return
            starting.answer_one(self.listener, left, self._any_serves)

    def _any_serves(self) -> bool:
        return any(serving.serves() for serving in self._serving)

    def _later(self, ended: _Serving, served: bool, status: int) -> _Serving:
        """What stands for a serving process that exited (the service going on): itself, to
        be started again after a pause (1 s; doubled with each start in a row that failed)."""
        failed_starts = 0 if served else ended.failed_starts + 1
        pause = min(RESTART_PAUSE_SECONDS * 2 ** max(failed_starts - 1, 0), MAX_PAUSE)
        if served:
            log.warning("serving process %d exited (%d): starting it again", ended.number, status)
        else:  # the others serve: a database outage, say, not a broken service
            log.error(
                "serving process %d did not start (exit %d) while the others serve: "
                "trying again in %.0f s",
                ended.number,
                status,
                pause,
            )
        return _Serving(
            ended.number, None, -1, failed_starts=failed_starts, start_at=time.monotonic() + pause
        )

    def _spawn(self, number: int, failed_starts: int = 0) -> _Serving:
        fd = self.listener.fileno()
        ready, ready_to_write = os.pipe()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "EXECUTOR_ID": executor_id(self.settings, number),
            "PROCESSES": "1",
            METRICS_DIR_VARIABLE: self._metrics_dir,
        }
        parent = os.getpid()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api",
                "--listen-fd",
                str(fd),
                "--ready-fd",
                str(ready_to_write),
            ],
            env=env,
            pass_fds=(fd, ready_to_write),
            preexec_fn=lambda: _die_with(parent),
        )
        os.close(ready_to_write)
        return _Serving(number, proc, ready, failed_starts=failed_starts)

    def _stop(self, signum: int, frame: types.FrameType | None) -> None:
        self._stopping = signum

    def _stop_all(self) -> None:
        procs = [serving.proc for serving in self._serving if serving.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _die_with(parent: int) -> None:
    """In the child, before it runs: be killed when the supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before the line above
        os._exit(1)


def say_ready(fd: int | None) -> None:
    """In a serving process: tell the supervisor (if any) that it serves now."""
    if fd is not None:
        os.write(fd, b"1")
        os.close(fd)
