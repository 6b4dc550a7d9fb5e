"""`python -m bench.inprocess`: one in-process configuration, measured in a process of its own.

BENCH_KIND picks what one "saga" is:

- saga: the order saga as the service runs it: the order stored (as POST /orders does),
  then the DBOS workflow of workflows/order_fulfillment.py, waited for;
- floor: DBOS's floor: a workflow of the same shape (four steps, each with its undo, in a
  try/except) whose steps do nothing;
- plain: no durability: the order stored and the same four service operations
  (services/*) called in plain Python, no DBOS, no journal;
- choreography: the order saga choreographed: the order stored with its OrderPlaced event
  (as POST /orders does with "coordination": "choreography"), then waited for until its
  last event (OrderCompleted) is written, by a watcher thread that looks for the end events
  of every order in flight in one query every 20 ms (bench/cluster.py's Watcher).

BENCH_ROUND_TRIPS=1 runs the process's database connections through a counting proxy
(chaos/faultproxy.py, in this process) and adds the round trips per saga, by connection
pool (app, DBOS), to the result: the proxy costs CPU, so only those figures of such a run
mean anything.

BENCH_LOG_FILE, if set, gets the service's log records (`runtime.logs`, in LOG_FORMAT from
LOG_LEVEL up), as `make run` writes them to its standard error.

BENCH_CLIENTS threads each run sagas one after another for BENCH_WARMUP_SECONDS (not
counted), then BENCH_SECONDS (measured). The result is one line of JSON on stdout; progress
goes to stderr. The database (DATABASE_URL) must hold the SKU BENCH_SKU in stock.
"""

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import TypedDict, TypeVar, cast

from dbos import DBOS, SetWorkflowID

from bench.cluster import Watcher
from bench.measure import CpuWindow, latency_ms
from bench.orders import order_body
from chaos.faultproxy import FaultProxy
from orders import intake
from orders.model import Order, idempotency_key
from runtime import database, embedded, lifecycle, logs
from runtime.migrate import migrate
from runtime.settings import get_settings
from services import inventory, notifications, payments, shipping
from workflows import choreography, order_fulfillment

SKU = os.environ.get("BENCH_SKU", "BENCH-ITEM")
T = TypeVar("T")


class Done(TypedDict):
    outcome: str


# --- (c) DBOS's floor: the saga's shape, steps that do nothing --------------------------


@DBOS.step(name="bench_floor_forward")
def forward(order: Order, step: int) -> Done:
    return {"outcome": "done"}


@DBOS.step(name="bench_floor_undo")
def undo(order: Order, step: int) -> Done:
    return {"outcome": "done"}


@DBOS.workflow(name="bench_floor")
def floor_saga(order: Order, policy: order_fulfillment.Policy) -> order_fulfillment.SagaResult:
    done: list[int] = []
    try:
        for step in range(4):
            done.append(step)
            forward(order, step)
    except Exception as failure:
        for step in reversed(done):
            undo(order, step)
        return {"state": "FAILED", "error": str(failure)}
    return {"state": "COMPLETED", "error": None}


# --- one saga of each kind ------------------------------------------------------------


def order_request() -> Order:
    return cast(Order, order_body(SKU))


def run_saga() -> str:
    with database.connection() as conn:
        placement = intake.place(conn, dict(order_request()), None)
    with SetWorkflowID(placement.saga_id):
        handle = DBOS.start_workflow(
            order_fulfillment.order_fulfillment, placement.order, order_fulfillment.policy_now()
        )
    return handle.get_result()["state"]


_watcher: Watcher | None = None  # the choreography kind's


def run_choreography() -> str:
    assert _watcher is not None
    body = order_body(SKU, coordination="choreography")
    ended = _watcher.watch(body["order_id"])
    with database.connection() as conn:
        placement = intake.place(conn, body, None, begin_choreography)
    choreography.begin(placement.saga_id, placement.order)  # as POST /orders does
    if not ended.wait(timeout=120):
        return f"order {body['order_id']} did not end within 120 s"
    return _watcher.ended[body["order_id"]].state


def begin_choreography(conn: database.Connection, placement: intake.Placement) -> None:
    choreography.place(conn, placement.saga_id, placement.order)


def run_floor() -> str:
    order = order_request()
    handle = DBOS.start_workflow(floor_saga, order, order_fulfillment.policy_now())
    return handle.get_result()["state"]


def run_plain() -> str:
    order = once(lambda conn: intake.place(conn, dict(order_request()), None)).order
    order_id = order["order_id"]

    def key(operation: str) -> str:
        return idempotency_key(order_id, operation)

    # One pooled connection per operation, as the saga's steps take them.
    items = [dict(item) for item in order["items"]]
    reservation = once(
        lambda conn: inventory.reserve_inventory(conn, key("reserve_inventory"), order_id, items)
    )
    total = int(reservation["total_cents"])
    method, address = order["payment_method"], dict(order["shipping_address"])
    once(lambda c: payments.process_payment(c, key("process_payment"), order_id, total, method))
    once(lambda c: shipping.create_shipment(c, key("create_shipment"), order_id, address))
    email = order["customer_email"]
    once(lambda c: notifications.send_confirmation(c, key("send_confirmation"), order_id, email))
    once(
        lambda c: c.execute(
            "UPDATE orders.orders SET state = 'COMPLETED', updated_at = now() WHERE order_id = %s",
            (order_id,),
        )
    )
    return "COMPLETED"


