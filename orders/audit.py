"""`make audit` (`python -m orders.audit`): every saga in the database checked against the
contract's "nothing lost" rules, from one consistent snapshot. Read-only: safe on a live system.

Each violation is printed with the saga and order ids; the exit status is 1 if there is any.
"""

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from orders import events
from orders.model import TERMINAL_STATES
from runtime import executors

# A stored order whose saga does not exist yet is normal for the few milliseconds between
# storing and starting it; one older than this was never started.
UNSTARTED_GRACE_SECONDS = 60
RUNNING = ("PENDING", "ENQUEUED")  # DBOS statuses of a workflow someone must be running
DBOS_ENDED_BADLY = ("ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")


Kind = Literal["lost", "duplicated", "stuck"]


@dataclass
class Report:
    """What the audit found. Each violation reads `<kind>: <where>: <problem>`, its kind one
    of lost (an effect missing, or left in place, against the final state), duplicated (an
    effect done twice) or stuck (a saga nobody is working on)."""

    sagas: int = 0
    states: Counter[str] = field(default_factory=Counter)
    coordinations: Counter[str] = field(default_factory=Counter)  # sagas of each style
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # violations of each kind
    # kind -> the orders (or, for the database as a whole, the problems) with a violation
    flagged: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def violation(self, kind: Kind, saga: dict[str, Any] | None, problem: str) -> None:
        where = f"saga {saga['saga_id']} (order {saga['order_id']})" if saga else "database"
        self.violations.append(f"{kind}: {where}: {problem}")
        self.counts[kind] += 1
        self.flagged[kind].add(saga["order_id"] if saga else problem)


def audit(conn: psycopg.Connection[Any], *, own_snapshot: bool = True) -> Report:
    """Check everything, from one snapshot of the database: a read-only repeatable-read
    transaction of its own on an autocommit `conn`, or (own_snapshot=False) the
    transaction `conn` is already in."""
    report = Report()
    if own_snapshot:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = _read(conn)
    else:
        snapshot = _read(conn)
    for saga in snapshot["sagas"]:
        report.sagas += 1
        report.states[saga["state"]] += 1
        report.coordinations[saga["coordination"]] += 1
        _check_saga(report, saga, _effects_of(snapshot, saga["order_id"]))
        if saga["coordination"] == "choreography":
            _check_events(report, saga, snapshot["handlers"].get(saga["order_id"], []))
    _check_stock(report, snapshot["stock"])
    for order_id in sorted(snapshot["effect_orders"] - {s["order_id"] for s in snapshot["sagas"]}):
        report.violation(
            "lost", None, f"effects recorded for {order_id!r}, which is no stored order"
        )
    return report


