"""What the command line prints: Rich tables for a terminal (plain text when piped).

Every value that comes from the service is put in a `Text`, never in markup, so an error
message holding "[red]" prints as written.
"""

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orders import wording
from orders.model import COMPENSATION_OF, UNDONE_BY

STATE_STYLE = {
    "STARTED": "dim",
    "PENDING": "blue",
    "AWAITING_APPROVAL": "bold cyan",
    "COMPENSATING": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "COMPENSATION_FAILED": "bold magenta",
}
STATUS_STYLE = {
    "pending": "dim",
    "executing": "blue",
    "completed": "green",
    "failed": "red",
    "compensating": "yellow",
    "compensated": "yellow",
}
OUTCOME_STYLE = {"ok": "green", "refused": "red", "transient": "yellow", "error": "red"}


def text(value: Any, style: str = "") -> Text:
    """A cell: '' for None, the value as written otherwise (no markup)."""
    return Text("" if value is None else str(value), style=style)


def state(value: str | None) -> Text:
    return text(value, STATE_STYLE.get(value or "", ""))


def money(cents: Any) -> str:
    return wording.money(cents)


def moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def timestamp(value: Any) -> str:
    """An API time as 'YYYY-MM-DD HH:MM:SS.mmm' UTC ('' for none)."""
    parsed = moment(value)
    if parsed is None:
        return "" if value is None else str(value)
    return wording.timestamp(parsed)


def when(value: Any, now: datetime | None = None) -> str:
    """'HH:MM:SS' today (UTC), 'YYYY-MM-DD HH:MM' before."""
    parsed = moment(value)
    if parsed is None:
        return ""
    parsed = parsed.astimezone(UTC)
    if parsed.date() == (now or datetime.now(UTC)).date():
        return parsed.strftime("%H:%M:%S")
    return parsed.strftime("%Y-%m-%d %H:%M")


def clock(value: Any) -> str:
    """Just the time of day (for the attempts, which all happen on one day or so)."""
    parsed = moment(value)
    return "" if parsed is None else parsed.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def ago(value: Any, now: datetime | None = None) -> str:
    return wording.ago(moment(value), now)


def took(start: Any, end: Any) -> str:
    return wording.took(moment(start), moment(end))


def left(deadline: Any, now: datetime | None = None) -> str:
    parsed = moment(deadline)
    if parsed is None:
        return ""
    time_left = wording.remaining(parsed, now)
    return time_left if time_left == "passed" else f"{time_left} left"


def orders_table(listing: dict[str, Any], title: str | None = None) -> Table:
    """GET /orders as a table, newest first."""
    orders: list[dict[str, Any]] = listing.get("orders") or []
    table = Table(title=title, title_justify="left", caption_justify="left", expand=False)
    longest = max((len(str(o.get("order_id"))) for o in orders), default=5)
    table.add_column("order", no_wrap=True, min_width=longest)  # never cut: one copies it
    table.add_column("state", no_wrap=True)
    table.add_column("step")
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("customer")
    table.add_column("style")
    table.add_column("attention", style="red")
    table.add_column("updated")
    for order in orders:
        table.add_row(
            text(order.get("order_id"), "bold"),
            state(order.get("state")),
            text(order.get("current_step")),
            text(money(order.get("total_cents"))),
            text(order.get("customer_id")),
            text(order.get("coordination")),
            text(order.get("attention_reason") if order.get("needs_attention") else None),
            text(f"{when(order.get('updated_at'))} ({ago(order.get('updated_at'))})"),
        )
    counts = Counter(str(o.get("state")) for o in orders)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no orders"
    attention = sum(1 for o in orders if o.get("needs_attention"))
    caption = f"{len(orders)} shown: {summary}"
    if attention:
        caption += f"; {attention} need{'s' if attention == 1 else ''} attention"
    if listing.get("next"):
        caption += f"; more: --before {listing['next']}"
    table.caption = caption
    return table


# --- saga show ---------------------------------------------------------------------------


def order_view(
    view: dict[str, Any], now: datetime | None = None, width: int = 200
) -> RenderableType:
    """GET /orders/{id} as a header, the timeline, every attempt and the operators' actions.
    Narrower than 110 columns, the timeline leaves out the times (the attempts have them)."""
    now = now or datetime.now(UTC)
    parts: list[RenderableType] = [_header(view, now), _timeline(view, times=width >= 110)]
    attempts = _attempts(view)
    if attempts is not None:
        parts.append(attempts)
    events = _events(view)
    if events is not None:
        parts.append(events)
    parts.append(_actions(view))
    return Group(*parts)


