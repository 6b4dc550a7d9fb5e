"""The configurations that run the service as users do, driven over HTTP: an API process that
enqueues and worker processes that run the sagas (`make cluster`), and `make run` with
clients that wait for each saga's end in their POST (`?wait=`)."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import psycopg

from bench.measure import CpuWindow, latency_ms, peak_rss_mb, postgres_memory_mb, rss_mb
from bench.orders import order_body
from chaos.service import ServiceProcess
from orders.model import TERMINAL_STATES

Progress = Callable[[str], None]
T = TypeVar("T")
R = TypeVar("R")
POLL_SECONDS = 0.02  # how often the watcher looks for sagas that ended


class Cluster:
    """One API process (PROCESS_ROLE=api) and `workers` worker processes (w1..wN) on the
    database at `url`, each `python -m api` in a subprocess, with `env` on top of `base_env`."""

    def __init__(self, url: str, workers: int, base_env: dict[str, str], **env: str) -> None:
        self.api = ServiceProcess(url, base_env={**base_env, **env}, PROCESS_ROLE="api")
        self.workers = [
            ServiceProcess(
                url, base_env={**base_env, **env}, PROCESS_ROLE="worker", EXECUTOR_ID=f"w{n}"
            )
            for n in range(1, workers + 1)
        ]

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.api, *self.workers]

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def start(self) -> None:
        """Start every process at once (as `make cluster` does) and wait until all answer."""
        with ThreadPoolExecutor(len(self.processes)) as pool:
            list(pool.map(lambda process: process.start(), self.processes))

    def kill(self) -> None:
        for process in self.processes:
            process.kill()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def rss_mb(self) -> float:
        return round(sum(rss_mb(pid) for pid in self.pids()), 1)

    def peak_rss_mb(self) -> float:
        return round(sum(peak_rss_mb(pid) for pid in self.pids()), 1)


@dataclass
class Ended:
    state: str
    at: float  # epoch seconds, from the order row's updated_at (the database's clock)


# A choreographed saga ends with its last event (the order service's OrderCompleted or
# OrderFailed, one hop after the order row says COMPLETED or FAILED): the work it still does
# then is part of its cost, so its end is that event's time.
END_EVENTS = {"OrderCompleted": "COMPLETED", "OrderFailed": "FAILED"}


@dataclass
class Watcher:
    """Tells when sagas end, by polling their order rows, or a choreographed saga's end
    events (one query for all of them), so that clients need not poll the API and load it."""

    url: str
    choreographed: bool = False
    ended: dict[str, Ended] = field(default_factory=dict)
    _waiting: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self, order_id: str) -> threading.Event:
        with self._lock:
            event = self._waiting[order_id] = threading.Event()
        return event

    def outstanding(self) -> int:
        with self._lock:
            return len(self._waiting)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(POLL_SECONDS):
                with self._lock:
                    ids = list(self._waiting)
                if not ids:
                    continue
                rows = self._ended(conn, ids)
                with self._lock:
                    for order_id, state, at in rows:
                        self.ended[order_id] = Ended(state, at)
                        self._waiting.pop(order_id).set()

    def _ended(self, conn: psycopg.Connection[Any], ids: list[str]) -> list[tuple[Any, ...]]:
        if self.choreographed:
            rows = conn.execute(
                """SELECT order_id, type, extract(epoch FROM at)::float8 FROM orders.events
                    WHERE order_id = ANY(%s) AND type = ANY(%s)""",
                (ids, sorted(END_EVENTS)),
            ).fetchall()
            return [(order_id, END_EVENTS[event], at) for order_id, event, at in rows]
        return conn.execute(
            """SELECT order_id, state, extract(epoch FROM updated_at)::float8
                 FROM orders.orders WHERE order_id = ANY(%s) AND state = ANY(%s)""",
            (ids, sorted(TERMINAL_STATES)),
        ).fetchall()

    @contextmanager
    def running(self) -> Iterator["Watcher"]:
        thread = threading.Thread(target=self.run, name="bench-watcher", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)


SENDERS = 32  # threads sending the open loop's requests


def shared_client(base_url: str) -> httpx.Client:
    """One client for all of a measure's threads (httpx clients are thread-safe), made before
    anything is timed: making one costs milliseconds of the driver's CPU."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.Client(base_url=base_url, timeout=60, limits=limits)


@dataclass
class Sent:
    order_id: str
    sent_at: float  # epoch seconds
    post_seconds: float
    status: int


def post_order(client: httpx.Client, body: dict[str, Any]) -> Sent:
    sent_at, began = time.time(), time.perf_counter()
    response = client.post("/orders", json=body)
    return Sent(body["order_id"], sent_at, time.perf_counter() - began, response.status_code)


