"""The benchmark run: every configuration, one after another, on one PostgreSQL and one machine.

The run starts its own embedded PostgreSQL in a temporary directory, whatever DATABASE_URL
says: the recovery measure crashes it, which it cannot do to a server it does not own.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from psycopg import sql

from bench import cluster
from bench.cluster import Cluster
from bench.measure import peak_rss_mb
from bench.orders import order_body
from chaos.postgres import CrashablePostgres
from chaos.service import ROOT, ServiceProcess, environment_without_knobs
from orders.audit import audit
from orders.model import TERMINAL_STATES
from runtime.migrate import migrate
from runtime.processes import ALL_SERVE
from services import inventory

SKU = "BENCH-ITEM"
# The services' knobs in every configuration; each measure adds its own.
SERVICE_ENV = {
    "LOG_LEVEL": "WARNING",
    "SEED_DEMO_CATALOG": "false",
    "PARTICIPANT_LATENCY_MS": "0",
}


@dataclass(frozen=True)
class Config:
    quick: bool = False
    seconds: float = 15.0  # measured, per throughput configuration (in-process: per round)
    rounds: int = 3  # of each in-process configuration, taken in turn
    warmup: float = 3.0
    clients: int = 8  # in one process: enough to keep its one core (the GIL) busy
    http_clients: int = 32  # over HTTP: enough to keep a backlog on the queue
    wait_clients: tuple[int, ...] = (1, 16)  # (e): as ../shared/peers measures
    recovery_sagas: int = 200
    recovery_latency_ms: int = 200
    waiting_sagas: int = 2000
    results_dir: Path = ROOT / "bench" / "results"
    doc: Path | None = ROOT / "docs" / "BENCHMARKS.md"  # None: leave the table alone

    @classmethod
    def from_env(cls) -> "Config":
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false")
        if quick:  # a smoke check: every measure runs, on a small scale
            base = cls(
                quick=True,
                seconds=2.0,
                warmup=1.0,
                clients=4,
                http_clients=8,
                rounds=1,
                recovery_sagas=20,
                recovery_latency_ms=100,
                waiting_sagas=40,
                results_dir=ROOT / "bench" / "results" / "quick",
                doc=None,
            )
        else:
            base = cls()
        return cls(
            quick=base.quick,
            seconds=float(os.environ.get("BENCH_SECONDS", base.seconds)),
            warmup=base.warmup,
            rounds=int(os.environ.get("BENCH_ROUNDS", base.rounds)),
            clients=int(os.environ.get("BENCH_CLIENTS", base.clients)),
            http_clients=int(os.environ.get("BENCH_HTTP_CLIENTS", base.http_clients)),
            wait_clients=base.wait_clients,
            recovery_sagas=base.recovery_sagas,
            recovery_latency_ms=base.recovery_latency_ms,
            waiting_sagas=int(os.environ.get("BENCH_WAITING_SAGAS", base.waiting_sagas)),
            results_dir=Path(os.environ.get("BENCH_RESULTS_DIR", base.results_dir)),
            doc=Path(os.environ["BENCH_DOC"]) if os.environ.get("BENCH_DOC") else base.doc,
        )


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def progress_for(name: str) -> Callable[[str], None]:
    return lambda text: say(f"  {name}: {text}")


class Bench:
    """The measures, each on a database of its own on the one server (so that the audit
    after the crash sees only the sagas of that measure)."""

    def __init__(self, config: Config, pg: CrashablePostgres) -> None:
        self.config = config
        self.pg = pg
        self.url = pg.url
        self.base_env = {**environment_without_knobs(), **SERVICE_ENV}

    def use_database(self, name: str) -> None:
        """Create database `name` on the server, with the schema and the stock, and use it."""
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.use_existing_database(name)
        prepare(self.url)

    def use_existing_database(self, name: str) -> None:
        self.url = urlunsplit(urlsplit(self.pg.url)._replace(path=f"/{name}"))

    @property
    def postmaster_pid(self) -> int:
        return self.pg.postmaster_pid()

    # --- (a), (c), (d): in one process --------------------------------------------------

    def in_process(self, kind: str, extra_env: dict[str, str]) -> dict[str, Any]:
        env = {
            **self.base_env,
            **extra_env,
            "DATABASE_URL": self.url,
            "EXECUTOR_ID": f"bench-{kind}",
            "BENCH_KIND": kind,
            "BENCH_SKU": SKU,
            "BENCH_CLIENTS": str(self.config.clients),
            "BENCH_SECONDS": str(self.config.seconds),
            "BENCH_WARMUP_SECONDS": str(self.config.warmup),
            "BENCH_POSTMASTER_PID": str(self.postmaster_pid),
        }
        done = subprocess.run(
            [sys.executable, "-m", "bench.inprocess"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            check=False,
            timeout=self.config.seconds * 4 + 300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.inprocess {kind} exited with {done.returncode}")
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result

    def observe_calls(self) -> dict[str, Any]:
        """(f)'s calls one by one (bench/observe.py), in a process of its own."""
        done = subprocess.run(
            [sys.executable, "-m", "bench.observe"],
            cwd=ROOT,
            env={**self.base_env, "BENCH_OBSERVE_CALLS": "2000" if self.config.quick else "20000"},
            stdout=subprocess.PIPE,
            check=True,
            timeout=300,
        )
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result

    # --- (b): over HTTP, an API process and workers ----------------------------------------

    def over_http(self, workers: int, coordination: str = "orchestration") -> dict[str, Any]:
        name = f"http, {workers} worker{'s' if workers > 1 else ''}, {coordination}"
        group = Cluster(self.url, workers, self.base_env)
        group.start()
        try:
            capacity = cluster.saturate(
                group,
                self.url,
                self.postmaster_pid,
                SKU,
                self.config.http_clients,
                self.config.warmup,
                self.config.seconds,
                progress_for(name),
                coordination,
            )
            if not capacity["sagas"]:
                raise RuntimeError(
                    f"{name}: no saga ended in the {self.config.seconds} s measured "
                    "(a longer BENCH_SECONDS measures a slower machine)"
                )
            progress_for(name)(
                f"capacity {capacity['sagas_per_second']} sagas/s; now at half of it"
            )
            half = cluster.steady(
                group,
                self.url,
                SKU,
                capacity["sagas_per_second"] / 2,
                max(self.config.seconds / 2, 2.0),
                progress_for(name),
                coordination,
            )
            peak = group.peak_rss_mb()
        finally:
            group.stop()
        return {
            "workers": workers,
            "coordination": coordination,
            **capacity,
            "peak_rss_mb": peak,
            "at_half_capacity": half,
        }

    # --- (e): `make run`, clients waiting in their POST ----------------------------------

    def made_run(self) -> dict[str, Any]:
        """`make run` as a user starts it (its default serving processes), then each of
        `wait_clients` clients POSTing with `?wait=`; how soon it answered after its start."""
        # As a user runs it: its default LOG_LEVEL too (INFO, the saga's life in JSON lines).
        service = ServiceProcess(self.url, base_env={**self.base_env, "LOG_LEVEL": "INFO"})
        began = time.monotonic()
        service.start()
        healthy_after = time.monotonic() - began
        processes = len(psutil.Process(service.pid).children()) or 1
        if processes > 1:  # measure once all serve: clients keep their first connection
            line = ALL_SERVE % processes
            deadline = time.monotonic() + 60
            while line not in service.tail(200) and time.monotonic() < deadline:
                time.sleep(0.05)
        result: dict[str, Any] = {
            "serving_processes": processes,
            "healthy_after_seconds": round(healthy_after, 2),
            "all_serving_after_seconds": round(time.monotonic() - began, 2),
        }
        try:
            for clients in self.config.wait_clients:
                name = f"make run, {clients} client{'s' if clients > 1 else ''}"
                result[f"clients_{clients}"] = cluster.waited(
                    service,
                    self.postmaster_pid,
                    SKU,
                    clients,
                    self.config.warmup,
                    self.config.seconds,
                    progress_for(name),
                )
            result["peak_rss_mb"] = peak_rss_mb(service.pid)
        finally:
            service.stop()
        return result

    # --- recovery: everything killed mid-flight ------------------------------------------

    def recovery(self) -> dict[str, Any]:
        progress = progress_for("recovery")
        count = self.config.recovery_sagas
        group = Cluster(
            self.url,
            2,
            self.base_env,
            PARTICIPANT_LATENCY_MS=str(self.config.recovery_latency_ms),
        )
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            # A checkpoint first: the crash's WAL replay then covers this measure's writes,
            # not whatever the measures before it left since the last checkpoint.
            conn.execute("CHECKPOINT")
        group.start()
        try:
            first = [order_body(SKU) for _ in range(count)]
            began = time.time()
            cluster.place_many(group.api, first, self.config.http_clients, progress)
            ids = [body["order_id"] for body in first]
            undisturbed = (
                cluster.wait_for_states(self.url, ids, TERMINAL_STATES, 600, progress) - began
            )
            progress(f"{count} sagas undisturbed: {undisturbed:.1f} s; again, with a crash")

            second = [order_body(SKU) for _ in range(count)]
            ids = [body["order_id"] for body in second]
            began = time.time()
            cluster.place_many(group.api, second, self.config.http_clients, progress)
            time.sleep(max(0.0, began + undisturbed / 2 - time.time()))
            states = cluster.count_states(self.url, ids)
            in_flight = count - sum(states.get(state, 0) for state in TERMINAL_STATES)
            killed_at = time.time()
            group.kill()
            self.pg.crash()
            progress(f"SIGKILLed the API, both workers and PostgreSQL; {in_flight} in flight")
            self.pg.start_again()
            postgres_back = time.time() - killed_at
            group.start()
            restarted = time.time() - killed_at
            progress(f"all restarted in {restarted:.1f} s")
            total = cluster.wait_for_states(self.url, ids, TERMINAL_STATES, 600, progress) - began
            final = cluster.count_states(self.url, ids)
        finally:
            group.stop()
        with psycopg.connect(self.url, autocommit=True) as conn:
            violations = audit(conn).violations
        return {
            "sagas": count,
            "participant_latency_ms": self.config.recovery_latency_ms,
            "undisturbed_seconds": round(undisturbed, 2),
            "killed_after_seconds": round(killed_at - began, 2),
            "in_flight_at_kill": in_flight,
            "postgres_restart_seconds": round(postgres_back, 2),
            "restart_seconds": round(restarted, 2),
            "with_crash_seconds": round(total, 2),
            "ratio": round(total / undisturbed, 2),
            "final_states": final,
            "audit_violations": len(violations),
            "audit_examples": violations[:3],
        }

    # --- waiting: many sagas in AWAITING_APPROVAL ------------------------------------------

    def waiting(self) -> dict[str, Any]:
        progress = progress_for("waiting")
        count = self.config.waiting_sagas
        # A threshold of 0: every order waits for approval after its reservation.
        group = Cluster(self.url, 2, self.base_env, APPROVAL_THRESHOLD_CENTS="0")
        group.start()
        try:
            idle = cluster.memory_now(group, self.postmaster_pid)
            bodies = [order_body(SKU) for _ in range(count)]
            ids = [body["order_id"] for body in bodies]
            began = time.time()
            cluster.place_many(group.api, bodies, self.config.http_clients, progress)
            all_waiting = cluster.wait_for_states(
                self.url, ids, frozenset({"AWAITING_APPROVAL"}), 900, progress
            )
            time.sleep(1)  # let every process settle before reading its memory
            held = cluster.memory_now(group, self.postmaster_pid)
            backends = self._backends()
            by_worker = self._waiting_by_executor(ids)
            progress(f"all {count} waiting after {all_waiting - began:.1f} s; {held}")
            approving = time.time()
            cluster.approve_all(group.api, ids, self.config.http_clients, progress)
            approved = time.time()
            done = cluster.wait_for_states(self.url, ids, frozenset({"COMPLETED"}), 900, progress)
            peak = group.peak_rss_mb()
            per_process = {
                process.env.get("EXECUTOR_ID", "api"): peak_rss_mb(process.pid)
                for process in group.processes
            }
        finally:
            group.stop()
        return {
            "sagas": count,
            "seconds_to_all_waiting": round(all_waiting - began, 2),
            "idle_memory": idle,
            "waiting_memory": held,
            "waiting_by_worker": by_worker,
            "postgres_connections": backends,
            "app_rss_per_waiting_saga_kb": round(
                (held["app_rss_mb"] - idle["app_rss_mb"]) * 1024 / count, 1
            ),
            "approve_calls_seconds": round(approved - approving, 2),
            "seconds_to_all_completed": round(done - approving, 2),
            "approvals_per_second": round(count / (done - approving), 1),
            "peak_rss_mb": peak,
            "peak_rss_mb_by_process": per_process,
        }

    def _backends(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
        return int(row[0]) - 1 if row else 0  # not this one

    def _waiting_by_executor(self, order_ids: list[str]) -> dict[str, int]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                """SELECT w.executor_id, count(*) FROM orders.orders o
                     JOIN dbos.workflow_status w ON w.workflow_uuid = o.saga_id
                    WHERE o.order_id = ANY(%s) GROUP BY w.executor_id""",
                (order_ids,),
            ).fetchall()
        return {str(executor): int(n) for executor, n in rows}


