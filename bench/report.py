"""The benchmark's outputs: one JSON file per measure, a summary with the targets, and the
table in docs/BENCHMARKS.md (between its markers)."""

import json
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.cluster import FAILING_EVERY

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
PACKAGES = ("dbos", "fastapi", "uvicorn", "psycopg", "sqlalchemy", "pydantic", "pgserver")
IN_PROCESS = (
    ("a_saga", "(a) order saga, in-process"),
    ("a_choreography", "(a) order saga choreographed, in-process"),
    ("c_floor", "(c) DBOS floor, no-op steps"),
)
PLAIN = ("d_plain", "(d) plain Python, no durability")
SEEN = (
    ("f_all_off", "(f) order saga, METRICS=false, LOG_LEVEL=WARNING"),
    ("f_metrics_logs", "(f) order saga, metrics + JSON logs at INFO"),
    ("f_traced", "(f) order saga, metrics + JSON logs + traces to a local OTLP sink"),
)
HTTP = (
    ("b_http_1_worker", "(b) HTTP, API + 1 worker"),
    ("b_http_2_workers", "(b) HTTP, API + 2 workers"),
)
HTTP_CHOREOGRAPHY = (
    ("b_http_1_worker_choreography", "(b) HTTP, API + 1 worker, choreographed"),
    ("b_http_2_workers_choreography", "(b) HTTP, API + 2 workers, choreographed"),
)
# The two coordinations side by side: (orchestration, choreography, label).
STYLES = (
    ("a_saga", "a_choreography", "in-process"),
    ("b_http_1_worker", "b_http_1_worker_choreography", "HTTP, 1 worker"),
    ("b_http_2_workers", "b_http_2_workers_choreography", "HTTP, 2 workers"),
)