def closed_loop(
    client: Callable[[], None],
    clients: int,
    window: tuple[float, float],
    app_pids: list[int],
    postmaster_pid: int,
    report: Callable[[], None],
) -> tuple[float, float]:
    """Run `clients` threads of `client` (each loops until the window's end) and measure the
    window (time.time() values): (app CPU seconds, PostgreSQL CPU seconds) spent in it.
    `report` is called every 5 s; a client's exception is raised here."""
    measure_from, measure_until = window
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        time.sleep(max(0.0, measure_from - time.time()))
        cpu = CpuWindow(app_pids, postmaster_pid).start()
        while time.time() < measure_until:
            time.sleep(min(5.0, max(0.0, measure_until - time.time())))
            report()
        app_cpu, db_cpu = cpu.stop()
        for future in futures:
            future.result()
    return app_cpu, db_cpu


def saturate(
    cluster: Cluster,
    url: str,
    postmaster_pid: int,
    sku: str,
    clients: int,
    warmup: float,
    seconds: float,
    progress: Progress,
    coordination: str = "orchestration",
) -> dict[str, Any]:
    """Closed loop: `clients` clients each POST an order and wait until its saga ends, again
    and again. Measured over `seconds` after `warmup`: the cluster's capacity."""
    choreographed = coordination == "choreography"
    sent: list[Sent] = []
    lock = threading.Lock()
    measure_from = time.time() + warmup
    measure_until = measure_from + seconds
    with Watcher(url, choreographed).running() as watcher, shared_client(cluster.api.url) as http:

        def client() -> None:
            while time.time() < measure_until:
                body = order_body(sku, coordination=coordination)
                event = watcher.watch(body["order_id"])
                one = post_order(http, body)
                if one.status != 202 or not event.wait(timeout=120):
                    raise RuntimeError(f"order {one.order_id}: {one.status}, or never ended")
                with lock:
                    sent.append(one)

        app_cpu, db_cpu = closed_loop(
            client, clients, (measure_from, measure_until), cluster.pids(), postmaster_pid,
            lambda: progress(f"{len(sent)} sagas done"),
        )  # fmt: skip
        ended = watcher.ended
    # The sagas that ended in the window (begun in it or in the warm-up, under the same
    # load): its rate, and its CPU per saga. Counting only those begun in it too would
    # leave out about latency / window of them.
    measured = [one for one in sent if measure_from <= ended[one.order_id].at <= measure_until]
    return {
        "clients": clients,
        "seconds": seconds,
        "sagas": len(measured),
        "failures": sum(ended[one.order_id].state != "COMPLETED" for one in sent),
        "sagas_per_second": round(len(measured) / seconds, 2),
        "saga_latency": latency_ms([ended[one.order_id].at - one.sent_at for one in measured]),
        "post_latency": latency_ms([one.post_seconds for one in measured]),
        "app_cpu_ms_per_saga": round(app_cpu / max(len(measured), 1) * 1000, 2),
        "db_cpu_ms_per_saga": round(db_cpu / max(len(measured), 1) * 1000, 2),
    }


WAIT_SECONDS = 30  # POST /orders?wait=30, as ../shared/peers does
FAILING_EVERY = 6  # one order in six compensates, as in ../shared/peers (1,000 + 200)


def waited(
    service: ServiceProcess,
    postmaster_pid: int,
    sku: str,
    clients: int,
    warmup: float,
    seconds: float,
    progress: Progress,
) -> dict[str, Any]:
    """Closed loop, the way users call the service: `clients` clients each POST an order
    with `?wait=` and read its end from the answer, again and again; one order in
    FAILING_EVERY compensates. Measured over `seconds` after `warmup`. Latency is the POST's,
    as the client sees it; every answer must carry the end its order must reach."""
    done: list[tuple[float, float, float]] = []  # (sent at, answered at, seconds)
    wrong: list[str] = []
    lock = threading.Lock()
    numbers = iter(range(10**9))
    measure_from = time.time() + warmup
    measure_until = measure_from + seconds
    with shared_client(service.url) as http:

        def client() -> None:
            while time.time() < measure_until:
                with lock:
                    failing = next(numbers) % FAILING_EVERY == FAILING_EVERY - 1
                body = order_body(sku, failing=failing)
                sent_at, began = time.time(), time.perf_counter()
                response = http.post("/orders", params={"wait": WAIT_SECONDS}, json=body)
                took = time.perf_counter() - began
                state = response.json().get("state") if response.status_code == 200 else None
                with lock:
                    if state != ("FAILED" if failing else "COMPLETED"):
                        wrong.append(f"{body['order_id']}: {response.status_code} {state}")
                    done.append((sent_at, sent_at + took, took))

        app_cpu, db_cpu = closed_loop(
            client, clients, (measure_from, measure_until), [service.pid], postmaster_pid,
            lambda: progress(f"{len(done)} sagas done"),
        )  # fmt: skip
    # The sagas whose answers came in the window: what the window's CPU time was spent on.
    measured = [took for _, ended, took in done if measure_from <= ended <= measure_until]
    return {
        "clients": clients,
        "seconds": seconds,
        "sagas": len(measured),
        "failing_share": round(1 / FAILING_EVERY, 3),
        "failures": len(wrong),
        "failure_examples": wrong[:3],
        "sagas_per_second": round(len(measured) / seconds, 2),
        "saga_latency": latency_ms(measured),
        "app_cpu_ms_per_saga": round(app_cpu / max(len(measured), 1) * 1000, 2),
        "db_cpu_ms_per_saga": round(db_cpu / max(len(measured), 1) * 1000, 2),
    }


