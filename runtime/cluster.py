"""`python -m runtime.cluster` (`make cluster WORKERS=N`): for local use, one API process
(enqueue-only, on PORT) and N workers (w1..wN, each with its own executor id and a free
port), all on the same database, in the foreground until Ctrl-C or SIGTERM.

On several hosts, run `make api` and `make worker ID=...` yourself instead (docs/SCALING.md).
"""

import os
import signal
import subprocess
import sys
import time
import types

from runtime.settings import get_settings


def main() -> int:
    workers = int(os.environ.get("WORKERS", "2"))
    if workers < 1:
        print("WORKERS must be 1 or more", file=sys.stderr)
        return 2
    settings = get_settings()
    base = {**os.environ, "HOST": settings.host}
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, **env: str) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "api"], env={**base, **env})
        children.append((name, proc))

    spawn("api", PROCESS_ROLE="api", PORT=str(settings.port))
    for n in range(1, workers + 1):
        spawn(f"w{n}", PROCESS_ROLE="worker", EXECUTOR_ID=f"w{n}", PORT="0")
    print(f"cluster: api on {settings.host}:{settings.port}, workers w1..w{workers}", flush=True)

    stopping = False

    def stop(signum: int, frame: types.FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"cluster: {name} exited with {proc.returncode}; stopping", flush=True)
                stopping, code = True, 1
        time.sleep(0.2)
    for _, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for _, proc in children:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
