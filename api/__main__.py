"""`python -m api` (`make run`): serve the API in the foreground until Ctrl-C or SIGTERM."""

import logging
import socket
import sys

import uvicorn

from api.app import create_app
from runtime.exit import exit_if_sagas_wait
from runtime.settings import get_settings


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


def main() -> int:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl command
    # Bind before anything else: a second `make run` must fail here, before it launches
    # DBOS and starts recovering (stealing) the sagas of the one already running.
    try:
        listener = listen(settings.host, settings.port)
    except OSError as error:
        print(f"cannot listen on {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return 1
    config = uvicorn.Config(
        create_app(settings),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down
        return 130
    return 0 if server.started else 3


if __name__ == "__main__":
    code = main()
    exit_if_sagas_wait(code)
    sys.exit(code)