def _read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    def rows(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql, params).fetchall()

    # An executor is alive only if its lock is held AND its heartbeat is within its lease
    # (runtime/executors.py): a session holding the lock of a process that stopped beating
    # is an orphan, and the sagas of that executor are stuck until someone ends it.
    sagas = rows(
        """SELECT o.order_id, o.saga_id, o.state, o.total_cents, o.request -> 'items' AS items,
                  o.coordination,
                  o.created_at < now() - make_interval(secs => %s) AS past_grace,
                  w.status AS dbos_status, w.executor_id,
                  (w.executor_id IS NOT NULL AND """
        + executors.alive_sql("w.executor_id")
        + """) AS executor_alive,
                  (SELECT extract(epoch FROM now() - e.heartbeat_at)::float8
                     FROM orders.executors e WHERE e.executor_id = w.executor_id)
                      AS heartbeat_age
             FROM (SELECT *, """
        + events.CARRIER
        + """ FROM orders.orders) o
             LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = o.carrier
            ORDER BY o.created_at""",
        (UNSTARTED_GRACE_SECONDS,),
    )
    # Any live process at all (for ENQUEUED sagas, which any process may dequeue).
    any_executor_alive = bool(
        rows(
            "SELECT 1 FROM orders.executors x WHERE "
            + executors.alive_sql("x.executor_id")
            + " LIMIT 1"
        )
    )
    effects: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows(
        """SELECT r.order_id, r.status,
                  coalesce(jsonb_object_agg(l.sku, l.quantity)
                           FILTER (WHERE l.sku IS NOT NULL), '{}') AS lines
             FROM inventory.reservations r
             LEFT JOIN inventory.reservation_lines l USING (reservation_id)
            WHERE r.status <> 'refused'
            GROUP BY r.reservation_id, r.order_id, r.status, r.created_at
           HAVING count(l.sku) > 0  -- no lines: a release that came first, not an effect
            ORDER BY r.created_at"""
    ):
        effects[r["order_id"]]["reservations"].append((r["status"], r["lines"]))
    for r in rows(
        """SELECT order_id, status, amount_cents FROM payments.payments
            WHERE status <> 'voided' ORDER BY created_at"""
    ):
        effects[r["order_id"]]["payments"].append((r["status"], r["amount_cents"]))
    for r in rows(
        """SELECT order_id, status FROM shipping.shipments
            WHERE status <> 'voided' ORDER BY created_at"""
    ):
        effects[r["order_id"]]["shipments"].append(r["status"])
    for r in rows(
        """SELECT order_id, kind FROM notifications.notifications
            WHERE status = 'sent' ORDER BY created_at"""
    ):
        effects[r["order_id"]]["notifications"].append(r["kind"])
    stock = rows(
        """SELECT i.sku, i.on_hand, i.reserved,
                  coalesce((SELECT sum(l.quantity) FROM inventory.reservation_lines l
                              JOIN inventory.reservations r USING (reservation_id)
                             WHERE l.sku = i.sku AND r.status = 'active'), 0) AS held
             FROM inventory.items i ORDER BY i.sku"""
    )
    for saga in sagas:
        saga["any_executor_alive"] = any_executor_alive
    # Every event of every choreographed order, each with its handlers (none for an event
    # nobody subscribes to), oldest first.
    handlers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows(
        """SELECT e.order_id, e.type, e.caused_by, d.subscriber, d.workflow_id, w.status,
                  e.at < now() - make_interval(secs => %s) AS past_grace
             FROM orders.events e
             LEFT JOIN orders.deliveries d ON d.event_seq = e.seq
             LEFT JOIN dbos.workflow_status w ON w.workflow_uuid = d.workflow_id
            ORDER BY e.seq""",
        (UNSTARTED_GRACE_SECONDS,),
    ):
        handlers[r["order_id"]].append(r)
    return {
        "sagas": sagas,
        "effects": effects,
        "stock": stock,
        "effect_orders": set(effects),
        "handlers": handlers,
    }


def _effects_of(snapshot: dict[str, Any], order_id: str) -> dict[str, list[Any]]:
    found = snapshot["effects"].get(order_id, {})
    return {
        k: list(found.get(k, []))
        for k in ("reservations", "payments", "shipments", "notifications")
    }


def _check_saga(report: Report, saga: dict[str, Any], fx: dict[str, list[Any]]) -> None:
    state = saga["state"]
    captured = [amount for status, amount in fx["payments"] if status == "captured"]
    kinds = Counter(fx["notifications"])
    # Never, whatever the state: an effect done twice.
    if len(fx["reservations"]) > 1:
        report.violation("duplicated", saga, f"inventory reserved {len(fx['reservations'])} times")
    if len(fx["payments"]) > 1:
        report.violation(
            "duplicated", saga, f"{len(fx['payments'])} payments ({len(captured)} captured)"
        )
    if len(fx["shipments"]) > 1:
        report.violation("duplicated", saga, f"{len(fx['shipments'])} shipments")
    for kind in ("confirmation", "cancellation"):
        if kinds[kind] > 1:
            report.violation("duplicated", saga, f"{kinds[kind]} {kind} notifications")

    if state == "COMPLETED":
        ordered = Counter[str]()
        for item in saga["items"] or []:
            ordered[item["sku"]] += item["quantity"]
        active = [lines for status, lines in fx["reservations"] if status == "active"]
        if len(active) != 1 or Counter(active[0]) != ordered:
            report.violation(
                "lost", saga, f"COMPLETED but reserved {active}, ordered {dict(ordered)}"
            )
        if captured != [saga["total_cents"]]:
            report.violation(
                "lost",
                saga,
                f"COMPLETED but captured {captured}, total_cents {saga['total_cents']}",
            )
        if fx["shipments"] != ["created"]:
            report.violation("lost", saga, f"COMPLETED but shipments {fx['shipments']}")
        if fx["notifications"] != ["confirmation"]:
            report.violation("lost", saga, f"COMPLETED but notifications {fx['notifications']}")
    elif state == "FAILED":
        if any(status == "active" for status, _ in fx["reservations"]):
            report.violation("lost", saga, "FAILED but inventory still reserved")
        if captured:
            report.violation("lost", saga, f"FAILED but payment still captured ({captured})")
        if "created" in fx["shipments"]:
            report.violation("lost", saga, "FAILED but a shipment is still created")
        if kinds["confirmation"] != kinds["cancellation"]:
            # (counted, not ordered: both rows may be stamped in the same instant)
            report.violation(
                "lost", saga, f"FAILED, confirmed, but not retracted: {fx['notifications']}"
            )

    _check_progress(report, saga)


