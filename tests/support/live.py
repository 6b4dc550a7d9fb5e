"""The real app served by uvicorn on a free port, in a thread of the test process."""

import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from chaos.service import free_port


class LiveServer:
    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Keep-alive longer than uvicorn's 5 s: tests make clients ahead of time, and a
        # connection closed by the server as a client reuses it is a reset, not an answer.
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_keep_alive=120
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the app failed to start; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not start")
            time.sleep(0.05)
        httpx.get(f"{self.url}/healthz").raise_for_status()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
