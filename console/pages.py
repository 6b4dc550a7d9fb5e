"""The operator's console: server-rendered pages over the same views the API answers with.

- `GET /`: the fleet (counts by state, the sagas that need attention, a filtered list,
  newest first, a page at a time);
- `GET /console/orders/{order_id}`: one saga's timeline and what an operator can do now.

The pages only read. Their buttons call the API's own POST routes from the browser
(console/static/console.js), with the operator's name as X-Operator and, when the server has
an API_TOKEN, the token the operator typed as a bearer token: what the console may do is
exactly what the API allows, checked in one place. Without JavaScript the pages still show
everything; they just neither refresh nor act.
"""

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api import db
from api.schemas import IDENTIFIER, NO_CONTROL_CHARACTERS, OrderSummary, OrderView
from orders import views, wording
from orders.errors import OrderNotFound
from orders.model import COORDINATIONS, SAGA_STATES, TERMINAL_STATES, UNDONE_BY
from runtime.settings import Settings

HERE = Path(__file__).parent
STATIC_PATH = "/console/static"
PAGE_SIZE = 50
ATTENTION_SHOWN = 20  # the fleet page's "needs attention" box; the filter lists them all
FLEET_REFRESH_MS = 5000
SAGA_REFRESH_MS = 1500  # while the saga has not ended

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")


class BadFilter(ValueError):
    """A query parameter of a page that cannot be used (shown on the page, with a 400)."""


@router.get("/", response_class=HTMLResponse)
async def fleet_page(request: Request) -> HTMLResponse:
    """The fleet: counts by state, what needs attention, and the list."""
    params = request.query_params
    try:
        state = _choice(params.get("state"), SAGA_STATES, "state")
        attention = _choice(params.get("attention"), ("true", "false"), "attention")
        search = _text(params.get("search"), "search", NO_CONTROL_CHARACTERS, 64)
        before = _text(params.get("before"), "before", IDENTIFIER, 64)
        coordination = _choice(params.get("coordination"), COORDINATIONS, "coordination")
    except BadFilter as bad:
        return _page(request, "error.html", {"problem": str(bad)}, status_code=400)
    wanted = {"true": True, "false": False}.get(attention or "")
    filters = {
        "state": state,
        "attention": attention,
        "search": search,
        "coordination": coordination,
    }

    def read() -> dict[str, Any]:
        with db.connection() as conn:
            now = views.fleet(conn)
            attention_rows = views.list_orders(conn, None, ATTENTION_SHOWN + 1, True)
            rows = views.list_orders(
                conn, state, PAGE_SIZE + 1, wanted, search, before, coordination
            )
        return {
            "fleet": now,
            "attention": [OrderSummary.model_validate(r) for r in attention_rows],
            "orders": [OrderSummary.model_validate(r) for r in rows[:PAGE_SIZE]],
            "next": rows[PAGE_SIZE - 1]["order_id"] if len(rows) > PAGE_SIZE else None,
        }

    try:
        context = await run_in_threadpool(read)
    except OrderNotFound:
        problem = f"there is no order {before!r} to list the orders after"
        return _page(request, "error.html", {"problem": problem}, status_code=404)
    context |= {
        "states": SAGA_STATES,
        "coordinations": COORDINATIONS,
        "filters": filters,
        "filtered": any(filters.values()) or before is not None,
        "before": before,
        "attention_shown": ATTENTION_SHOWN,
        "refresh_ms": FLEET_REFRESH_MS,
        "query": _query,
    }
    return _page(request, "fleet.html", context)


@router.get("/console/orders/{order_id}", response_class=HTMLResponse)
async def saga_page(request: Request, order_id: str) -> HTMLResponse:
    """One saga: its timeline, its waits, who did what, and the actions its state allows."""
    if not re.fullmatch(IDENTIFIER, order_id):
        problem = "an order id is 1-64 letters, digits, '_' or '-'"
        return _page(request, "error.html", {"problem": problem}, status_code=400)

    def read() -> dict[str, Any] | None:
        with db.connection() as conn:
            return views.order_view(conn, order_id)

    view = await run_in_threadpool(read)
    if view is None:
        problem = f"there is no order {order_id!r}"
        return _page(request, "error.html", {"problem": problem}, status_code=404)
    saga = OrderView.model_validate(view)
    context = {
        "saga": saga,
        "rows": _timeline(saga),
        "actions": _allowed(saga),
        "ended": saga.state in TERMINAL_STATES,
        "refresh_ms": 0 if saga.state in TERMINAL_STATES else SAGA_REFRESH_MS,
        "approval_waits": saga.approval is not None and saga.state == "AWAITING_APPROVAL",
        "advice": _advice(saga),
    }
    return _page(request, "saga.html", context)


