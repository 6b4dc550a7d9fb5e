"""`python -m bench` (`make bench`): run every measure, write bench/results/*.json and the
table in docs/BENCHMARKS.md, and print the targets.

BENCH_QUICK=1: a smoke check on a small scale (results in bench/results/quick, the table
left alone). BENCH_SECONDS, BENCH_CLIENTS, BENCH_WAITING_SAGAS, BENCH_RESULTS_DIR and
BENCH_DOC override the defaults. The targets are reported, never asserted; the exit status
is 1 only if a saga did not complete or the audit after the crash found anything (then the
figures do not measure what they say).
"""

import signal
import sys
import time
from typing import Any

import psycopg

from bench import report
from bench.run import Config, run, say


def main() -> int:
    # SIGTERM as Ctrl-C: unwind, so that the processes and the PostgreSQL it started stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    config = Config.from_env()
    command = "BENCH_QUICK=1 make bench" if config.quick else "make bench"
    postgres: list[str] = []

    def note_version(url: str) -> None:
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgres.append(str(row[0]) if row else "unknown")

    results = run(config, on_start=note_version)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "seconds": config.seconds,
        "clients": config.clients,
        "http_clients": config.http_clients,
        "rounds": config.rounds,
        "machine": report.machine(postgres[0] if postgres else "unknown"),
    }
    meta["targets"] = report.targets(results)
    report.write(results, meta, config.results_dir, config.doc)
    say(
        f"bench: results in {config.results_dir}"
        + (f", table in {config.doc}" if config.doc else "")
    )
    for target in meta["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        print(f"  {target['target']}: {target['value']:g} (goal {target['goal']}): {verdict}")
    problems = report.problems(results)
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
