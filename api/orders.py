"""Orders: start a saga, and see where it is."""

import asyncio
import logging
from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api import db
from api.access import PROTECTED, UNAUTHORIZED_RESPONSE
from api.responses import UNPARSABLE
from api.schemas import (
    IDENTIFIER,
    NO_CONTROL_CHARACTERS,
    ActionIn,
    OrderAccepted,
    OrderIn,
    OrderList,
    OrderView,
    Problem,
)
from orders import control, intake, views
from orders.errors import OrderNotFound
from orders.model import Coordination, SagaState
from runtime import metrics
from workflows import choreography, order_fulfillment

log = logging.getLogger(__name__)
router = APIRouter(tags=["orders"])

OrderIdPath = Annotated[str, Path(pattern=IDENTIFIER)]
# What approve, reject, cancel and retry-compensation answer; with API_TOKEN set, they need it.
CONTROL_ROUTE: dict[str, Any] = {
    "status_code": 202,
    "response_model": OrderAccepted,
    "responses": {404: {"model": Problem}, 409: {"model": Problem}, **UNAUTHORIZED_RESPONSE},
    **PROTECTED,
}


@router.post(
    "/orders",
    status_code=202,
    response_model=OrderAccepted,
    responses={
        200: {"model": OrderView, "description": "With ?wait=: the saga ended in time"},
        409: {"model": Problem, "description": "Key or order_id reused with another body"},
        **UNPARSABLE,
    },
)
async def place_order(
    order: OrderIn,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    ] = None,
    wait: Annotated[
        float | None, Query(gt=0, le=60, description="Seconds to wait for COMPLETED/FAILED")
    ] = None,
) -> Any:
    """Accept the order and start its saga (202). Repeating the request starts nothing new."""
    placement, running = await run_in_threadpool(
        _place, order.model_dump(mode="json"), idempotency_key
    )
    location = f"/orders/{placement.order_id}"
    if wait is not None:
        view = await _wait_for_end(placement.order_id, wait, running)
        if view is not None:
            body = jsonable_encoder(OrderView.model_validate(view))
            return JSONResponse(body, status_code=200, headers={"Location": location})
    response.headers["Location"] = location
    return OrderAccepted(
        order_id=placement.order_id, saga_id=placement.saga_id, state=placement.state
    )


@router.get("/orders/{order_id}", response_model=OrderView, responses={404: {"model": Problem}})
def get_order(order_id: OrderIdPath) -> dict[str, Any]:
    """The saga: state, current step, each forward step, the compensations that ran."""
    with db.connection() as conn:
        view = views.order_view(conn, order_id)
    if view is None:
        raise OrderNotFound(order_id)
    return view


@router.get(
    "/orders",
    response_model=OrderList,
    responses={404: {"model": Problem, "description": "`before` names no order"}},
)
def list_orders(
    state: SagaState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    attention: Annotated[
        bool | None,
        Query(description="true: only sagas that need attention; false: only those that don't"),
    ] = None,
    search: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=NO_CONTROL_CHARACTERS,
            description="Only orders whose order_id starts with this, or whose customer_id is it",
        ),
    ] = None,
    before: Annotated[
        str | None,
        Query(
            pattern=IDENTIFIER,
            description="Only orders listed after this one (the previous page's `next`)",
        ),
    ] = None,
    coordination: Coordination | None = None,
) -> dict[str, Any]:
    """Summaries, newest first, `limit` at a time; `next` is the `before` of the next page
    (null on the last)."""
    with db.connection() as conn:
        orders = views.list_orders(conn, state, limit + 1, attention, search, before, coordination)
    more = len(orders) > limit
    return {"orders": orders[:limit], "next": orders[limit - 1]["order_id"] if more else None}


def _place(
    request: dict[str, Any], idempotency_key: str | None
) -> tuple[intake.Placement, "Future[Any] | None"]:
    """The stored order, and the future of its saga's end if the saga runs in this process."""
    with db.connection() as conn:
        placement = intake.place(conn, request, idempotency_key, _begin_choreography)
    if placement.created:
        metrics.saga_started()
        log.info(
            "order placed, saga starting",
            extra={"order_id": placement.order_id, "saga_id": placement.saga_id},
        )
    running = None
    if placement.created or placement.state == "STARTED":
        # Also on a retry: the first request may have died between storing and starting.
        if placement.coordination == "orchestration":
            running = db.within_wait(
                lambda: order_fulfillment.start(placement.saga_id, placement.order)
            )
        else:  # its OrderPlaced was stored with it; its first handler starts now
            db.within_wait(lambda: choreography.begin(placement.saga_id, placement.order))
    return placement, running


