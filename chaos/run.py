"""The chaos run: a mixed workload over HTTP while the service is SIGKILLed, PostgreSQL
crashes and the network between them misbehaves, then a count of what was lost, done twice,
or left stuck.

Everything is real: the service is `python -m api` in a subprocess, the database is an
embedded PostgreSQL of the run's own (chaos/postgres.py), reached through a fault proxy
(chaos/faultproxy.py, driven by chaos/network.py), and clients speak HTTP. Every order
the API accepted (202) must end COMPLETED or FAILED, and the audit (orders/audit.py) must
find every effect matching its saga's final state. Each order is orchestrated or
choreographed (half of each, CHAOS_CHOREOGRAPHY sets the share), and the count is given for
each coordination as well as in all.
"""

import itertools
import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from chaos import network
from chaos.faultproxy import FaultProxy
from chaos.network import NetworkSaboteur
from chaos.postgres import CrashablePostgres
from chaos.service import ServiceProcess, environment_without_knobs
from orders.audit import Report, audit
from orders.model import COMPENSATION_OF, COORDINATIONS, FORWARD_STEPS, TERMINAL_STATES

APPROVAL_TIMEOUT_SECONDS = 6
# The service's knobs for the run: every call slow, few tries, so faults really exhaust
# steps and compensations, and big orders wait for approval (and some time out).
SERVICE_ENV = {
    "PARTICIPANT_LATENCY_MS": "20",
    "STEP_ATTEMPTS": "3",
    "COMPENSATION_ATTEMPTS": "3",
    "RETRY_BACKOFF_SECONDS": "0.2",
    "STEP_TIMEOUT_SECONDS": "2",
    "APPROVAL_THRESHOLD_CENTS": "100000",
    "APPROVAL_TIMEOUT_SECONDS": str(APPROVAL_TIMEOUT_SECONDS),
    "DB_WAIT_SECONDS": "2",
    "EXECUTOR_LOCK_WAIT_SECONDS": "30",
    "SEED_DEMO_CATALOG": "false",
    "LOG_LEVEL": "WARNING",
}
OPERATIONS = (*FORWARD_STEPS, *COMPENSATION_OF)
MIN_SECONDS_FOR_COVERAGE = 60
CLIENT_TIMEOUT = 15.0  # no call may take longer: the API answers 503 within DB_WAIT_SECONDS
SKUS = {f"CHAOS-{c}": 1_000_000 for c in "ABCDE"}
SCARCE = "CHAOS-SCARCE"  # runs out during the run: later orders for it fail to reserve
BIG = "CHAOS-TURBINE"  # one of these costs more than the approval threshold
ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345"}

# What each kind of order is, and whether it may end COMPLETED (faults and cancels can make
# any order fail, so "may" is all that can be said of most).
KINDS: dict[str, tuple[int, bool]] = {  # kind -> (weight, may complete)
    "visa": (30, True),
    "flaky": (8, True),
    "declined": (5, False),
    "insufficient": (3, False),
    "unknown_sku": (3, False),
    "scarce": (6, True),
    "unserved_country": (5, False),
    "bounce": (5, False),
    "cancel": (8, True),
    "approve": (5, True),
    "reject": (3, False),
    "approval_timeout": (2, False),
    "cancel_while_waiting": (2, False),
}


@dataclass
class Config:
    seconds: float = 180.0
    clients: int = 4
    seed: int | None = None
    kill_gap: tuple[float, float] = (4.0, 12.0)  # seconds between two kills of the service
    db_crashes: int | None = None  # default: one per 90 s, at least one
    db_down: tuple[float, float] = (2.0, 6.0)  # seconds the database stays down
    fault_gap: tuple[float, float] = (1.0, 4.0)
    net_gap: tuple[float, float] = (1.0, 3.0)  # seconds between two network faults
    processes: int | None = None  # the service's PROCESSES (None: its default, one per core)
    drain_seconds: float = 240.0  # at the end, how long sagas get to finish
    workdir: Path | None = None
    keep: bool = False  # keep the database even after a clean run
    choreography: float = 0.5  # the share of orders placed with "coordination": "choreography"

    @classmethod
    def from_env(cls) -> "Config":
        seed = os.environ.get("CHAOS_SEED")
        return cls(
            seconds=float(os.environ.get("CHAOS_SECONDS", "180")),
            clients=int(os.environ.get("CHAOS_CLIENTS", "4")),
            seed=int(seed) if seed else None,
            keep=os.environ.get("CHAOS_KEEP", "") not in ("", "0", "false"),
            choreography=float(os.environ.get("CHAOS_CHOREOGRAPHY", "0.5")),
        )


