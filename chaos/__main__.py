"""`python -m chaos` (`make chaos`): the chaos run, its problems and its one-line summary.

CHAOS_SECONDS (default 180) bounds the load; CHAOS_SEED repeats a run's random choices;
CHAOS_CLIENTS (default 4) sets the concurrent clients; CHAOS_CHOREOGRAPHY (default 0.5) the
share of choreographed orders; CHAOS_KEEP=1 keeps the database.
Exits 1 if anything was lost, duplicated, stuck, or answered against the contract.
"""

import sys

from chaos.run import Config, run

SHOWN_PROBLEMS = 50


def main() -> int:
    result = run(Config.from_env())
    for problem in result.problems[:SHOWN_PROBLEMS]:
        print(problem)
    if len(result.problems) > SHOWN_PROBLEMS:
        print(f"... and {len(result.problems) - SHOWN_PROBLEMS} more")
    print("chaos: what the sagas did, by kind of order")
    print("\n".join(result.coverage_lines()))
    print("chaos: by coordination")
    print("\n".join(result.coordination_lines()))
    print(result.summary())
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
