"""A short `make chaos` run in the suite: the service SIGKILLed twice, PostgreSQL crashed
once and the network between them misbehaving under a mixed load, then nothing may be lost,
done twice, stuck, or answered wrongly."""

import tempfile
from pathlib import Path

from chaos import network
from chaos.run import KINDS, Config, run
from orders.model import COORDINATIONS


def test_a_short_chaos_run_loses_nothing_and_duplicates_nothing() -> None:
    config = Config(
        seconds=30,
        clients=3,
        kill_gap=(6.0, 9.0),
        db_crashes=1,
        db_down=(3.0, 3.0),
        # One serving process: its restarts are quick enough for a 30 s run on a machine busy
        # with the rest of the suite. `make chaos` runs the default (one per core), and
        # test_processes.py covers several processes' kills and restarts.
        processes=1,
        # A fault every 0.3-1.2 s: in 30 s, with the service down for two restarts and the
        # database for one crash, the default 1-3 s gap can leave fewer than three that strike.
        net_gap=(0.3, 1.2),
        workdir=Path(tempfile.mkdtemp(prefix="saga-chaos-test-")),
    )

    result = run(config)

    lines = [*result.problems[:30], *result.coverage_lines(), *result.coordination_lines()]
    print("\n".join([*lines, result.summary()]))
    assert result.problems == []
    assert result.clean
    assert result.kills >= 2
    assert result.db_restarts == 1
    assert network.total(result.network) >= 3, result.network
    # the database really was gone while clients were posting (not only the service)
    assert result.post_503 - result.starting_503 >= 1
    # The service is down for much of the run, and the suite's other workers share the
    # cores: a run has placed as few as 28. The clients place every kind in each style once
    # before they draw kinds at random, so 26 orders cover every kind in both styles.
    assert result.sagas >= len(KINDS) * len(COORDINATIONS)
    every = {(kind, style) for kind in KINDS for style in COORDINATIONS}
    assert every - result.styles_placed == set()
    assert result.states["COMPLETED"]
    assert result.states["FAILED"]
    for coordination in ("orchestration", "choreography"):  # both styles, each clean
        tally = result.by_coordination[coordination]
        assert tally.sagas >= 5, tally
        assert (tally.lost, tally.duplicated, tally.stuck, tally.wrong) == (0, 0, 0, 0)
