"""While the service starts, its listening socket answers 503 instead of holding calls.

The socket is bound and listening from the service's first moment, so that a second service
on the same port fails at once, before it launches DBOS and recovers (steals) the sagas of
the one that runs. Until a serving process is up (imports, migrations, DBOS's launch and
recovery: seconds, up to START_WAIT_SECONDS while the database is down), a call that connects
would otherwise wait in the socket's backlog, and then still take its own DB_WAIT_SECONDS: a
budget the caller cannot see. `answer_one` gives it a 503 with Retry-After instead, at once,
the same answer as while the database is down (and as safe to resend: nothing was read).

It answers from the process that owns the socket: the supervisor while none of its serving
processes serves (runtime/processes.py), or a thread of the single serving process until
uvicorn serves (api/__main__.py). It reads the request's head, answers, and drains what the
client still sends, so that closing does not reset the connection before the answer is read.
"""

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
READ_SECONDS = 0.2  # for the request's head, and again for what follows the answer
MAX_HEAD = 16384
POLL_SECONDS = 0.05

_BODY = json.dumps(
    {
        "detail": "the service is starting; try again shortly "
        "(resending with the same Idempotency-Key is safe)"
    }
).encode()
ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\n".encode()
    + f"retry-after: {RETRY_AFTER_SECONDS}\r\n".encode()
    + b"connection: close\r\n\r\n"
    + _BODY
)


def answer_one(listener: socket.socket, wait: float, serving: Callable[[], bool]) -> bool:
    """Wait up to `wait` seconds for a call on `listener` and answer it 503 unless the
    service serves by then (`serving()`, asked once the call is there); whether one came.

    `serving()` must be true before the service accepts its first call (the app says so at
    the end of its start, before uvicorn accepts): then a call that comes after any call
    the service answered is never answered "starting". Safe while other processes accept on
    the same socket: the accept does not block, and a call another took is not ours."""
    if not select.select([listener], [], [], wait)[0] or serving():
        return False
    try:
        conn, _ = _accept(listener)
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return False  # taken by a serving process that just came up, or gone already
    with conn, contextlib.suppress(OSError):  # OSError: the client went away
        _answer(conn)
    return True


def answer_until(listener: socket.socket, serving: Callable[[], bool]) -> threading.Thread:
    """A thread that answers 503 on `listener` until `serving()` is true (then it ends)."""

    def run() -> None:
        answered = 0
        while not serving():
            answered += answer_one(listener, POLL_SECONDS, serving)
        if answered:
            log.info("answered %d calls 503 while starting", answered)

    thread = threading.Thread(target=run, name="answer-while-starting", daemon=True)
    thread.start()
    return thread


def _accept(listener: socket.socket) -> tuple[socket.socket, object]:
    # Non-blocking for good, never set back: the flag belongs to the socket every serving
    # process shares, and asyncio, which serves on it, sets it so too.
    listener.setblocking(False)
    return listener.accept()


def _answer(conn: socket.socket) -> None:
    conn.setblocking(True)
    head = b""
    deadline = time.monotonic() + READ_SECONDS
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return  # closed before it asked anything
        head += chunk
    conn.sendall(ANSWER)
    conn.shutdown(socket.SHUT_WR)
    _drain(conn)


def _drain(conn: socket.socket) -> None:
    """Read (and drop) what the client still sends, until it closes or READ_SECONDS pass."""
    deadline = time.monotonic() + READ_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if not conn.recv(65536):
                return
        except (TimeoutError, OSError):
            return
