"""Every error a client can see, mapped to HTTP in one place. No stack trace ever leaves."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError
from psycopg_pool import PoolTimeout

from orders.errors import IdempotencyConflict, NotAllowedNow, OrderError, OrderNotFound
from runtime.database import DatabaseUnavailable

log = logging.getLogger(__name__)

STATUS = {OrderNotFound: 404, IdempotencyConflict: 409, NotAllowedNow: 409}
RETRY_AFTER_SECONDS = "5"


def install(app: FastAPI) -> None:
    """Register the handlers. Validation errors keep FastAPI's 422 shape: {"detail": [...]}."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # Where and what, never the input itself: echoing NaN or a lone surrogate back
        # cannot be encoded as JSON and would turn a 422 into a 500.
        detail = [
            {
                "loc": [_printable(part) for part in e["loc"]],
                "msg": _printable(e["msg"]),
                "type": e["type"],
            }
            for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(OrderError)
    async def order_error(request: Request, error: OrderError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=STATUS.get(type(error), 400))

    # The database is down, busy or slow: the client may try again, and nothing it sent was
    # half-done (an order stored before the outage resumes; its key finds it again).
    @app.exception_handler(DatabaseUnavailable)
    async def database_down(request: Request, error: DatabaseUnavailable) -> JSONResponse:
        log.warning("503 on %s %s: %s", request.method, request.url.path, error)
        return _unavailable(
            "the database is unavailable; try again shortly "
            "(resending with the same Idempotency-Key is safe)"
        )

    @app.exception_handler(PoolTimeout)
    async def busy(request: Request, error: PoolTimeout) -> JSONResponse:
        return _unavailable("the service is busy: no database connection came free; try again")

    @app.exception_handler(OperationalError)
    async def database_slow(request: Request, error: OperationalError) -> JSONResponse:
        log.warning("503 on %s %s: %s", request.method, request.url.path, error)
        return _unavailable("the database did not answer in time; try again")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


def _printable(part: Any) -> Any:
    if isinstance(part, str):
        return part.encode("utf-8", "replace").decode("utf-8")
    return part