class TraceSink:
    """A local OTLP/HTTP endpoint for (f): it takes the batches of spans and keeps only
    their count and size, as a collector on the same machine would take them."""

    def __init__(self) -> None:
        sink = self
        self.batches = 0  # export requests, each a batch of spans
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.batches += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def prepare(url: str) -> None:
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        inventory.put_item(conn, SKU, 1_000_000_000, 900)


def run(config: Config, on_start: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every measure; the results by name. `on_start` gets the database URL first."""
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    pg = CrashablePostgres(workdir)
    pg.start()
    say(f"bench: PostgreSQL in {workdir}; {config.seconds:g} s per configuration")
    results: dict[str, Any] = {}
    try:
        if on_start is not None:
            on_start(pg.url)
        bench = Bench(config, pg)
        sink = TraceSink()
        # (a) has the metrics on and the log quiet (LOG_LEVEL=WARNING), as (c) and (d); the
        # (f) runs are the same saga with everything it can be seen by off, then on.
        observed = {"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
        in_process: tuple[tuple[str, str, dict[str, str]], ...] = (
            ("saga", "a_saga", {}),
            ("choreography", "a_choreography", {}),
            ("floor", "c_floor", {}),
            ("plain", "d_plain", {}),
            ("saga", "f_all_off", {"METRICS": "false"}),
            ("saga", "f_metrics_logs", {**observed, "BENCH_LOG_FILE": str(workdir / "f.log")}),
            (
                "saga",
                "f_traced",
                {
                    **observed,
                    "BENCH_LOG_FILE": str(workdir / "f.log"),
                    "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                },
            ),
        )
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for _, name, _ in in_process}
        for _, name, _ in in_process:
            bench.use_database(name)
        # Rounds taken in turn, so that a slow spell of the machine hits all of them alike;
        # the round with the median rate stands for each.
        for number in range(1, config.rounds + 1):
            for kind, name, env in in_process:
                say(f"{name}: in one process, {config.clients} clients, round {number}")
                bench.use_existing_database(name)
                rounds[name].append(bench.in_process(kind, env))
                say(f"{name}: {rounds[name][-1]['sagas_per_second']} sagas/s")
        sink.stop()
        for _, name, _ in in_process:
            ordered = sorted(rounds[name], key=lambda r: float(r["sagas_per_second"]))
            results[name] = {
                **ordered[len(ordered) // 2],
                "rounds_sagas_per_second": [r["sagas_per_second"] for r in rounds[name]],
                "rounds_cpu_ms_per_saga": [
                    round(r["app_cpu_ms_per_saga"] + r["db_cpu_ms_per_saga"], 2)
                    for r in rounds[name]
                ],
            }
        # Round trips to PostgreSQL per saga, counted by a proxy in the measured process
        # (which it slows down: only the counts of these runs stand).
        results["g_round_trips"] = {}
        for kind, name in (("saga", "orchestration"), ("choreography", "choreography")):
            say(f"g_round_trips: {name}, through a counting proxy")
            bench.use_database(f"g_round_trips_{name}")
            counted = bench.in_process(kind, {"BENCH_ROUND_TRIPS": "1"})
            results["g_round_trips"][name] = {
                **counted["round_trips_per_saga"],
                "counted": counted["round_trips"],
                "sagas": counted["sagas"],
                "failures": counted["failures"],
            }
            say(f"g_round_trips: {name}: {counted['round_trips_per_saga']}")
        say("f_calls: what each metric and log call costs")
        results["f_calls"] = bench.observe_calls()
        results["f_traced"]["trace_batches_received"] = sink.batches
        results["f_traced"]["trace_bytes_received"] = sink.bytes
        for coordination, suffix in (("orchestration", ""), ("choreography", "_choreography")):
            for workers in (1, 2):
                name = f"b_http_{workers}_worker{'s' if workers > 1 else ''}{suffix}"
                say(f"{name}: over HTTP, 1 API process and {workers} worker(s), {coordination}")
                bench.use_database(name)
                results[name] = bench.over_http(workers, coordination)
                say(f"{name}: {results[name]['sagas_per_second']} sagas/s")
        say("e_make_run: `make run`, clients POSTing with ?wait=")
        bench.use_database("e_make_run")
        results["e_make_run"] = bench.made_run()
        for clients in config.wait_clients:
            rate = results["e_make_run"][f"clients_{clients}"]["sagas_per_second"]
            say(f"e_make_run: {clients} clients, {rate} sagas/s")
        say(f"recovery: {config.recovery_sagas} sagas, everything killed mid-flight")
        bench.use_database("recovery")
        results["recovery"] = bench.recovery()
        say(f"waiting: {config.waiting_sagas} sagas waiting for approval")
        bench.use_database("waiting")
        results["waiting"] = bench.waiting()
    finally:
        pg.stop(delete=True)
    return results