def _begin_choreography(conn: Any, placement: intake.Placement) -> None:
    choreography.place(conn, placement.saga_id, placement.order)


async def _wait_for_end(
    order_id: str, seconds: float, running: "Future[Any] | None"
) -> dict[str, Any] | None:
    """The view once the saga has ended, or None if it did not within `seconds`. A saga
    that runs in this process wakes the wait when it ends; any other is looked at again
    and again (after 20 ms, 40 ms, ... 250 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if running is not None:
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), seconds)
        except Exception:  # it raised (DBOS failing, a shutdown) or ran out of time
            log.debug("saga of %s: no end heard of; looking at its row", order_id, exc_info=True)
        else:  # it returned: DBOS has recorded its end, and the saga's row its state
            return await run_in_threadpool(_view, order_id)
    pause = 0.02
    while True:
        if await run_in_threadpool(_has_ended, order_id):
            return await run_in_threadpool(_view, order_id)
        left = deadline - loop.time()
        if left <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.25)


def _has_ended(order_id: str) -> bool:
    with db.budget(), db.connection() as conn:  # each look has its own budget
        return views.has_ended(conn, order_id)


def _view(order_id: str) -> dict[str, Any] | None:
    with db.budget(), db.connection() as conn:
        return views.order_view(conn, order_id)


# Who asks: the console sends the name its user typed, the CLI the user's login name.
OperatorHeader = Annotated[
    str | None,
    Header(
        alias="X-Operator",
        min_length=1,
        max_length=100,
        pattern=r"^[\x20-\x7e]+$",
        description="Who asks (recorded with the action); 'unknown' when absent",
    ),
]
# The same route as CONTROL_ROUTE, with a body that can be invalid (422).
ACTION_ROUTE: dict[str, Any] = CONTROL_ROUTE | {
    "responses": CONTROL_ROUTE["responses"] | UNPARSABLE
}


@router.post("/orders/{order_id}/approve", **ACTION_ROUTE)
async def approve(
    order_id: OrderIdPath,
    response: Response,
    body: ActionIn | None = None,
    x_operator: OperatorHeader = None,
) -> Any:
    """Let a saga AWAITING_APPROVAL go on (202); 409 in any other state."""
    operator = _operator(x_operator, body)
    return await _control(order_id, response, control.decide, "approved", operator)


@router.post("/orders/{order_id}/reject", **ACTION_ROUTE)
async def reject(
    order_id: OrderIdPath,
    response: Response,
    body: ActionIn | None = None,
    x_operator: OperatorHeader = None,
) -> Any:
    """Make a saga AWAITING_APPROVAL undo what it did (202); 409 in any other state."""
    operator = _operator(x_operator, body)
    return await _control(order_id, response, control.decide, "rejected", operator)


@router.post("/orders/{order_id}/cancel", **ACTION_ROUTE)
async def cancel(
    order_id: OrderIdPath,
    response: Response,
    body: ActionIn | None = None,
    x_operator: OperatorHeader = None,
) -> Any:
    """Stop the saga at its next safe point and undo what it did (202); 409 once it ended.
    Also while it waits for approval, or while a step is in flight (that step is undone).
    The reason is kept in the order's error: 'cancelled by request: <reason>'."""
    operator = _operator(x_operator, body)
    return await _control(order_id, response, control.cancel, operator)


@router.post("/orders/{order_id}/retry-compensation", **ACTION_ROUTE)
async def retry_compensation(
    order_id: OrderIdPath,
    response: Response,
    body: ActionIn | None = None,
    x_operator: OperatorHeader = None,
) -> Any:
    """Make a saga parked in COMPENSATION_FAILED try its remaining compensations again."""
    operator = _operator(x_operator, body)
    return await _control(order_id, response, control.retry_compensation, operator)


def _operator(name: str | None, body: ActionIn | None) -> control.Operator:
    return control.Operator(name or control.UNKNOWN_OPERATOR, body.reason if body else None)


async def _control(order_id: str, response: Response, request: Any, *args: Any) -> OrderAccepted:
    def settle_and_wake() -> dict[str, Any]:
        with db.connection() as conn:
            wake = request(conn, order_id, *args)
        if wake is not None:
            db.within_wait(
                lambda: order_fulfillment.wake(wake.workflow_id, wake.topic, wake.idempotency_key)
            )
        with db.connection() as conn:
            view = views.order_view(conn, order_id)
        assert view is not None
        return view

    view = await run_in_threadpool(settle_and_wake)
    response.headers["Location"] = f"/orders/{order_id}"
    return OrderAccepted(order_id=order_id, saga_id=view["saga_id"], state=view["state"])