def machine(postgres_version: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "packages": {name: metadata.version(name) for name in PACKAGES},
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what it compares, the measured value, the goal, and whether it is met."""
    found: list[dict[str, Any]] = []

    def add(name: str, value: float, goal: str, met: bool, how: str) -> None:
        found.append({"target": name, "value": value, "goal": goal, "met": met, "how": how})

    saga, floor = results["a_saga"], results["c_floor"]
    # Round by round (each pair ran one after the other), then the median of the ratios: a
    # slow spell of the shared machine then weighs on both sides of a ratio, not one.
    pairs = zip(saga["rounds_sagas_per_second"], floor["rounds_sagas_per_second"], strict=True)
    ratio = statistics.median(a / c for a, c in pairs)
    add(
        "(a)/(c) sagas/s",
        round(ratio, 2),
        ">= 0.9",
        ratio >= 0.9,
        "order saga / DBOS floor, median of the rounds' ratios",
    )
    if "f_calls" in results:
        calls, run = results["f_calls"], results["e_make_run"]["clients_16"]
        cost_ms = observed_ms_per_saga(calls)
        share = cost_ms / (run["app_cpu_ms_per_saga"] + run["db_cpu_ms_per_saga"])
        add(
            "metrics + JSON logs, per saga",
            round(share * 100, 2),
            "<= 5 %",
            share <= 0.05,
            f"% of (e)'s CPU per saga at 16 clients: {cost_ms * 1000:.0f} us of calls, "
            f"{OBSERVED_CALLS}",
        )
        off = results["f_all_off"]["rounds_cpu_ms_per_saga"]
        for key, label in (
            ("f_metrics_logs", "metrics + JSON logs"),
            ("f_traced", "metrics + JSON logs + tracing"),
        ):
            on = results[key]["rounds_cpu_ms_per_saga"]
            ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
            add(
                f"(f) {label}: CPU per saga / all off, end to end",
                round(ratio, 3),
                "(reported)",
                True,
                "in-process, median of the rounds' ratios; rounds of one configuration differ "
                "by 10-20 % here",
            )
    for key, label in HTTP:
        p99 = results[key]["at_half_capacity"]["post_latency"]["p99_ms"]
        add(f"POST p99 at half capacity, {label[4:]}", p99, "<= 25 ms", p99 <= 25, "ms")
    one, two = results["b_http_1_worker"], results["b_http_2_workers"]
    scale = two["sagas_per_second"] / one["sagas_per_second"]
    add("2 workers / 1 worker sagas/s", round(scale, 2), ">= 1.4", scale >= 1.4, "HTTP capacity")
    made_run = results["e_make_run"]
    healthy = made_run["healthy_after_seconds"]
    add(
        "`make run` healthy after its start",
        healthy,
        "<= 1.5 s",
        healthy <= 1.5,
        "s, on a migrated database, until GET /healthz answers 200",
    )
    recovery = results["recovery"]
    add(
        f"recovery of {recovery['sagas']} in-flight sagas",
        recovery["ratio"],
        "<= 2",
        recovery["ratio"] <= 2 and recovery["audit_violations"] == 0,
        "time with a crash of everything / undisturbed time",
    )
    waiting = results["waiting"]
    memory = waiting["waiting_memory"]
    total = round(memory["app_rss_mb"] + memory["postgres_mb"], 1)
    add(
        f"{waiting['sagas']} waiting sagas, memory of all processes",
        total,
        "< 500 MB",
        total < 500,
        "MB: API + workers (RSS) + PostgreSQL (unique + shared once)",
    )
    return found


# What one order placed with POST ?wait= and completed makes: its start and end counted, 4
# step attempts, 1 HTTP answer; 7 log records (order placed, 4 steps, COMPLETED, the access
# line). A compensating saga makes a few more of each, and costs more CPU too.
OBSERVED_CALLS = "4 step attempts, 2 saga counts, 1 HTTP answer, 7 JSON records"


def observed_ms_per_saga(calls: dict[str, float]) -> float:
    us = (
        4 * calls["step_attempt_us"]
        + 2 * calls["saga_finished_us"]
        + calls["http_answer_us"]
        + 7 * calls["json_log_record_us"]
    )
    return us / 1000


def problems(results: dict[str, Any]) -> list[str]:
    """What makes the run's figures wrong: sagas that did not complete, a dirty audit."""
    found = [
        f"{name}: {result['failures']} sagas did not complete"
        for name, result in results.items()
        if result.get("failures")
    ]
    for key, run in results.get("e_make_run", {}).items():
        if key.startswith("clients_") and run["failures"]:
            found.append(
                f"e_make_run, {run['clients']} clients: {run['failures']} answers not the "
                f"order's end (e.g. {run['failure_examples']})"
            )
    for name, result in results.items():
        half = result.get("at_half_capacity", {})
        if half.get("unfinished") or half.get("refused_posts"):
            found.append(
                f"{name}: at half capacity, {half['unfinished']} sagas unfinished, "
                f"{half['refused_posts']} POSTs refused"
            )
    for name, counted in results.get("g_round_trips", {}).items():
        if counted["failures"] or not counted["sagas"]:
            found.append(
                f"g_round_trips, {name}: {counted['sagas']} sagas, {counted['failures']} failed"
            )
    recovery = results["recovery"]
    if recovery["audit_violations"] or set(recovery["final_states"]) != {"COMPLETED"}:
        found.append(f"recovery: {recovery['final_states']}, audit {recovery['audit_examples']}")
    return found


def write(
    results: dict[str, Any], meta: dict[str, Any], results_dir: Path, doc: Path | None
) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        _write_json(results_dir / f"{name}.json", {"meta": meta, name: result})
    _write_json(results_dir / "summary.json", {"meta": meta})
    if doc is not None:
        text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc.write_text(f"{head}{BEGIN}\n{table(results, meta)}\n{END}{tail}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def table(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown the bench writes into docs/BENCHMARKS.md."""
    m = meta["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    lines = [
        f"Run of {meta['date']}: `{meta['command']}` ({meta['seconds']:g} s measured per "
        f"configuration; in-process: {meta['clients']} clients, the median of "
        f"{meta['rounds']} rounds taken in turn; over HTTP: {meta['http_clients']} clients).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}; "
        f"Python {m['python']}, PostgreSQL {m['postgresql']} (embedded); {packages}.",
        "",
        "| configuration | sagas/s | saga p50 / p99 ms | POST p50 / p99 ms | "
        "app CPU ms/saga | PostgreSQL CPU ms/saga | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in (*IN_PROCESS, PLAIN, *SEEN):
        r = results[key]
        lines.append(
            f"| {label} | {r['sagas_per_second']:g} | {_pair(r['saga_latency'])} | - | "
            f"{r['app_cpu_ms_per_saga']:g} | {r['db_cpu_ms_per_saga']:g} | {r['peak_rss_mb']:g} |"
        )
    for key, label in (*HTTP, *HTTP_CHOREOGRAPHY):
        r = results[key]
        half = r["at_half_capacity"]
        lines.append(
            f"| {label}: capacity | {r['sagas_per_second']:g} | {_pair(r['saga_latency'])} | "
            f"{_pair(r['post_latency'])} | {r['app_cpu_ms_per_saga']:g} | "
            f"{r['db_cpu_ms_per_saga']:g} | {r['peak_rss_mb']:g} |"
        )
        lines.append(
            f"| {label}: at half capacity ({half['rate_per_second']:g}/s) | - | "
            f"{_pair(half['saga_latency'])} | {_pair(half['post_latency'])} | - | - | - |"
        )
    made_run = results["e_make_run"]
    for key, run in made_run.items():
        if not key.startswith("clients_"):
            continue
        clients = run["clients"]
        lines.append(
            f"| (e) `make run`, POST ?wait=, {clients} client{'s' if clients > 1 else ''} | "
            f"{run['sagas_per_second']:g} | {_pair(run['saga_latency'])} | (the same) | "
            f"{run['app_cpu_ms_per_saga']:g} | {run['db_cpu_ms_per_saga']:g} | "
            f"{made_run['peak_rss_mb']:g} |"
        )
    recovery, waiting = results["recovery"], results["waiting"]
    calls = results["f_calls"]
    lines += ["", *styles_table(results)]
    lines += [
        "",
        f"**Seeing it run, call by call** (bench/observe.py, best of 5 rounds): a step attempt "
        f"counted {calls['step_attempt_us']:g} us, a saga's end {calls['saga_finished_us']:g} "
        f"us, an HTTP answer {calls['http_answer_us']:g} us, a JSON log record with the "
        f"saga's context {calls['json_log_record_us']:g} us; per saga ({OBSERVED_CALLS}) "
        f"{observed_ms_per_saga(calls) * 1000:.0f} us.",
        "",
        f"**`make run`.** {made_run['serving_processes']} serving processes (the default), "
        f"healthy {made_run['healthy_after_seconds']:g} s after the start; one order in "
        f"{FAILING_EVERY} compensates, and each answer is that order's end.",
        "",
        f"**Recovery.** {recovery['sagas']} sagas with PARTICIPANT_LATENCY_MS="
        f"{recovery['participant_latency_ms']} on an API process and 2 workers: "
        f"{recovery['undisturbed_seconds']:g} s undisturbed. Again with the API, both workers "
        f"and PostgreSQL SIGKILLed {recovery['killed_after_seconds']:g} s in "
        f"({recovery['in_flight_at_kill']} sagas not yet finished) and all restarted "
        f"(PostgreSQL answering after {recovery['postgres_restart_seconds']:g} s, every "
        f"process after {recovery['restart_seconds']:g} s): "
        f"{recovery['with_crash_seconds']:g} s, {recovery['ratio']:g}x the undisturbed time. "
        f"Final states {recovery['final_states']}; audit: "
        f"{recovery['audit_violations']} violations.",
        "",
        f"**Waiting.** {waiting['sagas']} sagas in AWAITING_APPROVAL at once on an API process "
        f"and 2 workers (placed and waiting in {waiting['seconds_to_all_waiting']:g} s; by "
        f"worker {waiting['waiting_by_worker']}): the three processes "
        f"{waiting['waiting_memory']['app_rss_mb']:g} MB RSS (idle: "
        f"{waiting['idle_memory']['app_rss_mb']:g} MB, so about "
        f"{waiting['app_rss_per_waiting_saga_kb']:g} KB per waiting saga), PostgreSQL "
        f"{waiting['waiting_memory']['postgres_mb']:g} MB (idle: "
        f"{waiting['idle_memory']['postgres_mb']:g} MB; {waiting['postgres_connections']} "
        "connections). Approving all of them: "
        f"{waiting['approve_calls_seconds']:g} s of approve calls, all COMPLETED "
        f"{waiting['seconds_to_all_completed']:g} s after the first "
        f"({waiting['approvals_per_second']:g} sagas/s).",
        "",
        "| target | measured | goal | met |",
        "|---|---:|---:|:-:|",
    ]
    for target in meta["targets"]:
        lines.append(
            f"| {target['target']} ({target['how']}) | {target['value']:g} | "
            f"{target['goal']} | {'yes' if target['met'] else '**no**'} |"
        )
    return "\n".join(lines)


def styles_table(results: dict[str, Any]) -> list[str]:
    """Orchestration and choreography side by side, from the same run."""
    trips = results["g_round_trips"]
    lines = [
        "**Orchestration and choreography** (the same saga; choreography / orchestration "
        "in brackets):",
        "",
        "| where | sagas/s | saga p50 ms | CPU ms/saga (app + PostgreSQL) |",
        "|---|---:|---:|---:|",
    ]
    for plain, choreographed, label in STYLES:
        a, b = results[plain], results[choreographed]
        cpu_a = a["app_cpu_ms_per_saga"] + a["db_cpu_ms_per_saga"]
        cpu_b = b["app_cpu_ms_per_saga"] + b["db_cpu_ms_per_saga"]
        lines.append(
            f"| {label} | {a['sagas_per_second']:g} / {b['sagas_per_second']:g} "
            f"({_ratio(b['sagas_per_second'], a['sagas_per_second'])}) | "
            f"{a['saga_latency']['p50_ms']:g} / {b['saga_latency']['p50_ms']:g} "
            f"({_ratio(b['saga_latency']['p50_ms'], a['saga_latency']['p50_ms'])}) | "
            f"{cpu_a:.1f} / {cpu_b:.1f} ({_ratio(cpu_b, cpu_a)}) |"
        )
    o, c = trips["orchestration"], trips["choreography"]
    lines += [
        "",
        f"Round trips to PostgreSQL per saga, in-process (counted by a proxy; app pool + "
        f"DBOS's): orchestration {o['app']:g} + {o['dbos']:g} = {o['total']:g}; "
        f"choreography {c['app']:g} + {c['dbos']:g} = {c['total']:g} "
        f"({_ratio(c['total'], o['total'])}).",
    ]
    return lines


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def _pair(latency: dict[str, float]) -> str:
    return f"{latency['p50_ms']:g} / {latency['p99_ms']:g}"