@dataclass
class Placed:
    order_id: str
    kind: str
    key: str
    saga_id: str
    coordination: str


@dataclass
class Tally:
    """The count of one coordination's sagas."""

    sagas: int = 0
    states: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    wrong: int = 0

    def line(self, coordination: str) -> str:
        states = ", ".join(f"{s} {n}" for s, n in sorted(self.states.items()))
        return (
            f"  {coordination:<14} {self.sagas} sagas ({states or 'none'}): {self.lost} lost, "
            f"{self.duplicated} duplicated, {self.stuck} stuck, {self.wrong} wrong outcomes"
        )


@dataclass
class Result:
    seconds: float
    sagas: int
    states: Counter[str]
    kills: int
    db_restarts: int
    network: Counter[str]  # the network faults that struck, by kind (chaos/network.py)
    lost: int
    duplicated: int
    stuck: int
    wrong: int
    problems: list[str]
    posts: int
    post_503: int
    starting_503: int  # of post_503: answered while the service started (runtime/starting.py)
    slowest_503: float
    workdir: Path
    coverage: dict[str, Counter[str]] = field(default_factory=dict)
    unexercised: list[str] = field(default_factory=list)  # kinds of order never placed
    by_coordination: dict[str, Tally] = field(default_factory=dict)
    styles_placed: set[tuple[str, str]] = field(default_factory=set)  # (kind, coordination)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.stuck or self.wrong or self.unexercised)

    def coverage_lines(self) -> list[str]:
        """What the run exercised: each kind of order and how its sagas ended."""
        return [
            f"  {kind:<21} " + ", ".join(f"{s} {n}" for s, n in sorted(ends.items()))
            for kind, ends in sorted(self.coverage.items())
        ]

    def coordination_lines(self) -> list[str]:
        """The count for each coordination (orders of any other origin are in the total)."""
        return [self.by_coordination.get(c, Tally()).line(c) for c in COORDINATIONS]

    def summary(self) -> str:
        states = ", ".join(f"{s} {n}" for s, n in sorted(self.states.items()))
        return (
            f"chaos: {self.seconds:.0f} s, {self.sagas} sagas ({states}), {self.kills} kills, "
            f"{self.db_restarts} database restarts, {network.describe(self.network)}, "
            f"{self.lost} lost, "
            f"{self.duplicated} duplicated, {self.stuck} stuck, {self.wrong} wrong outcomes; "
            f"{self.posts} POSTs, {self.post_503} answered 503 ({self.starting_503} while the "
            f"service started; slowest {self.slowest_503:.1f} s)"
            + (f"; never exercised: {', '.join(self.unexercised)}" if self.unexercised else "")
        )


@dataclass
class Shared:
    """What the threads of the run share."""

    service: ServiceProcess
    rng: random.Random
    stop_load: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    placed: dict[str, Placed] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    posts: int = 0
    post_503: int = 0
    starting_503: int = 0
    slowest_503: float = 0.0
    kills: int = 0
    db_restarts: int = 0
    faults_down: set[str] = field(default_factory=set)
    must_fail: set[str] = field(default_factory=set)  # a cancel or a reject was accepted
    # Every (kind, coordination) is placed once first, in a random order, so that a short
    # or slow run places every kind in every style; then kinds are drawn by their weights.
    first: list[tuple[str, str]] = field(default_factory=list)

    def next_first(self) -> tuple[str, str] | None:
        with self.lock:
            return self.first.pop() if self.first else None

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def log(text: str) -> None:
    print(text, flush=True)


