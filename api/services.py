"""The simulated downstream services' own endpoints, and the fault switches."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api import db
from api.access import PROTECTED, UNAUTHORIZED_RESPONSE
from api.responses import UNPARSABLE
from api.schemas import (
    IDENTIFIER,
    SKU,
    FaultIn,
    FaultOut,
    ItemOut,
    ItemPut,
    NotificationOut,
    PaymentOut,
    Problem,
    ShipmentOut,
)
from services import faults, inventory, notifications, payments, shipping

router = APIRouter(tags=["downstream services"])

SkuPath = Annotated[str, Path(pattern=SKU)]
OrderIdQuery = Annotated[str, Query(pattern=IDENTIFIER)]


@router.put(
    "/inventory/{sku}",
    response_model=ItemOut,
    responses=UNAUTHORIZED_RESPONSE | UNPARSABLE,
    **PROTECTED,
)
def put_item(sku: SkuPath, item: ItemPut) -> dict[str, Any]:
    """Create or replace an item: `available` (on hand minus reservations) and price."""
    with db.connection() as conn:
        return inventory.put_item(conn, sku, item.available, item.price_cents)


@router.get("/inventory/{sku}", response_model=ItemOut, responses={404: {"model": Problem}})
def get_item(sku: SkuPath) -> dict[str, Any]:
    with db.connection() as conn:
        item = inventory.get_item(conn, sku)
    if item is None:
        raise HTTPException(404, f"item {sku!r} not found")
    return item


@router.get("/payments", response_model=list[PaymentOut])
def list_payments(order_id: OrderIdQuery) -> list[dict[str, Any]]:
    with db.connection() as conn:
        return payments.payments_for(conn, order_id)


@router.get("/shipments", response_model=list[ShipmentOut])
def list_shipments(order_id: OrderIdQuery) -> list[dict[str, Any]]:
    with db.connection() as conn:
        return shipping.shipments_for(conn, order_id)


@router.get("/notifications", response_model=list[NotificationOut])
def list_notifications(order_id: OrderIdQuery) -> list[dict[str, Any]]:
    with db.connection() as conn:
        return notifications.notifications_for(conn, order_id)


@router.put(
    "/faults/{operation}",
    response_model=FaultOut,
    responses=UNAUTHORIZED_RESPONSE | UNPARSABLE,
    **PROTECTED,
)
def set_fault(operation: faults.Operation, fault: FaultIn) -> dict[str, Any]:
    """While down, the operation fails like an unreachable service (a transient error).
    `latency_ms` makes each call to it that much slower (0 = no extra latency)."""
    with db.connection() as conn:
        faults.set_switch(conn, operation, fault.down, fault.latency_ms)
    return {"operation": operation, "down": fault.down, "latency_ms": fault.latency_ms}


@router.get("/faults", response_model=dict[str, bool])
def get_faults() -> dict[str, bool]:
    """Each operation and whether it is down."""
    with db.connection() as conn:
        return {op: switch.down for op, switch in faults.switches(conn).items()}


@router.get("/faults/{operation}", response_model=FaultOut)
def get_fault(operation: faults.Operation) -> dict[str, Any]:
    """One operation's switch: down, and its extra latency."""
    with db.connection() as conn:
        switch = faults.switch(conn, operation)
    return {"operation": operation, "down": switch.down, "latency_ms": switch.latency_ms}