END_EVENT = {"COMPLETED": events.ORDER_COMPLETED, "FAILED": events.ORDER_FAILED}


def _check_events(report: Report, saga: dict[str, Any], handled: list[dict[str, Any]]) -> None:
    """A choreographed order: each of its events handled by one workflow per subscriber
    (the bus's keys make a second impossible; a delivery without its workflow is an event
    lost), never two handlers at once, and, once it has ended and no handler runs, its end
    event written. (Stuck handlers are found by _check_progress: the newest one carries it.)"""
    for row in handled:
        # (a delivery is started just after its event commits, or by the sweep after a crash)
        if row["subscriber"] is not None and row["status"] is None and row["past_grace"]:
            report.violation(
                "lost", saga, f"{row['type']} was routed to {row['subscriber']}, which never got it"
            )
        elif row["status"] in DBOS_ENDED_BADLY:
            report.violation(
                "stuck",
                saga,
                f"the {row['subscriber']} handler of {row['type']} ended {row['status']}",
            )
    # Each reaction ends in one event: a handler that emitted two decided twice.
    emitted: defaultdict[str, list[str]] = defaultdict(list)
    for cause, event in {(r["caused_by"], r["type"]) for r in handled if r["caused_by"]}:
        emitted[cause].append(event)
    for handler, types in sorted(emitted.items()):
        if len(types) > 1:
            report.violation(
                "duplicated", saga, f"handler {handler} decided twice: {', '.join(sorted(types))}"
            )
    live = [r for r in handled if r["status"] in RUNNING]
    if len(live) > 1:
        report.violation(
            "duplicated",
            saga,
            "handlers at once: " + ", ".join(f"{r['subscriber']} on {r['type']}" for r in live),
        )
    end = END_EVENT.get(saga["state"])
    if end is not None and not live and end not in {r["type"] for r in handled}:
        report.violation("lost", saga, f"{saga['state']} but no {end} event")


def _check_progress(report: Report, saga: dict[str, Any]) -> None:
    """Never a saga that nobody is working on (COMPENSATION_FAILED waits for an operator,
    in a live workflow, and counts as worked on)."""
    status, state = saga["dbos_status"], saga["state"]
    if status is None:
        if state not in TERMINAL_STATES and saga["past_grace"]:
            report.violation(
                "stuck", saga, f"{state} but its saga was never started (no DBOS workflow)"
            )
        return
    if status in DBOS_ENDED_BADLY:
        report.violation("stuck", saga, f"{state}, and its DBOS workflow ended {status}")
    elif status == "SUCCESS" and state not in TERMINAL_STATES:
        report.violation("stuck", saga, f"{state}, but its DBOS workflow has returned")
    elif status == "PENDING" and not saga["executor_alive"]:
        age = saga["heartbeat_age"]
        report.violation(
            "stuck",
            saga,
            f"{state} (DBOS PENDING), but no live process holds {saga['executor_id']!r}"
            + ("" if age is None else f" (its last heartbeat is {age:.0f} s old)"),
        )
    elif status == "ENQUEUED" and not saga["any_executor_alive"]:
        report.violation("stuck", saga, f"{state} (DBOS ENQUEUED), but no live process runs sagas")


def _check_stock(report: Report, stock: list[dict[str, Any]]) -> None:
    for item in stock:
        if item["on_hand"] - item["reserved"] < 0:
            report.violation("lost", None, f"SKU {item['sku']!r}: available below zero")
        if item["reserved"] != item["held"]:
            report.violation(
                "lost",
                None,
                f"SKU {item['sku']!r}: {item['reserved']} reserved, but active reservations "
                f"hold {item['held']}",
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make audit", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args(argv)

    from runtime.embedded import resolve_url
    from runtime.settings import get_settings

    url = resolve_url(get_settings())
    with psycopg.connect(url, autocommit=True) as conn:
        report = audit(conn)
    if args.json:
        print(
            json.dumps(
                {
                    "sagas": report.sagas,
                    "states": report.states,
                    "coordinations": report.coordinations,
                    "violations": report.violations,
                }
            )
        )
    else:
        for line in report.violations:
            print(line)
        states = ", ".join(f"{n} {s}" for s, n in sorted(report.states.items()))
        styles = ", ".join(f"{n} {c}" for c, n in sorted(report.coordinations.items()))
        print(
            f"audit: {report.sagas} sagas ({states or 'none'}; {styles or 'none'}); "
            f"{len(report.violations)} violations"
        )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
