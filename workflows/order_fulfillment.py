"""The order saga: reserve, pay, ship, confirm; on failure, undo what was done, in reverse."""

from collections.abc import Callable
from typing import Any, TypedDict

from dbos import DBOS, PortableWorkflowError, SetWorkflowID
from dbos import error as dbos_errors

from orders.model import Order
from services.outcomes import Outcome, is_refused
from steps.inventory import release_reservation, reserve_inventory
from steps.notifications import send_cancellation_notice, send_confirmation
from steps.payments import process_payment, refund_payment
from steps.runner import StepFailed
from steps.saga import record_failure
from steps.shipping import cancel_shipment, create_shipment

Compensation = Callable[[Order, str], Outcome]


class SagaResult(TypedDict):
    state: str
    error: str | None


class Refused(Exception):
    """A step's service refused for a business reason (declined card, no stock, ...)."""


# What makes the saga compensate. A step's recorded error replays as PortableWorkflowError
# named after its original class (DESIGN.md), so those are told apart by name. Anything else
# (DBOS itself failing, shutdown) propagates: the workflow stays PENDING and is recovered,
# and nothing is undone by mistake.
SAGA_FAILURES = (
    Refused,
    StepFailed,
    dbos_errors.DBOSMaxStepRetriesExceeded,
    PortableWorkflowError,
)
STEP_FAILURES_BY_NAME = frozenset({"StepFailed", "DBOSMaxStepRetriesExceeded"})


class Compensations:
    """What undoes each step the saga has attempted so far, to be run in reverse."""

    def __init__(self, order: Order) -> None:
        self._order = order
        self._undo: list[Compensation] = []

    def attempt(self, step: Callable[..., Outcome], undo: Compensation, *args: Any) -> Outcome:
        """Run a forward step; its outcome if done, Refused if its service said no."""
        self._undo.append(undo)  # before the call: a call that raised may still have acted
        outcome = step(self._order, *args)
        if is_refused(outcome):
            self._undo.pop()  # a refusal changed nothing, so there is nothing to undo
            raise Refused(f"{step.__name__} refused: {outcome['reason']}")
        return outcome

    def run_in_reverse(self, reason: str) -> None:
        for undo in reversed(self._undo):
            undo(self._order, reason)


@DBOS.workflow(name="order_fulfillment")
def order_fulfillment(order: Order) -> SagaResult:
    """Fulfil the order, or leave no trace of it: COMPLETED, or FAILED with all undone."""
    saga = Compensations(order)
    try:
        reservation = saga.attempt(reserve_inventory, release_reservation)
        saga.attempt(process_payment, refund_payment, reservation["total_cents"])
        saga.attempt(create_shipment, cancel_shipment)
        saga.attempt(send_confirmation, send_cancellation_notice)
    except SAGA_FAILURES as failure:
        if isinstance(failure, PortableWorkflowError) and failure.name not in STEP_FAILURES_BY_NAME:
            raise
        reason = str(failure)
        saga.run_in_reverse(reason)
        record_failure(order["order_id"], reason)
        return {"state": "FAILED", "error": reason}
    return {"state": "COMPLETED", "error": None}


def start(saga_id: str, order: Order) -> None:
    """Start the order's saga in the background; a saga that already exists is left alone."""
    with SetWorkflowID(saga_id):
        DBOS.start_workflow(order_fulfillment, order)
