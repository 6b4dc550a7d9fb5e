"""The service as a user runs it (`python -m api`) in a subprocess, to kill with SIGKILL."""

import os
from pathlib import Path

from chaos import service
from tests.support import knobs

ROOT = service.ROOT


def inherited() -> dict[str, str]:
    """This process's environment without the knobs the suite set for the in-process app."""
    return {k: v for k, v in os.environ.items() if k not in knobs.IN_PROCESS}


class ServiceProcess(service.ServiceProcess):
    """The service with the test process's environment, minus the in-process app's knobs.
    One serving process unless a test asks for more (PROCESSES): a test that kills "the
    service" then knows which executor ran what; tests/recovery/test_processes.py and the
    chaos run cover the default of one per core."""

    def __init__(self, database_url: str, *, root: Path = ROOT, **env: str) -> None:
        super().__init__(database_url, root=root, base_env={**inherited(), "PROCESSES": "1"}, **env)
