"""`BENCH_QUICK=1 make bench`: every measure of the benchmark runs on a small scale, with real
processes and a real crash, and writes its results. The figures are not asserted (they are
goals, reported in docs/BENCHMARKS.md); that every saga ended as it must, is."""

import json
import os
import subprocess
import sys
from pathlib import Path

from chaos.service import ROOT

SEEN = ("f_all_off", "f_metrics_logs", "f_traced")  # what seeing it run costs
HTTP = ("b_http_1_worker", "b_http_2_workers")
HTTP_CHOREOGRAPHY = ("b_http_1_worker_choreography", "b_http_2_workers_choreography")
MEASURES = ("a_saga", "a_choreography", "c_floor", "d_plain", *SEEN, *HTTP, *HTTP_CHOREOGRAPHY)


def test_the_quick_benchmark_runs_every_measure_and_writes_its_results(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nprose kept\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n")
    env = {
        **os.environ,
        "BENCH_QUICK": "1",
        "BENCH_RESULTS_DIR": str(tmp_path / "results"),
        "BENCH_DOC": str(doc),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {
        path.stem: json.loads(path.read_text()) for path in (tmp_path / "results").glob("*.json")
    }
    assert set(results) == {
        *MEASURES,
        "f_calls",
        "g_round_trips",
        "e_make_run",
        "recovery",
        "waiting",
        "summary",
    }
    for name in MEASURES:
        measure = results[name][name]
        assert measure["sagas"] > 0, measure
        assert measure["failures"] == 0, measure
        assert measure["saga_latency"]["p99_ms"] >= measure["saga_latency"]["p50_ms"] > 0
        assert measure["app_cpu_ms_per_saga"] > 0
        assert measure["peak_rss_mb"] > 0
    trips = results["g_round_trips"]["g_round_trips"]
    for coordination in ("orchestration", "choreography"):
        counted = trips[coordination]
        assert counted["sagas"] > 0, counted
        assert counted["failures"] == 0, counted
        raw = counted["counted"]
        assert min(raw["app"], raw["dbos"], raw["sagas"]) > 0, counted
        # Each per-saga figure is its count over the sagas, rounded on its own (so the
        # rounded parts may not add up to the rounded total).
        for part in ("app", "dbos", "other"):
            assert counted[part] == round(raw[part] / raw["sagas"], 1), counted
        whole = raw["app"] + raw["dbos"] + raw["other"]
        assert counted["total"] == round(whole / raw["sagas"], 1), counted
    # A completed choreographed saga is five workflows where an orchestrated one is one.
    assert trips["choreography"]["dbos"] > trips["orchestration"]["dbos"]
    for name in (*HTTP, *HTTP_CHOREOGRAPHY):
        half = results[name][name]["at_half_capacity"]
        assert half["unfinished"] == 0, half
        assert half["refused_posts"] == 0, half
        assert half["post_latency"]["p50_ms"] > 0
    made_run = results["e_make_run"]["e_make_run"]
    assert made_run["serving_processes"] >= 1
    assert made_run["healthy_after_seconds"] > 0
    for clients in (1, 16):
        run = made_run[f"clients_{clients}"]
        assert run["sagas"] > 0, run
        assert run["failures"] == 0, run  # each answer carried its order's end
        assert run["saga_latency"]["p99_ms"] >= run["saga_latency"]["p50_ms"] > 0
        assert run["app_cpu_ms_per_saga"] > 0
    recovery = results["recovery"]["recovery"]
    assert recovery["in_flight_at_kill"] > 0, recovery  # the crash really hit sagas in flight
    assert recovery["final_states"] == {"COMPLETED": recovery["sagas"]}, recovery
    assert recovery["audit_violations"] == 0, recovery
    waiting = results["waiting"]["waiting"]
    assert sum(waiting["waiting_by_worker"].values()) == waiting["sagas"], waiting
    assert waiting["waiting_memory"]["app_rss_mb"] > 0
    targets = results["summary"]["meta"]["targets"]
    assert len(targets) == 10
    assert all(value > 0 for value in results["f_calls"]["f_calls"].values())
    assert results["f_traced"]["f_traced"]["trace_batches_received"] > 0  # spans were sent
    assert all(isinstance(t["met"], bool) for t in targets)
    text = doc.read_text()
    assert "prose kept" in text
    assert "old" not in text
    assert "(c) DBOS floor" in text
    assert "metrics + JSON logs, per saga" in text
    assert "(e) `make run`, POST ?wait=, 16 clients" in text
    assert "BENCH_QUICK=1 make bench" in text
