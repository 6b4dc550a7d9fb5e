"""`python -m api` (`make run`): serve the API in the foreground until Ctrl-C or SIGTERM,
in PROCESSES processes (runtime/processes.py).

The app (FastAPI, DBOS, SQLAlchemy: seconds of CPU to import) is imported only by a process
that serves it. A supervisor of several serving processes does not import it, so that they
start at once instead of after it.
"""

import argparse
import socket
import sys
import threading

from runtime import embedded, logs, starting
from runtime.exit import exit_if_sagas_wait
from runtime.processes import Supervisor, say_ready
from runtime.settings import Settings, get_settings


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the server is given.

    Its protocol is IPPROTO_TCP, not left at 0: asyncio sets TCP_NODELAY on accepted
    connections only for sockets that say TCP. Without it every answer on a kept-alive
    connection (headers, then body, in two writes) waited for the client's delayed ACK:
    40 ms on each call (found by `make bench`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # until it listens, another process could bind the port too
    except OSError:
        listener.close()
        raise
    return listener


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    if args.listen_fd is not None:  # one of a supervisor's serving processes
        return serve(socket.socket(fileno=args.listen_fd), settings, args.ready_fd)
    # Bind before anything else: a second `make run` must fail here, before it launches
    # DBOS and starts recovering (stealing) the sagas of the one already running.
    try:
        listener = listen(settings.host, settings.port)
    except OSError as error:
        print(f"cannot listen on {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return 1
    processes = settings.serving_processes()
    if processes == 1:
        return serve(listener, settings, None)
    url = embedded.resolve_url(settings)  # the supervisor owns the embedded server, if any
    try:
        return Supervisor(settings, processes, listener, url).run()
    finally:
        embedded.release()


def serve(listener: socket.socket, settings: Settings, ready_fd: int | None) -> int:
    """Serve the app on `listener` until Ctrl-C or SIGTERM; the exit status."""
    # Until the app has started, calls are answered 503, not held (runtime/starting.py). A
    # supervisor's serving process leaves that to the supervisor: it answers while none serves.
    up = threading.Event()
    if ready_fd is None:
        starting.answer_until(listener, up.is_set)

    def started() -> None:  # by the app, before uvicorn accepts its first call
        up.set()
        say_ready(ready_fd)

    import uvicorn

    from api.app import create_app

    config = uvicorn.Config(
        create_app(settings, on_started=started),
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go to the one handler of runtime.logs
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down
        return 130
    finally:
        up.set()  # whatever happened, nothing answers for it any more
    return 0 if server.started else 3


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    # Set by the supervisor for its serving processes (runtime/processes.py), not by hand.
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    code = main()
    exit_if_sagas_wait(code)
    sys.exit(code)