def steady(
    cluster: Cluster,
    url: str,
    sku: str,
    rate: float,
    seconds: float,
    progress: Progress,
    coordination: str = "orchestration",
) -> dict[str, Any]:
    """Open loop: POST orders at `rate` per second, on schedule whatever the answers, for
    `seconds`; then wait until every saga ended. POST and saga latencies at that load."""
    sent: list[Sent] = []
    lock = threading.Lock()
    choreographed = coordination == "choreography"
    with Watcher(url, choreographed).running() as watcher, shared_client(cluster.api.url) as http:

        def one(body: dict[str, Any]) -> None:
            result = post_order(http, body)
            with lock:
                sent.append(result)

        total = max(1, int(rate * seconds))
        with ThreadPoolExecutor(SENDERS) as pool:
            start = time.perf_counter()
            for n in range(total):
                time.sleep(max(0.0, start + n / rate - time.perf_counter()))
                body = order_body(sku, coordination=coordination)
                watcher.watch(body["order_id"])
                pool.submit(one, body)
                if n and n % max(1, int(rate * 5)) == 0:
                    progress(f"{n} of {total} orders sent")
        deadline = time.monotonic() + 120
        while watcher.outstanding() and time.monotonic() < deadline:
            time.sleep(0.1)
        ended = dict(watcher.ended)
    finished = [one for one in sent if one.order_id in ended]
    return {
        "rate_per_second": round(rate, 2),
        "seconds": seconds,
        "sagas": len(sent),
        "unfinished": len(sent) - len(finished),
        "refused_posts": sum(one.status != 202 for one in sent),
        "saga_latency": latency_ms([ended[one.order_id].at - one.sent_at for one in finished]),
        "post_latency": latency_ms([one.post_seconds for one in sent]),
    }


def each(
    base_url: str,
    items: list[T],
    call: Callable[[httpx.Client, T], R],
    clients: int,
    progress: Progress,
    done_what: str,
) -> list[R]:
    """`call` on every item, `clients` at a time over one HTTP client; progress every 500."""
    done = 0
    lock = threading.Lock()

    def one(item: T) -> R:
        nonlocal done
        result = call(http, item)
        with lock:
            done += 1
            if done % 500 == 0:
                progress(f"{done} of {len(items)} {done_what}")
        return result

    with shared_client(base_url) as http, ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, items))


def place_many(
    api: ServiceProcess, bodies: list[dict[str, Any]], clients: int, progress: Progress
) -> list[Sent]:
    """POST every order, `clients` at a time; each must be accepted."""

    def place(http: httpx.Client, body: dict[str, Any]) -> Sent:
        result = post_order(http, body)
        if result.status != 202:
            raise RuntimeError(f"POST /orders answered {result.status}")
        return result

    return each(api.url, bodies, place, clients, progress, "orders placed")


def approve_all(
    api: ServiceProcess, order_ids: list[str], clients: int, progress: Progress
) -> None:
    """Approve every waiting order, `clients` at a time; each must be accepted."""

    def approve(http: httpx.Client, order_id: str) -> None:
        response = http.post(f"/orders/{order_id}/approve", json={})
        if response.status_code != 202:
            raise RuntimeError(f"approve {order_id}: {response.status_code} {response.text}")

    each(api.url, order_ids, approve, clients, progress, "approved")


def count_states(url: str, order_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM orders.orders WHERE order_id = ANY(%s) GROUP BY state",
            (order_ids,),
        ).fetchall()
    return {str(state): int(n) for state, n in rows}


def wait_for_states(
    url: str,
    order_ids: list[str],
    states: frozenset[str],
    timeout: float,
    progress: Progress,
) -> float:
    """Wait until every order is in one of `states`; the time.time() when that was seen."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        counts = count_states(url, order_ids)
        there = sum(n for state, n in counts.items() if state in states)
        if there == len(order_ids):
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {there} of {len(order_ids)} reached {sorted(states)}")
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            progress(f"{there} of {len(order_ids)} there ({counts})")
        time.sleep(0.05)


def memory_now(cluster: Cluster, postmaster_pid: int) -> dict[str, float]:
    return {
        "app_rss_mb": cluster.rss_mb(),
        "postgres_mb": postgres_memory_mb(postmaster_pid),
    }
