"""What can go wrong with a request about an order (mapped to HTTP in api/errors.py)."""


class OrderError(Exception):
    """Base of the errors a client can cause; the message is safe to show."""


class OrderNotFound(OrderError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} not found")


class IdempotencyConflict(OrderError):
    """The key (or order_id) was already used for a different request body."""


class NotAllowedNow(OrderError):
    """The saga's state does not allow the request (approving a saga that is not waiting)."""