def _header(view: dict[str, Any], now: datetime) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def row(label: str, *values: Text | str) -> None:
        line = Text()
        for value in values:
            line.append_text(value if isinstance(value, Text) else Text(value))
        grid.add_row(label, line)

    status = state(view.get("state"))
    if view.get("needs_attention"):
        reason = view.get("attention_reason") or "yes"
        status = Text.assemble(status, "  ", text(f"needs attention: {reason}", "bold red"))
    row("state", status)
    row("saga", text(view.get("saga_id")))
    if "coordination" in view:
        row("coordination", text(view.get("coordination")))
    if view.get("customer_id"):
        row("customer", text(view.get("customer_id")))
    row("total", money(view.get("total_cents")))
    if view.get("current_step"):
        row("current step", text(view.get("current_step")))
    if view.get("error"):
        row("error", text(view.get("error"), "red"))
    row("created", f"{timestamp(view.get('created_at'))} ({ago(view.get('created_at'), now)})")
    row("updated", f"{timestamp(view.get('updated_at'))} ({ago(view.get('updated_at'), now)})")
    approval = view.get("approval")
    if isinstance(approval, dict):
        decision = approval.get("decision")
        waiting = decision is None and view.get("state") == "AWAITING_APPROVAL"
        deadline = f"deadline {timestamp(approval.get('deadline'))}"
        if waiting:
            deadline += f" ({left(approval.get('deadline'), now)})"
        row(
            "approval",
            text("waiting" if waiting else (decision or "undecided"), "bold cyan"),
            f", {deadline}",
        )
    if view.get("cancel_requested_at"):
        row("cancel requested", timestamp(view.get("cancel_requested_at")))
    parked = view.get("parked_count") or 0
    if parked:
        row("parked", f"{parked} time{'s' if parked != 1 else ''}")
    dbos = [f"status {view.get('dbos_status') or '—'}"]
    if view.get("executor_id"):
        dbos.append(f"executor {view['executor_id']}")
    if view.get("application_version"):
        dbos.append(f"version {view['application_version']}")
    row("DBOS", text(", ".join(dbos)))
    if view.get("trace_id"):
        row("trace", text(view.get("trace_id")))
    advice = _advice(view)
    if advice:
        row("next", text(advice, "italic"))
    title = Text.assemble("order ", text(view.get("order_id"), "bold"))
    return Panel(grid, title=title, title_align="left", expand=False)


def _advice(view: dict[str, Any]) -> str | None:
    """What an operator can do about it now, as commands (the API has the last word)."""
    order_id = view.get("order_id")
    current = view.get("state")
    approval = view.get("approval") if isinstance(view.get("approval"), dict) else None
    if current == "COMPENSATION_FAILED":
        return (
            f"parked after {view.get('current_step') or 'a compensation'} kept failing: repair "
            f"what it calls, then `saga retry {order_id}` (each compensation is idempotent)"
        )
    cancelling = view.get("cancel_requested_at") is not None
    undecided = approval is None or approval.get("decision") is None
    if current == "AWAITING_APPROVAL" and not cancelling and undecided:
        return (
            f"waits for a person: `saga approve {order_id}` or `saga reject {order_id}`; "
            "undone by itself at the deadline"
        )
    if current not in ("COMPLETED", "FAILED") and not cancelling and view.get("needs_attention"):
        return (
            "not moving: see the attempts below; "
            f"`saga cancel {order_id}` is safe at any time (it undoes what was done)"
        )
    return None


