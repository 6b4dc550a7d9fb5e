"""Ending a process whose runtime has stopped."""

import logging
import os
import sys
import threading

DBOS_EXECUTOR_THREADS = "dbos-executor-"  # DBOS's ThreadPoolExecutor thread_name_prefix


def exit_if_sagas_wait(code: int) -> None:
    """If sagas are still blocked in DBOS threads, end the process now with `code`.

    A saga waiting for approval, parked for an operator, or between compensation tries sits
    in a DBOS executor thread that would hold the interpreter's exit until its deadline
    (hours). Its progress is in PostgreSQL and it resumes on the next start; nothing is lost.
    """
    # concurrent.futures joins its worker threads at exit, daemon or not; DBOS names its own.
    if not any(t.name.startswith(DBOS_EXECUTOR_THREADS) for t in threading.enumerate()):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
