"""The order saga: reserve, pay, ship, confirm; on failure, undo what was done, in reverse."""

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypedDict

from dbos import DBOS, DBOSClient, EnqueueOptions, PortableWorkflowError, SetWorkflowID
from dbos import error as dbos_errors

from orders.model import APPROVAL_TOPIC, RETRY_TOPIC, Order
from runtime import logs, tracing
from runtime.settings import get_settings
from services.outcomes import Outcome, is_refused
from steps.inventory import release_reservation, reserve_inventory
from steps.notifications import send_cancellation_notice, send_confirmation
from steps.payments import process_payment, refund_payment
from steps.runner import StepFailed
from steps.saga import (
    open_approval,
    park_saga,
    record_failure,
    seconds_until_deadline,
    settle_approval,
)
from steps.shipping import cancel_shipment, create_shipment

Compensation = Callable[[Order, str], Outcome]
WORKFLOW_NAME = "order_fulfillment"
SAGA_QUEUE = "sagas"  # where an API-only process puts sagas for the workers
PARKED_RECHECK_SECONDS = 86_400.0  # a parked saga waits for a retry request in turns this long
MAX_WAIT_SECONDS = 3_600.0  # the longest wait between two tries of a compensation


class Policy(TypedDict):
    """The knobs a saga keeps from its start (part of its recorded input), so a changed
    environment cannot make a replay take another path."""

    approval_threshold_cents: int
    approval_timeout_seconds: float
    compensation_attempts: int
    retry_backoff_seconds: float


class SagaResult(TypedDict):
    state: str
    error: str | None


class Refused(Exception):
    """A step's service refused for a business reason (declined card, no stock, ...)."""


class Stopped(Exception):
    """Someone or something stopped the saga: a cancel, a rejection, an approval timeout."""


# What makes the saga compensate. A step's recorded error replays as PortableWorkflowError
# named after its original class (DESIGN.md), so those are told apart by name. Anything else
# (DBOS itself failing, shutdown) propagates: the workflow stays PENDING and is recovered,
# and nothing is undone by mistake.
SAGA_FAILURES = (
    Refused,
    Stopped,
    StepFailed,
    dbos_errors.DBOSMaxStepRetriesExceeded,
    PortableWorkflowError,
)
STEP_FAILURES_BY_NAME = frozenset({"StepFailed", "DBOSMaxStepRetriesExceeded"})


# Never dead-lettered (DBOS's default gives up on a workflow recovered 100 times): a saga
# waiting for approval or parked for an operator may live through any number of restarts,
# and it must still finish or undo. Nothing in it crashes the process, so no crash loop.
@DBOS.workflow(name=WORKFLOW_NAME, max_recovery_attempts=None)
def order_fulfillment(order: Order, policy: Policy) -> SagaResult:
    """Fulfil the order, or leave no trace of it: COMPLETED, or FAILED with all undone."""
    with logs.saga(order["order_id"], DBOS.workflow_id or ""):
        return _fulfil(order, policy)


def _fulfil(order: Order, policy: Policy) -> SagaResult:
    saga = Compensations(order, policy)
    try:
        reservation = saga.attempt(reserve_inventory, release_reservation)
        if reservation["total_cents"] >= policy["approval_threshold_cents"]:
            wait_for_approval(order["order_id"], policy["approval_timeout_seconds"])
        saga.attempt(process_payment, refund_payment, reservation["total_cents"])
        saga.attempt(create_shipment, cancel_shipment)
        saga.attempt(send_confirmation, send_cancellation_notice)
    except SAGA_FAILURES as failure:
        if isinstance(failure, PortableWorkflowError) and failure.name not in STEP_FAILURES_BY_NAME:
            raise
        reason = str(failure)
        saga.undo_in_reverse(reason)
        record_failure(order["order_id"], reason)
        return {"state": "FAILED", "error": reason}
    return {"state": "COMPLETED", "error": None}


def wait_for_approval(order_id: str, timeout_seconds: float) -> None:
    """Wait in AWAITING_APPROVAL until approved; Stopped on reject, timeout or cancel.
    The deadline is durable: a restart keeps it."""
    opening = open_approval(order_id, timeout_seconds)
    cancel = opening["cancel"]
    if cancel is None:
        # Woken by a decision or a cancel, or not before the deadline in the order's row.
        seconds = seconds_until_deadline(order_id, opening["seconds_left"])
        DBOS.recv(APPROVAL_TOPIC, timeout_seconds=seconds)
        settled = settle_approval(order_id)
        cancel = settled["cancel"]
        if cancel is None and settled["decision"] == "rejected":
            raise Stopped("rejected by the approver")
        if cancel is None and settled["decision"] == "timed_out":
            raise Stopped(f"not approved within {timeout_seconds:g} s")
    if cancel is not None:
        raise Stopped(cancel)