def _page(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    base = {"token_required": settings.api_token is not None, "static": STATIC_PATH}
    return templates.TemplateResponse(
        request, template, base | context, status_code=status_code, headers=_NO_STORE
    )


_NO_STORE = {"Cache-Control": "no-store"}  # always the state now, never a cached one


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if not value:  # a form's empty field: no filter
        return None
    if value not in allowed:
        raise BadFilter(f"{name} must be one of {', '.join(allowed)}; got {value[:40]!r}")
    return value


def _text(value: str | None, name: str, pattern: str, max_length: int) -> str | None:
    if not value:
        return None
    if len(value) > max_length or not re.fullmatch(pattern, value):
        raise BadFilter(f"{name} must be at most {max_length} printable characters")
    return value


def _query(filters: dict[str, str | None], **changes: str | None) -> str:
    """The fleet page's query string for these filters, with `changes` applied."""
    merged = {k: v for k, v in (filters | changes).items() if v}
    return "?" + urlencode(merged) if merged else "/"


def _timeline(saga: OrderView) -> list[dict[str, Any]]:
    """Each forward step beside the compensation that undid it (if one ran), in order."""
    compensations = {c.name: (i + 1, c) for i, c in enumerate(saga.compensations)}
    rows = []
    for step in saga.steps:
        undo = compensations.get(UNDONE_BY[step.name])
        rows.append({"step": step, "undo": undo[1] if undo else None, "order": undo and undo[0]})
    return rows


def _allowed(saga: OrderView) -> list[str]:
    """The actions the saga's state allows now (the API has the last word)."""
    if saga.state == "AWAITING_APPROVAL":
        waiting = saga.approval is None or saga.approval.decision is None
        if waiting and saga.cancel_requested_at is None:
            return ["approve", "reject", "cancel"]
        return ["cancel"] if saga.cancel_requested_at is None else []
    if saga.state == "COMPENSATION_FAILED":
        return ["retry-compensation"]
    if saga.state in TERMINAL_STATES or saga.cancel_requested_at is not None:
        return []
    return ["cancel"]


def _advice(saga: OrderView) -> str | None:
    """What an operator can safely do about a saga in this state."""
    if saga.state == "COMPENSATION_FAILED":
        return (
            f"It parked after {saga.current_step or 'a compensation'} kept failing "
            f"({saga.parked_count} time{'s' if saga.parked_count != 1 else ''} so far). "
            "Nothing is forgotten: repair what it calls (GET /faults shows the simulated "
            "services' switches), then Retry compensation. Each compensation is idempotent, "
            "so a retry never undoes anything twice."
        )
    if saga.state == "AWAITING_APPROVAL" and saga.approval and saga.approval.decision is None:
        return (
            "It waits for a person. Approve lets it go on; reject or cancel makes it undo "
            "the reservation. If nobody decides by the deadline, it is undone by itself."
        )
    if saga.needs_attention and saga.attention_reason == "workflow ended without finishing it":
        carrier = "workflow" if saga.coordination == "orchestration" else "newest event handler"
        return (
            f"Its DBOS {carrier} ended while the saga had not: see the DBOS status and the "
            f'server log; `make dbos ARGS="workflow steps {saga.workflow_id}"` shows what DBOS '
            "recorded."
        )
    if saga.needs_attention:
        return (
            "It has not moved for a while. A step may be waiting for an unreachable service "
            "(its attempts below show the errors), or the process running it died and "
            "another has yet to take it over. Cancel is safe at any time: it stops at the "
            "next step and undoes what was done."
        )
    return None


templates.env.filters |= {
    "ago": wording.ago,
    "timestamp": wording.timestamp,
    "money": wording.money,
    "left": wording.remaining,
}
templates.env.globals["took"] = wording.took