def run(config: Config) -> Result:
    """One chaos run; its result (the caller prints the summary and sets the exit code)."""
    rng = random.Random(config.seed)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="saga-chaos-"))
    pg = CrashablePostgres(workdir)
    url = pg.start()
    proxy = FaultProxy(url).start()
    processes = {} if config.processes is None else {"PROCESSES": str(config.processes)}
    service = ServiceProcess(
        proxy.url_for(url), base_env={**environment_without_knobs(), **SERVICE_ENV, **processes}
    )
    shared = Shared(service=service, rng=rng)
    shared.first = [(kind, style) for kind in KINDS for style in _styles(config)]
    rng.shuffle(shared.first)
    saboteur = NetworkSaboteur(proxy, rng, config.net_gap)
    started = time.monotonic()
    result: Result | None = None
    try:
        service.start()
        _stock_up(service.url)
        # The load's clock starts once the service is up: a first start slowed down by a
        # busy machine (the suite's other workers) must not eat the run's seconds.
        started = time.monotonic()
        log(f"chaos: {config.seconds:.0f} s of load, data in {workdir}, log {service.log}")
        threads = [
            threading.Thread(
                target=_client, args=(shared, i, config), name=f"client-{i}", daemon=True
            )
            for i in range(config.clients)
        ]
        threads.append(threading.Thread(target=_approver, args=(shared,), daemon=True))
        threads.append(threading.Thread(target=_fault_flipper, args=(shared, config), daemon=True))
        threads.append(threading.Thread(target=_operator, args=(shared,), daemon=True))
        for thread in threads:
            thread.start()
        saboteur.start()
        _disrupt(shared, pg, config, started)
        saboteur.stop()
        _check_alive(shared)
        shared.stop_load.set()
        for thread in threads:
            thread.join(timeout=120)
        log("chaos: load stopped; repairing every fault and letting every saga finish")
        _repair_all(service.url)
        states = _drain(shared, url, config.drain_seconds)
        _check_alive(shared)
        with psycopg.connect(url, autocommit=True) as conn:
            report = audit(conn)
            result = _result(shared, conn, report, states, time.monotonic() - started, workdir)
            result.network = saboteur.counts()
        if config.seconds >= MIN_SECONDS_FOR_COVERAGE:  # long enough to place every kind
            result.unexercised = sorted(
                f"{kind} ({c})"
                for kind in KINDS
                for c in _styles(config)
                if (kind, c) not in result.styles_placed
            )
    finally:
        saboteur.stop()
        service.stop()
        proxy.stop()
        keep = config.keep or result is None or not result.clean
        pg.stop(delete=not keep)
        if keep:
            log(f"chaos: database kept in {workdir}; service log {service.log}")
    return result


def _stock_up(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT) as client:
        for sku, count in SKUS.items():
            client.put(
                f"/inventory/{sku}", json={"available": count, "price_cents": 1500}
            ).raise_for_status()
        client.put(
            f"/inventory/{SCARCE}", json={"available": 25, "price_cents": 900}
        ).raise_for_status()
        client.put(
            f"/inventory/{BIG}", json={"available": 1_000_000, "price_cents": 150_000}
        ).raise_for_status()


# --- the workload ------------------------------------------------------------------------


def _order(kind: str, rng: random.Random) -> dict[str, Any]:
    items = [
        {"sku": sku, "quantity": rng.randint(1, 3)}
        for sku in rng.sample(sorted(SKUS), rng.randint(1, 3))
    ]
    body: dict[str, Any] = {
        "customer_id": f"c-{rng.randint(1, 500)}",
        "customer_email": "ada@example.com",
        "items": items,
        "payment_method": "pm_card_visa",
        "shipping_address": {**ADDRESS, "country": rng.choice(["US", "GB", "DE", "FR"])},
    }
    if kind == "flaky":
        body["payment_method"] = "pm_card_flaky"
    elif kind == "declined":
        body["payment_method"] = "pm_card_declined"
    elif kind == "insufficient":
        body["payment_method"] = "pm_card_insufficient_funds"
    elif kind == "unknown_sku":
        body["items"] = [{"sku": f"NOPE-{rng.randint(1, 99)}", "quantity": 1}]
    elif kind == "scarce":
        body["items"] = [{"sku": SCARCE, "quantity": rng.randint(1, 3)}]
    elif kind == "unserved_country":
        body["shipping_address"]["country"] = "AQ"
    elif kind == "bounce":
        body["customer_email"] = "ada@bounce.test"
    elif kind in ("approve", "reject", "approval_timeout", "cancel_while_waiting"):
        body["items"] = [{"sku": BIG, "quantity": 1}]
    return body


def _share(coordination: str, config: Config) -> float:
    return config.choreography if coordination == "choreography" else 1 - config.choreography


def _styles(config: Config) -> list[str]:
    """The coordinations this run places orders in."""
    return [c for c in COORDINATIONS if _share(c, config) > 0]


