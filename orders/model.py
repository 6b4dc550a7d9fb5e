"""Names of the saga's states and steps, and the shape of an order (JSON values only)."""

from typing import Literal, NotRequired, TypedDict, get_args

SagaState = Literal[
    "STARTED",
    "PENDING",
    "AWAITING_APPROVAL",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "COMPENSATION_FAILED",
]
SAGA_STATES: tuple[str, ...] = get_args(SagaState)
# How the saga is carried: by one DBOS workflow, or by the services' events.
Coordination = Literal["orchestration", "choreography"]
COORDINATIONS: tuple[str, ...] = get_args(Coordination)
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED"})

FORWARD_STEPS = ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation")
COMPENSATION_OF = {  # compensation name -> the forward step it undoes
    "release_reservation": "reserve_inventory",
    "refund_payment": "process_payment",
    "cancel_shipment": "create_shipment",
    "send_cancellation_notice": "send_confirmation",
}
UNDONE_BY = {step: compensation for compensation, step in COMPENSATION_OF.items()}
StepKind = Literal["forward", "compensation"]

# The saga's inboxes (DBOS message topics). A message only wakes the saga; what was decided
# is in its order row, where the first writer wins.
APPROVAL_TOPIC = "approval"  # approve, reject, or cancel while AWAITING_APPROVAL
RETRY_TOPIC = "retry-compensation"  # an operator's retry while COMPENSATION_FAILED


class Item(TypedDict):
    sku: str
    quantity: int


class Address(TypedDict):
    name: str
    line1: str
    line2: NotRequired[str | None]
    city: str
    postal_code: str
    country: str


class Order(TypedDict):
    """The saga's input, as stored in dbos.workflow_input."""

    order_id: str
    customer_id: str
    customer_email: str
    items: list[Item]
    payment_method: str
    shipping_address: Address


def idempotency_key(order_id: str, operation: str) -> str:
    """The key a downstream operation is made idempotent by: the business identity,
    never the workflow id (a forked or retried saga must not act twice)."""
    return f"{order_id}:{operation}"