def _timeline(view: dict[str, Any], times: bool = True) -> Table:
    """Each forward step, beside the compensation that undid it (if one ran): numbered in
    the order compensations ran, with its status and tries. The error column has the
    step's last error and, after ↩, the compensation's."""
    compensations: list[dict[str, Any]] = view.get("compensations") or []
    by_name = {c.get("name"): (i + 1, c) for i, c in enumerate(compensations)}
    table = Table(title="timeline", title_justify="left", expand=False)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("#", justify="right", no_wrap=True)
    if times:
        table.add_column("started", no_wrap=True)
        table.add_column("took", justify="right", no_wrap=True)
    table.add_column("undone by")
    table.add_column("last error", overflow="fold")
    paired: set[str] = set()
    steps: list[dict[str, Any] | None] = list(view.get("steps") or [])
    named = {str(step.get("name")) for step in steps if step is not None}
    orphans = [c for c in compensations if COMPENSATION_OF.get(str(c.get("name"))) not in named]
    for step in steps + [None] * len(orphans):
        if step is None:  # a compensation of no step listed (not expected): shown all the same
            compensation = orphans.pop(0)
            undo = by_name.get(compensation.get("name"))
            cells = [text("") for _ in range(5 if times else 3)]
            error = Text()
        else:
            name = step.get("name")
            undo = by_name.get(UNDONE_BY.get(str(name)))
            status = step.get("status")
            cells = [
                text(name, "bold"),
                text(status, STATUS_STYLE.get(status or "", "")),
                text(step.get("attempts") or ""),
            ]
            if times:
                cells.append(text(clock(step.get("started_at"))))
                cells.append(text(took(step.get("started_at"), step.get("finished_at"))))
            error = text(step.get("error"), "red")
        if undo is None:
            cells.append(text(""))
        else:
            number, compensation = undo
            paired.add(str(compensation.get("name")))
            status = compensation.get("status")
            tries = compensation.get("attempts") or 0
            cells.append(
                Text.assemble(
                    f"{number}. {compensation.get('name')}\n",
                    text(status, STATUS_STYLE.get(status or "", "")),
                    f", {tries} {'try' if tries == 1 else 'tries'}",
                )
            )
            if compensation.get("error"):
                if error.plain:
                    error.append("\n")
                error.append_text(text(f"↩ {compensation.get('error')}", "red"))
        table.add_row(*cells, error)
    return table


def _attempts(view: dict[str, Any]) -> Table | None:
    """Every attempt of every step and compensation, in the order they started."""
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for kind, key in (("step", "steps"), ("undo", "compensations")):
        for step in view.get(key) or []:
            for attempt in step.get("history") or []:
                rows.append((kind, len(rows), {**attempt, "name": step.get("name")}))
    if not rows:
        return None

    def started(row: tuple[str, int, dict[str, Any]]) -> tuple[float, int]:
        begun = moment(row[2].get("started_at"))
        return (begun.timestamp() if begun else float("inf"), row[1])

    table = Table(title="attempts", title_justify="left", expand=False)
    table.add_column("started", no_wrap=True)
    table.add_column("operation", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("error", overflow="fold")
    for kind, _, attempt in sorted(rows, key=started):
        outcome = attempt.get("outcome")
        name = attempt.get("name")
        table.add_row(
            text(clock(attempt.get("started_at"))),
            text(f"↩ {name}" if kind == "undo" else name, "yellow" if kind == "undo" else ""),
            text(attempt.get("attempt")),
            text(took(attempt.get("started_at"), attempt.get("finished_at"))),
            text(outcome or "—", OUTCOME_STYLE.get(outcome or "", "dim")),
            text(attempt.get("error"), "red"),
        )
    return table


def _events(view: dict[str, Any]) -> Table | None:
    """A choreographed saga's events, in the order they happened."""
    events = view.get("events")
    if not isinstance(events, list) or not events:
        return None
    table = Table(title="events", title_justify="left", expand=False)
    table.add_column("at", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("by")
    for event in events:
        if isinstance(event, dict):
            table.add_row(
                text(timestamp(event.get("at"))), text(event.get("type")), text(event.get("by"))
            )
    return table


def _actions(view: dict[str, Any]) -> RenderableType:
    actions = view.get("actions") or []
    if not actions:
        return Text("operator actions: none", style="dim")
    table = Table(title="operator actions", title_justify="left", expand=False)
    table.add_column("at", no_wrap=True)
    table.add_column("by")
    table.add_column("action", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for action in actions:
        table.add_row(
            text(timestamp(action.get("at"))),
            text(action.get("by")),
            text(action.get("action"), "bold"),
            text(action.get("reason")),
        )
    return table


def accepted(action: str, answer: dict[str, Any]) -> Text:
    """The one line after a 202: accepted, and the state when the service answered (the
    saga acts on it in the background)."""
    verb = {
        "approve": "approved",
        "reject": "rejected",
        "cancel": "cancel requested",
        "retry-compensation": "compensation retry requested",
    }[action]
    order_id = answer.get("order_id")
    return Text.assemble(
        text(order_id, "bold"),
        f": {verb} (was ",
        state(answer.get("state")),
        f"); `saga show {order_id}` follows it",
    )