def _client(shared: Shared, number: int, config: Config) -> None:
    """Places orders until the load stops; each is POSTed until the API answers it."""
    rng = random.Random(shared.rng.random())
    kinds, weights = zip(*((k, w) for k, (w, _) in KINDS.items()), strict=True)
    with httpx.Client(base_url=shared.service.url, timeout=CLIENT_TIMEOUT) as client:
        while not shared.stop_load.is_set():
            if (first := shared.next_first()) is not None:
                kind, style = first
            else:
                kind = rng.choices(kinds, weights)[0]
                choreographed = rng.random() < config.choreography
                style = "choreography" if choreographed else "orchestration"
            key = f"chaos-{uuid.uuid4().hex}"
            body = _order(kind, rng)
            if style != "orchestration":  # the default, left out as most clients do
                body["coordination"] = style
            answer = _post_until_answered(shared, client, key, body)
            if answer is None:
                continue
            placed = Placed(answer["order_id"], kind, key, answer["saga_id"], style)
            with shared.lock:
                shared.placed[placed.order_id] = placed
            if rng.random() < 0.15:  # a client that did not hear the answer sends it again
                again = _post_until_answered(shared, client, key, body)
                if again is not None and again["saga_id"] != placed.saga_id:
                    shared.problem(
                        f"duplicated: key {key} gave two sagas (order {placed.order_id})"
                    )
            if kind == "cancel":
                time.sleep(rng.uniform(0, 0.4))
                _control(shared, client, placed.order_id, "cancel")