def once(action: Callable[[database.Connection], T]) -> T:
    """`action` on a pooled connection of its own."""
    with database.connection() as conn:
        return action(conn)


KINDS: dict[str, Callable[[], str]] = {
    "saga": run_saga,
    "floor": run_floor,
    "plain": run_plain,
    "choreography": run_choreography,
}


def main() -> int:
    kind = os.environ["BENCH_KIND"]
    one_saga = KINDS[kind]
    clients = int(os.environ.get("BENCH_CLIENTS", "8"))
    warmup = float(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    postmaster_pid = int(os.environ["BENCH_POSTMASTER_PID"])
    proxy = None
    if os.environ.get("BENCH_ROUND_TRIPS"):  # before the settings read DATABASE_URL
        proxy = FaultProxy(os.environ["DATABASE_URL"]).start()
        os.environ["DATABASE_URL"] = proxy.url_for(os.environ["DATABASE_URL"])
        get_settings.cache_clear()  # read at import, before the URL was the proxy's
    settings = get_settings()
    log_file = os.environ.get("BENCH_LOG_FILE")
    if log_file:  # the service's logging, its records written to a file (not the progress)
        records = open(log_file, "a", buffering=1)  # noqa: SIM115 (open for the run)
        logs.configure(settings.log_level, settings.log_format, stream=records)
    if kind == "plain":
        url = embedded.resolve_url(settings)
        migrate(url)
        database.open_pool(url, settings.db_pool_size, settings.step_timeout_seconds)
    else:
        lifecycle.start(settings)
    global _watcher
    watching = None
    if kind == "choreography":
        _watcher = Watcher(settings.database_url or "", choreographed=True)
        watching = _watcher.running()
        watching.__enter__()

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    measure_from = started + warmup
    measure_until = measure_from + seconds

    def client() -> None:
        while (began := time.monotonic()) < measure_until:
            try:
                state = one_saga()
            except Exception as error:  # counted and shown, never hidden
                state = f"{type(error).__name__}: {error}"
            ended = time.monotonic()
            with lock:
                if state != "COMPLETED":
                    failures.append(state)
                elif measure_from <= ended <= measure_until:
                    # Ended in the window, begun in it or in the warm-up (as loaded): the
                    # window's rate, and its CPU and round trips per saga, count these.
                    latencies.append(ended - began)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu = CpuWindow([os.getpid()], postmaster_pid).start()
    trips_before = proxy.round_trips() if proxy is not None else None
    while time.monotonic() < measure_until:
        time.sleep(min(5.0, max(0.0, measure_until - time.monotonic())))
        print(f"  {kind}: {len(latencies)} sagas measured", file=sys.stderr, flush=True)
    app_cpu, db_cpu = cpu.stop()
    trips_after = proxy.round_trips() if proxy is not None else None
    for thread in threads:
        thread.join(timeout=60)
    count = len(latencies)
    result = {
        "kind": kind,
        "clients": clients,
        "seconds": seconds,
        "sagas": count,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "sagas_per_second": round(count / seconds, 2),
        "saga_latency": latency_ms(latencies),
        "app_cpu_ms_per_saga": round(app_cpu / max(count, 1) * 1000, 2),
        "db_cpu_ms_per_saga": round(db_cpu / max(count, 1) * 1000, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if trips_before is not None and trips_after is not None:
        # Over the sagas that ended in the window, as the CPU per saga is.
        ended = max(count, 1)  # (none ended: the figures are 0, and "sagas" says so)
        trips = trips_after - trips_before
        trips.pop("", None)  # the choreography watcher's (the bench's, not the saga's)
        app, dbos = trips.pop(database.APP_NAME, 0), trips.pop("dbos_transact", 0)
        other = sum(trips.values())  # the lease's heartbeat, ...
        # Each figure per saga is rounded on its own, so the parts may add up to 0.1 more
        # or less than the total: the counts themselves are kept beside them.
        result["round_trips"] = {"app": app, "dbos": dbos, "other": other, "sagas": count}
        result["round_trips_per_saga"] = {
            "app": round(app / ended, 1),
            "dbos": round(dbos / ended, 1),
            "other": round(other / ended, 1),
            "total": round((app + dbos + other) / ended, 1),
        }
    if watching is not None:
        watching.__exit__(None, None, None)
    if kind == "plain":
        database.close_pool()
    else:
        lifecycle.stop()
    if proxy is not None:
        proxy.stop()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
