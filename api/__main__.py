"""`python -m api` (`make run`): serve the API in the foreground until Ctrl-C or SIGTERM."""

import logging
import socket
import sys

import uvicorn

from api.app import create_app
from runtime.exit import exit_if_sagas_wait
from runtime.settings import get_settings


def main() -> int:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl command
    # Bind before anything else: a second `make run` must fail here, before it launches
    # DBOS and starts recovering (stealing) the sagas of the one already running.
    listener = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
        listener.listen(2048)  # until it listens, another process could bind the port too
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