def _post_until_answered(
    shared: Shared, client: httpx.Client, key: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    """POST the order (same key every time) until the API gives a real answer."""
    while True:
        started = time.monotonic()
        try:
            response = client.post("/orders", json=body, headers={"Idempotency-Key": key})
        except httpx.TimeoutException:
            shared.problem(f"hung: POST /orders (key {key}) had no answer in {CLIENT_TIMEOUT} s")
            continue
        except httpx.TransportError:  # the service is down (killed): try again
            time.sleep(0.2)
            continue
        took = time.monotonic() - started
        with shared.lock:
            shared.posts += 1
            if response.status_code == 503:
                shared.post_503 += 1
                shared.starting_503 += "starting" in response.text
                shared.slowest_503 = max(shared.slowest_503, took)
        if response.status_code in (200, 202):
            answer: dict[str, Any] = response.json()
            return answer
        if response.status_code == 503:
            time.sleep(0.2)
            continue
        shared.problem(f"POST /orders answered {response.status_code}: {response.text[:200]}")
        return None


def _control(shared: Shared, client: httpx.Client, order_id: str, action: str) -> None:
    """approve / reject / cancel / retry-compensation; 409 (too late) is a fine answer."""
    while True:
        try:
            response = client.post(f"/orders/{order_id}/{action}")
        except httpx.TimeoutException:
            shared.problem(f"hung: {action} {order_id} had no answer in {CLIENT_TIMEOUT} s")
            continue
        except httpx.TransportError:  # the service is down (killed): try again
            time.sleep(0.2)
            continue
        if response.status_code == 503:
            time.sleep(0.2)
            continue
        if response.status_code == 202 and action in ("cancel", "reject"):
            with shared.lock:
                shared.must_fail.add(order_id)  # accepted: it can never end COMPLETED
        elif response.status_code not in (202, 409):
            shared.problem(f"{action} {order_id} answered {response.status_code}")
        return


def _approver(shared: Shared) -> None:
    """Decides the orders waiting for approval as their kind says (or lets them time out)."""
    decided: set[str] = set()
    with httpx.Client(base_url=shared.service.url, timeout=CLIENT_TIMEOUT) as client:
        while not shared.stop_load.is_set():
            time.sleep(0.3)
            try:
                response = client.get("/orders", params={"state": "AWAITING_APPROVAL"})
            except httpx.HTTPError:
                continue
            if response.status_code != 200:
                continue
            for summary in response.json()["orders"]:
                order_id = summary["order_id"]
                with shared.lock:
                    placed = shared.placed.get(order_id)
                if placed is None or order_id in decided:
                    continue
                action = {
                    "approve": "approve",
                    "reject": "reject",
                    "cancel_while_waiting": "cancel",
                }.get(placed.kind)
                decided.add(order_id)
                if action:
                    _control(shared, client, order_id, action)


def _fault_flipper(shared: Shared, config: Config) -> None:
    """Takes a random operation down (or makes it slow) for a while, again and again."""
    rng = random.Random(shared.rng.random())
    with httpx.Client(base_url=shared.service.url, timeout=CLIENT_TIMEOUT) as client:
        while not shared.stop_load.wait(rng.uniform(*config.fault_gap)):
            operation = rng.choice(OPERATIONS)
            slow = rng.random() < 0.25
            switch = {"down": False, "latency_ms": 2500} if slow else {"down": True}
            if _put_fault(client, operation, switch):
                with shared.lock:
                    shared.faults_down.add(operation)
            shared.stop_load.wait(rng.uniform(0.5, 4.0))
            if _put_fault(client, operation, {"down": False}):
                with shared.lock:
                    shared.faults_down.discard(operation)


def _put_fault(client: httpx.Client, operation: str, switch: dict[str, Any]) -> bool:
    """Set a switch, retrying while the service restarts (a repair must not be lost)."""
    for _ in range(300):
        try:
            if client.put(f"/faults/{operation}", json=switch).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _operator(shared: Shared) -> None:
    """Now and then retries the compensations of parked sagas, as an operator would."""
    with httpx.Client(base_url=shared.service.url, timeout=CLIENT_TIMEOUT) as client:
        while not shared.stop_load.wait(5.0):
            for order_id in _parked(client):
                _control(shared, client, order_id, "retry-compensation")


def _parked(client: httpx.Client) -> list[str]:
    try:
        response = client.get("/orders", params={"state": "COMPENSATION_FAILED", "limit": 1000})
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    return [summary["order_id"] for summary in response.json()["orders"]]


# --- the disruptions ---------------------------------------------------------------------


def _disrupt(shared: Shared, pg: CrashablePostgres, config: Config, started: float) -> None:
    """Until the time is up: SIGKILL and restart the service at random moments, and crash
    the database (every server process SIGKILLed) a few times, evenly spread. Every planned
    crash happens: one that a slow restart pushed past the end comes right after it, while
    the load still runs."""
    rng = shared.rng
    crashes = config.db_crashes or max(1, round(config.seconds / 90))
    crash_at = [config.seconds * (i + 0.5) / crashes for i in range(crashes)]
    next_kill = rng.uniform(*config.kill_gap) / 2
    last_report = 0.0
    while (elapsed := time.monotonic() - started) < config.seconds or crash_at:
        if crash_at and elapsed >= crash_at[0]:
            crash_at.pop(0)
            down = rng.uniform(*config.db_down)
            log(f"chaos: t={elapsed:.0f}s crashing PostgreSQL for {down:.1f} s")
            pg.crash()
            time.sleep(down)
            pg.start_again()
            shared.db_restarts += 1
        elif config.seconds > elapsed >= next_kill:
            _check_alive(shared)
            shared.service.kill()
            shared.kills += 1
            time.sleep(rng.uniform(0, 1.0))
            _restart(shared.service)
            next_kill = time.monotonic() - started + rng.uniform(*config.kill_gap)
        if elapsed - last_report >= 10:
            last_report = elapsed
            with shared.lock:
                placed, problems = len(shared.placed), len(shared.problems)
                faulty = ", ".join(sorted(shared.faults_down)) or "none"
            log(
                f"chaos: t={elapsed:.0f}s {placed} sagas placed, {shared.kills} kills, "
                f"{shared.db_restarts} database restarts, faults on: {faulty}, "
                f"{problems} problems"
            )
        time.sleep(0.1)


def _check_alive(shared: Shared) -> None:
    """The service must only ever die by our hand: an exit of its own is a problem."""
    if not shared.service.running():
        shared.problem(
            f"died: the service exited by itself (code {shared.service.returncode}):\n"
            + shared.service.tail(30)
        )


def _restart(service: ServiceProcess) -> None:
    for attempt in itertools.count(1):
        try:
            service.start(timeout=90)
            return
        except (RuntimeError, TimeoutError):
            if attempt >= 5:
                raise
            log(f"chaos: the service did not start (attempt {attempt}); again")
            time.sleep(1)


def _repair_all(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT) as client:
        for operation in OPERATIONS:
            client.put(f"/faults/{operation}", json={"down": False}).raise_for_status()


def _drain(shared: Shared, url: str, seconds: float) -> Counter[str]:
    """Wait for every saga to end; retry parked compensations now that all is repaired."""
    deadline = time.monotonic() + seconds
    query = "SELECT state, count(*) FROM orders.orders GROUP BY state"
    with (
        psycopg.connect(url, autocommit=True) as conn,
        httpx.Client(base_url=shared.service.url, timeout=30) as client,
    ):
        while True:
            states: Counter[str] = Counter(dict(conn.execute(query).fetchall()))
            unfinished = sum(n for s, n in states.items() if s not in TERMINAL_STATES)
            if not unfinished or time.monotonic() > deadline:
                return states
            for order_id in _parked(client):
                _control(shared, client, order_id, "retry-compensation")
            time.sleep(1.0)


# --- the count ---------------------------------------------------------------------------


def _result(
    shared: Shared,
    conn: psycopg.Connection[Any],
    report: Report,
    states: Counter[str],
    seconds: float,
    workdir: Path,
) -> Result:
    stored = dict(conn.execute("SELECT order_id, state FROM orders.orders").fetchall())
    style_of = dict(conn.execute("SELECT order_id, coordination FROM orders.orders").fetchall())
    with shared.lock:
        placed_orders = dict(shared.placed)
        must_fail = set(shared.must_fail)
    coverage: dict[str, Counter[str]] = {}
    for order_id, parked, cancelled, decision in conn.execute(
        """SELECT order_id, parked_count > 0, cancel_requested_at IS NOT NULL, decision
             FROM orders.orders"""
    ):
        placed_kind = placed_orders[order_id].kind if order_id in placed_orders else "unknown"
        ends = coverage.setdefault(placed_kind, Counter())
        ends[stored[order_id]] += 1
        ends["parked, then retried"] += parked
        ends["cancelled"] += cancelled
        if decision:
            ends[decision] += 1
    problems = list(shared.problems) + report.violations
    lost, stuck = set(report.flagged["lost"]), set(report.flagged["stuck"])
    duplicated = len(report.flagged["duplicated"]) + sum(
        p.startswith("duplicated") for p in shared.problems
    )
    wrong = sum(not p.startswith("duplicated") for p in shared.problems)  # answers not allowed
    wrong_orders: list[str] = []
    for order_id in sorted(set(stored) - set(placed_orders)):
        if stored[order_id] not in TERMINAL_STATES:  # stored, never answered: still counted
            stuck.add(order_id)
            problems.append(f"stuck: order {order_id} (never answered) is {stored[order_id]}")
    for order_id, placed in placed_orders.items():
        state = stored.get(order_id)
        if state is None:
            lost.add(order_id)
            problems.append(f"lost: order {order_id} was accepted (202) but is not stored")
        elif state not in TERMINAL_STATES:
            stuck.add(order_id)
            problems.append(f"stuck: order {order_id} ({placed.kind}) is still {state}")
        elif state == "COMPLETED" and (not KINDS[placed.kind][1] or order_id in must_fail):
            wrong += 1
            wrong_orders.append(order_id)
            problems.append(f"wrong: order {order_id} ({placed.kind}) ended COMPLETED")
    tallies = {c: Tally() for c in COORDINATIONS}
    for order_id, state in stored.items():
        tally = tallies[style_of[order_id]]
        tally.sagas += 1
        tally.states[state] += 1
    for order_id in lost:
        if order_id in style_of:
            tallies[style_of[order_id]].lost += 1
    for order_id in stuck:
        if order_id in style_of:
            tallies[style_of[order_id]].stuck += 1
    for order_id in report.flagged["duplicated"]:
        if order_id in style_of:
            tallies[style_of[order_id]].duplicated += 1
    for order_id in wrong_orders:
        tallies[style_of[order_id]].wrong += 1
    return Result(
        seconds=seconds,
        sagas=len(stored),
        states=states,
        kills=shared.kills,
        db_restarts=shared.db_restarts,
        network=Counter(),
        lost=len(lost),
        duplicated=duplicated,
        stuck=len(stuck),
        wrong=wrong,
        problems=problems,
        posts=shared.posts,
        post_503=shared.post_503,
        starting_503=shared.starting_503,
        slowest_503=shared.slowest_503,
        workdir=workdir,
        coverage={kind: +ends for kind, ends in coverage.items()},
        by_coordination=tallies,
        styles_placed={(p.kind, p.coordination) for p in placed_orders.values()},
    )
