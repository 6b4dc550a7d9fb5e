"""The choreographed saga: no workflow runs the order; each service reacts to the events it
subscribes to (orders/events.py) and emits the next.

Every handler is one DBOS workflow, `handle_event`, doing one reaction. Once its reaction is
done, it starts the handlers of the events it emitted, as DBOS child workflows under the
ids of their deliveries: DBOS records each start as a step of the handler, so a handler
that dies before it has started them all is recovered and starts the rest, and none twice.

A stage's step and its undo are the very steps of the orchestrated saga (steps/), so an
order's effects, idempotency keys, journal rows and retries are the same whichever style
ran it. What a step's journal write records is announced in that write's transaction: a
forward step's event (done, or failed when its service refused or a cancel stopped it)
and a compensation's (undone) commit with it. The reactions that decide something
themselves (a step that ran out of tries, the approval's end, the order's end) emit from
the handler afterwards; a crash in between replays the handler, and the event, emitted
again, changes nothing.
"""

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import psycopg
from dbos import DBOS, PortableWorkflowError, SetWorkflowID

from orders import events
from orders.events import Carried, Stage
from orders.model import Order
from runtime import database, logs, tracing
from runtime.settings import get_settings
from services.outcomes import Outcome, is_refused
from steps import runner
from steps.inventory import release_reservation, reserve_inventory
from steps.notifications import send_cancellation_notice, send_confirmation
from steps.payments import process_payment, refund_payment
from steps.runner import Recorded
from steps.saga import record_failure
from steps.shipping import cancel_shipment, create_shipment
from workflows import order_fulfillment
from workflows.order_fulfillment import (
    SAGA_FAILURES,
    STEP_FAILURES_BY_NAME,
    Policy,
    Stopped,
    policy_now,
    undo_until_done,
    wait_for_approval,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STEPS: dict[str, Callable[..., Outcome]] = {
    f.__name__: f
    for f in (
        reserve_inventory,
        release_reservation,
        process_payment,
        refund_payment,
        create_shipment,
        cancel_shipment,
        send_confirmation,
        send_cancellation_notice,
    )
}
STAGE_OF_STEP = {stage.step: stage for stage in events.STAGES}
STAGE_OF_UNDO = {stage.undo: stage for stage in events.STAGES}


class Handling:
    """One event being handled by one subscriber."""

    def __init__(
        self, event: dict[str, Any], order: Order, policy: Policy, saga_id: str, workflow: str
    ) -> None:
        self.payload: dict[str, Any] = event["payload"]
        self.carried = Carried(saga_id, order, cast(dict[str, Any], policy))
        self.order = order
        self.policy = policy
        self.workflow = workflow  # this handler's DBOS workflow id

    def emit(self, conn: psycopg.Connection[Any], event: str, **payload: Any) -> None:
        """Emit `event` of this order in `conn`'s transaction."""
        if events.emit(conn, self.carried, event, payload, caused_by=self.workflow):
            log.info("%s emitted", event)

    def emit_now(self, event: str, **payload: Any) -> None:
        """Emit `event` in a transaction of its own (idempotent: a replay emits nothing)."""
        _emit_now(self, event, payload)


def _persistently(action: Callable[[], T]) -> T:
    """Run `action` (idempotent database work in a handler's own code, not a step) until
    it gets through: a transient error (an outage, a cut connection, a statement timed out
    while the database stalled) must not end the handler, which would strand the order
    (`make chaos` saw an emit time out). Waits double from 0.1 s to 5 s."""
    wait = 0.1
    while True:
        try:
            return database.outlasting_outages(action)()
        except Exception as error:
            if not runner.is_transient(error):
                raise
            log.warning("handler's database work failed, trying again: %s", error)
            time.sleep(wait)
            wait = min(wait * 2, 5.0)


def _emit_now(handling: Handling, event: str, payload: dict[str, Any]) -> None:
    def emit() -> None:
        with database.connection() as conn, conn.transaction():
            handling.emit(conn, event, **payload)

    _persistently(emit)


# Never dead-lettered, as the orchestrated saga (workflows/order_fulfillment.py): a handler
# waiting for approval or parked may live through any number of restarts.
@DBOS.workflow(name=events.HANDLER_WORKFLOW, max_recovery_attempts=None)
def handle_event(
    subscriber: str,
    reaction: str,
    event: dict[str, Any],
    order: Order,
    policy: Policy,
    saga_id: str,
) -> str:
    """`subscriber`'s `reaction` to `event` of the order: 'handled', or 'duplicate' if this
    workflow is not the one the bus delivers the event to (someone started a handler again
    under another id; DBOS runs one id once): each event is handled once per subscriber."""
    workflow = DBOS.workflow_id or ""
    with logs.saga(order["order_id"], saga_id):
        if workflow != events.workflow_id(saga_id, event["type"], subscriber):
            log.warning(
                "%s of %s runs under another id than its delivery's (a duplicate): ignored",
                event["type"],
                subscriber,
            )
            return "duplicate"
        handling = Handling(event, order, policy, saga_id, workflow)
        log.info("%s: %s on %s", subscriber, reaction, event["type"])
        REACTIONS[reaction](handling, reaction)
        start(_successors(order["order_id"], workflow), handling.carried)
        return "handled"


def start(deliveries: list[events.Delivery], carried: Carried) -> None:
    """Start the handlers of these deliveries (in a handler: as its children, each once),
    on the caller's trace when tracing is on (DBOS does not pass it to children by itself):
    one trace per order, from POST /orders through every handler."""
    for delivery in deliveries:
        with SetWorkflowID(delivery.workflow_id), tracing.propagated():
            DBOS.start_workflow(handle_event, *delivery.arguments(carried))


def _successors(order_id: str, workflow: str | None) -> list[events.Delivery]:
    def read() -> list[events.Delivery]:
        with database.connection() as conn:
            return events.successors(conn, order_id, workflow)

    return _persistently(read)


def _forward(h: Handling, reaction: str) -> None:
    """A stage's step, after the event before it: announce it done, or failed."""
    stage = STAGE_OF_STEP[reaction]
    step = STEPS[stage.step]
    args = (h.payload["total_cents"],) if stage.step == "process_payment" else ()
    total = h.payload.get("total_cents")

    def announce(conn: psycopg.Connection[Any], recorded: Recorded) -> None:
        outcome, cancel = recorded
        if is_refused(outcome):  # nothing was done: the stage before undoes its own
            h.emit(conn, stage.failed, reason=f"{stage.step} refused: {outcome['reason']}",
                   undo=False)  # fmt: skip
        elif outcome["outcome"] == "cancelled":  # not run now; an earlier try may have acted
            h.emit(conn, stage.failed, reason=outcome["reason"], undo=outcome["may_have_acted"])
        elif cancel is not None:  # done, but the order was cancelled meanwhile: undo it too
            h.emit(conn, stage.failed, reason=cancel, undo=True)
        else:
            h.emit(conn, stage.done, total_cents=outcome.get("total_cents", total))

    try:
        with events.announcing(announce, h.order["order_id"], h.workflow):
            step(h.order, *args)
    except SAGA_FAILURES as failure:
        if isinstance(failure, PortableWorkflowError) and failure.name not in STEP_FAILURES_BY_NAME:
            raise
        # It ran out of tries or broke: it may have acted, so its own service undoes it.
        h.emit_now(stage.failed, reason=str(failure), undo=True)


def _undo(h: Handling, reaction: str) -> None:
    """A stage's compensation: undo it, then announce it undone (tries, parking and the
    operator's retry as in orchestration)."""
    stage: Stage = STAGE_OF_UNDO[reaction]
    reason = h.payload["reason"]

    def announce(conn: psycopg.Connection[Any], recorded: Recorded) -> None:
        h.emit(conn, stage.undone, reason=reason)

    with events.announcing(announce, h.order["order_id"], h.workflow):
        undo_until_done(h.order, h.policy, STEPS[stage.undo], reason)


def _await_approval(h: Handling, reaction: str) -> None:
    """The order service holds the order for an approver (the same wait as orchestration)."""
    try:
        wait_for_approval(h.order["order_id"], h.policy["approval_timeout_seconds"])
    except Stopped as stopped:
        h.emit_now(events.APPROVAL_FAILED, reason=str(stopped))
        return
    h.emit_now(events.ORDER_APPROVED, total_cents=h.payload["total_cents"])


def _complete_order(h: Handling, reaction: str) -> None:
    """The order was COMPLETED by the statement that recorded its confirmation (as in
    orchestration, so a cancel cannot slip in between); the order service announces it."""
    h.emit_now(events.ORDER_COMPLETED)


def _fail_order(h: Handling, reaction: str) -> None:
    """Everything done was undone (or nothing was done): the order is FAILED."""
    reason = h.payload["reason"]

    def announce(conn: psycopg.Connection[Any], recorded: Any) -> None:
        h.emit(conn, events.ORDER_FAILED, reason=reason)

    with events.announcing(announce, h.order["order_id"], h.workflow):
        record_failure(h.order["order_id"], reason)


REACTIONS: dict[str, Callable[[Handling, str], None]] = {
    **{stage.step: _forward for stage in events.STAGES},
    **{stage.undo: _undo for stage in events.STAGES},
    events.AWAIT_APPROVAL: _await_approval,
    events.COMPLETE_ORDER: _complete_order,
    events.FAIL_ORDER: _fail_order,
}


def place(conn: psycopg.Connection[Any], saga_id: str, order: Order) -> None:
    """Emit the order's OrderPlaced in `conn`'s transaction (the one storing the order),
    with the policy it is placed under: its saga has begun. A process that runs no saga
    (PROCESS_ROLE=api) enqueues its handler for the workers in the same statement; any
    other starts it once that transaction has committed (`begin`)."""
    policy = cast(dict[str, Any], policy_now())
    events.emit(
        conn,
        Carried(saga_id, order, policy),
        events.ORDER_PLACED,
        {"policy": policy},
        caused_by=None,
        enqueue_as=(
            get_settings().application_version if order_fulfillment.enqueues_only() else None
        ),
        trace=tracing.carrier() if order_fulfillment.enqueues_only() else None,
    )


def begin(saga_id: str, order: Order) -> None:
    """Start the handlers of the order's OrderPlaced, stored and committed (nothing to do
    where they were enqueued; a retried request starts none twice). A crash before this is
    made good by the sweep (`start_unstarted`)."""
    if order_fulfillment.enqueues_only():
        return
    with database.connection() as conn:
        placed = events.successors(conn, order["order_id"], None)
    for delivery in placed:  # OrderPlaced's, which carries the policy
        start([delivery], Carried(saga_id, order, delivery.event["payload"]["policy"]))


def start_unstarted(min_age_seconds: float) -> int:
    """Start every delivery whose handler was never started (its starter died first), at
    least `min_age_seconds` old; how many."""
    with database.connection() as conn:
        found = events.unstarted(conn, min_age_seconds)
    for delivery, carried in found:
        start([delivery], carried)
    return len(found)
