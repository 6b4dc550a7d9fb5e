"""Request and response bodies. Validation happens here, before anything is stored."""

from datetime import datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from orders.model import Coordination, SagaState

IDENTIFIER = r"^[A-Za-z0-9_-]{1,64}$"
SKU = r"^[A-Za-z0-9._-]{1,64}$"
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"  # PostgreSQL text cannot even hold NUL

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER)]
Sku = Annotated[str, StringConstraints(pattern=SKU)]


def _text(min_length: int, max_length: int) -> Any:
    return StringConstraints(
        min_length=min_length, max_length=max_length, pattern=NO_CONTROL_CHARACTERS
    )


Text = Annotated[str, _text(1, 200)]


def _deliverable_syntax(address: str) -> str:
    # test_environment admits the reserved .test domain that the @bounce.test card uses.
    try:
        return validate_email(address, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as error:
        raise ValueError(f"not a valid e-mail address: {error}") from None


Email = Annotated[
    str,
    StringConstraints(max_length=254),
    AfterValidator(_deliverable_syntax),
    Field(json_schema_extra={"format": "email"}),
]
Country = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z]{2}$"), AfterValidator(lambda code: code.upper())
]


class Strict(BaseModel):
    """JSON types as written (no "2" for 2), and no fields beyond those documented."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ItemIn(Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=1000)


class AddressIn(Strict):
    name: Text
    line1: Text
    line2: Annotated[str, _text(0, 200)] | None = None
    city: Text
    postal_code: Annotated[str, _text(1, 20)]
    country: Country = Field(description="ISO 3166-1 alpha-2 code, e.g. US")


class OrderIn(Strict):
    order_id: Identifier | None = Field(default=None, description="Generated when absent")
    customer_id: Annotated[str, _text(1, 64)]
    customer_email: Email
    items: list[ItemIn] = Field(min_length=1, max_length=100)
    payment_method: Annotated[str, StringConstraints(pattern=r"^pm_[A-Za-z0-9_]{1,60}$")] = Field(
        description="A test card: pm_card_visa, pm_card_declined, pm_card_flaky, ..."
    )
    shipping_address: AddressIn
    coordination: Coordination = Field(
        default="orchestration",
        description="orchestration: one DBOS workflow runs the saga; choreography: the "
        "services react to each other's events (docs/CHOREOGRAPHY.md). Part of the request: "
        "the same Idempotency-Key with another coordination is a conflict",
    )

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[ItemIn]) -> list[ItemIn]:
        skus = [item.sku for item in items]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise ValueError(f"each sku may appear once; repeated: {', '.join(repeated)}")
        return items


class EventView(BaseModel):
    type: str = Field(description="OrderPlaced, InventoryReserved, ... (docs/CHOREOGRAPHY.md)")
    at: datetime
    by: str = Field(description="The service that emitted it")


class OrderAccepted(BaseModel):
    order_id: str
    saga_id: str
    state: SagaState


class Approval(BaseModel):
    deadline: datetime = Field(description="When the saga stops waiting and compensates")
    decision: Literal["approved", "rejected", "timed_out"] | None


class AttemptView(BaseModel):
    attempt: int = Field(description="1 for the first; counted across crashes and restarts")
    started_at: datetime
    finished_at: datetime | None
    outcome: Literal["ok", "refused", "transient", "error"] | None = Field(
        description="ok; refused (a business no); transient (tried again, if tries are "
        "left); error; null while it runs, or if its process stopped during it"
    )
    error: str | None


class StepView(BaseModel):
    name: str
    status: Literal["pending", "executing", "completed", "failed", "compensating", "compensated"]
    attempts: int
    error: str | None = Field(description="The last attempt's error")
    started_at: datetime | None
    finished_at: datetime | None
    history: list[AttemptView] = Field(description="Every attempt, oldest first")


class ActionView(BaseModel):
    action: Literal["approve", "reject", "cancel", "retry-compensation"]
    at: datetime
    by: str = Field(description="The X-Operator header of the request, else 'unknown'")
    reason: str | None


class OrderView(BaseModel):
    order_id: str
    saga_id: str
    state: SagaState
    customer_id: str
    total_cents: int | None = Field(description="Fixed when the inventory is reserved")
    error: str | None
    current_step: str | None
    steps: list[StepView]
    compensations: list[StepView]
    dbos_status: str | None = Field(description="The DBOS workflow status behind the saga")
    approval: Approval | None = Field(description="Set once the order waited for approval")
    cancel_requested_at: datetime | None
    needs_attention: bool = Field(
        description="Not COMPLETED/FAILED, and parked, or its workflow ended without finishing "
        "it, or unchanged for more than ATTENTION_AFTER_SECONDS (past its approval deadline, "
        "if waiting for one)"
    )
    attention_reason: str | None = Field(
        description="Which rule makes it need attention: 'parked', 'workflow ended without "
        "finishing it', 'unchanged for N s' (+ ' past its approval deadline'); else null"
    )
    trace_id: str | None = Field(
        description="The saga's OpenTelemetry trace (32 hex digits), from POST /orders "
        "through every step; null when tracing was off (OTEL_EXPORTER_OTLP_ENDPOINT unset)"
    )
    parked_count: int = Field(description="How many times it parked in COMPENSATION_FAILED")
    executor_id: str | None = Field(description="The DBOS executor that runs (or ran) it")
    application_version: str | None = Field(description="The code version that runs it")
    actions: list[ActionView] = Field(description="The operators' accepted requests, oldest first")
    coordination: Coordination
    workflow_id: str = Field(
        description="The DBOS workflow carrying the saga now: its saga_id, or a choreographed "
        "order's newest event handler (dbos_status, executor_id are that workflow's)"
    )
    events: list[EventView] = Field(
        description="A choreographed order's events in the order they happened (orchestration: "
        "none)"
    )
    created_at: datetime
    updated_at: datetime


class OrderSummary(BaseModel):
    order_id: str
    saga_id: str
    state: SagaState
    total_cents: int | None
    error: str | None
    current_step: str | None
    customer_id: str
    needs_attention: bool
    attention_reason: str | None
    coordination: Coordination
    created_at: datetime
    updated_at: datetime


class OrderList(BaseModel):
    orders: list[OrderSummary]
    next: str | None = Field(
        description="More orders follow: pass this as `before` for the next page; else null"
    )


class ItemPut(Strict):
    available: int = Field(ge=0, le=1_000_000_000)
    price_cents: int = Field(ge=0, le=1_000_000_000_000)


class ItemOut(BaseModel):
    sku: str
    available: int
    price_cents: int


class PaymentOut(BaseModel):
    payment_id: str
    order_id: str
    amount_cents: int
    status: Literal["captured", "refunded"]


class ShipmentOut(BaseModel):
    shipment_id: str
    order_id: str
    status: Literal["created", "cancelled"]
    tracking_number: str


class NotificationOut(BaseModel):
    notification_id: str
    order_id: str
    kind: Literal["confirmation", "cancellation"]
    to: str


class FaultIn(Strict):
    down: bool
    latency_ms: int = Field(default=0, ge=0, le=600_000, description="Extra latency per call")


class FaultOut(BaseModel):
    operation: str
    down: bool
    latency_ms: int


class ActionIn(Strict):
    """The optional body of approve, reject, cancel and retry-compensation."""

    reason: Annotated[str, _text(1, 200)] | None = Field(
        default=None,
        description="Why: recorded with the action; a cancel's is also kept in the order's "
        "error ('cancelled by request: <reason>')",
    )


class Problem(BaseModel):
    """Every error other than a validation error."""

    detail: str