class Compensations:
    """What undoes each step the saga has attempted so far, to be run in reverse."""

    def __init__(self, order: Order, policy: Policy) -> None:
        self._order = order
        self._policy = policy
        self._undo: list[Compensation] = []

    def attempt(self, step: Callable[..., Outcome], undo: Compensation, *args: Any) -> Outcome:
        """Run a forward step; its outcome if done. Refused if its service said no,
        Stopped if the saga was cancelled before or while it ran."""
        self._undo.append(undo)  # before the call: a call that raised may still have acted
        outcome = step(self._order, *args)
        if is_refused(outcome):
            self._undo.pop()  # a refusal is the key's final answer: nothing was done
            raise Refused(f"{step.__name__} refused: {outcome['reason']}")
        if outcome["outcome"] == "cancelled":
            if not outcome["may_have_acted"]:
                self._undo.pop()  # the step never began, so there is nothing to undo
            raise Stopped(outcome["reason"])
        if "cancel_requested" in outcome:
            raise Stopped(outcome["cancel_requested"])
        return outcome

    def undo_in_reverse(self, reason: str) -> None:
        """Run every undo, newest first; none is skipped, none is forgotten."""
        for undo in reversed(self._undo):
            undo_until_done(self._order, self._policy, undo, reason)


def undo_until_done(order: Order, policy: Policy, undo: Compensation, reason: str) -> None:
    """Run `undo` until it succeeds. One that keeps failing parks the saga until an operator
    asks for a retry (also a choreographed order's: workflows/choreography.py)."""
    while not _try(order, policy, undo, reason):
        park_saga(order["order_id"], undo.__name__)
        while DBOS.recv(RETRY_TOPIC, timeout_seconds=PARKED_RECHECK_SECONDS) is None:
            pass


def _try(order: Order, policy: Policy, undo: Compensation, reason: str) -> bool:
    """COMPENSATION_ATTEMPTS tries with durable, doubling waits in between."""
    attempts, backoff = policy["compensation_attempts"], policy["retry_backoff_seconds"]
    for attempt in range(attempts):
        try:
            undo(order, reason)
            return True
        except (StepFailed, PortableWorkflowError) as error:
            if isinstance(error, PortableWorkflowError) and error.name != "StepFailed":
                raise
            if attempt + 1 < attempts:
                DBOS.sleep(min(backoff * 2**attempt, MAX_WAIT_SECONDS))
    return False


def policy_now() -> Policy:
    """The policy a saga started now gets, from the settings."""
    settings = get_settings()
    return {
        "approval_threshold_cents": settings.approval_threshold_cents,
        "approval_timeout_seconds": settings.approval_timeout_seconds,
        "compensation_attempts": settings.compensation_attempts,
        "retry_backoff_seconds": settings.retry_backoff_seconds,
    }


# Set in an API-only process (PROCESS_ROLE=api): it runs no saga, it only enqueues them.
_client: DBOSClient | None = None


def enqueue_only(client: DBOSClient | None) -> None:
    """From now on, start sagas by putting them on SAGA_QUEUE through `client` (None: run
    them in this process again)."""
    global _client
    _client = client


def enqueues_only() -> bool:
    """This process runs no saga: it puts them on queues for the workers."""
    return _client is not None


def start(saga_id: str, order: Order) -> "Future[SagaResult] | None":
    """Start the order's saga in the background (here, or on the queue for the workers); a
    saga that already exists is left alone. When it runs in this process, the future of its
    result (which is set once DBOS has recorded the end); else None."""
    if _client is not None:
        options: EnqueueOptions = {
            "queue_name": SAGA_QUEUE,
            "workflow_name": WORKFLOW_NAME,
            "workflow_id": saga_id,
            "app_version": get_settings().application_version,
        }
        if (trace_context := tracing.current_context()) is not None:
            options["otel_context"] = trace_context
        _client.enqueue(options, order, policy_now())
        return None
    # The caller's trace context (POST /orders) is stored with the saga, if tracing is on:
    # a recovery after a crash continues the same trace (runtime/tracing.py).
    with SetWorkflowID(saga_id), tracing.propagated():
        handle = DBOS.start_workflow(order_fulfillment, order, policy_now())
    future = getattr(handle, "future", None)  # a saga begun here; not one begun elsewhere
    return future if isinstance(future, Future) else None


def wake(workflow_id: str, topic: str, idempotency_key: str) -> None:
    """Send the saga's workflow (or a choreographed order's handler) a wake-up on `topic`;
    the same key sends it once."""
    if _client is not None:
        _client.send(workflow_id, {"wake": topic}, topic, idempotency_key=idempotency_key)
        return
    DBOS.send(workflow_id, {"wake": topic}, topic, idempotency_key=idempotency_key)
