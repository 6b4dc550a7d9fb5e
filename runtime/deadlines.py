"""Client-side deadlines on database connections: a connection that has not finished its
work by its deadline is cut from this side, so that no caller waits on a stalled or
half-open network path for longer than it may.

PostgreSQL's statement_timeout does not help there: on a stalled path the server never
hears the cancel, or has answered already and the answer is what got lost. TCP's own
timeouts (keepalives, tcp_user_timeout) take many seconds. Shutting the socket down wakes
the thread blocked on it at once: psycopg raises OperationalError, the connection is broken
and its pool throws it away. One watchdog thread serves every deadline of the process.
"""

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg


class DeadlinePassed(Exception):
    """The connection was cut because its work had not finished by its deadline."""


@dataclass(order=True)
class _Armed:
    at: float
    number: int
    conn: Any = field(compare=False)
    fired: bool = field(default=False, compare=False)
    done: bool = field(default=False, compare=False)


class _Watchdog:
    def __init__(self) -> None:
        self._heap: list[_Armed] = []
        self._lock = threading.Condition()
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, conn: psycopg.Connection[Any], at: float) -> _Armed:
        armed = _Armed(at, next(self._numbers), conn)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, armed)
            if self._heap[0] is armed:
                self._lock.notify()
        return armed

    def disarm(self, armed: _Armed) -> bool:
        """Stop watching; whether the deadline had fired (then the connection is cut)."""
        with self._lock:  # after this, _run never touches the connection again
            armed.done = True
            return armed.fired

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._heap and self._heap[0].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait()
                    continue
                first = self._heap[0]
                left = first.at - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                heapq.heappop(self._heap)
                first.fired = True
                _cut(first.conn)  # under the lock: its owner cannot close it meanwhile


def _cut(conn: psycopg.Connection[Any]) -> None:
    try:
        fd = os.dup(conn.fileno())
    except (OSError, psycopg.Error):
        return  # already closed
    # shutdown() acts on the socket itself, so it reaches the descriptor psycopg waits on.
    with socket.socket(fileno=fd) as sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_watchdog = _Watchdog()


@contextmanager
def cut_at(conn: psycopg.Connection[Any], deadline: float | None) -> Iterator[None]:
    """Run the block with `conn`; if it has not finished by `deadline` (time.monotonic()),
    cut the connection, close it, and raise DeadlinePassed. None: no deadline."""
    if deadline is None:
        yield
        return
    armed = _watchdog.arm(conn, deadline)
    try:
        yield
    except BaseException as error:
        if _watchdog.disarm(armed):
            conn.close()
            raise DeadlinePassed("no answer from the database in time") from error
        raise
    if _watchdog.disarm(armed):  # fired just as the block finished: the connection is cut
        conn.close()
