"""Every error a client can see, mapped to HTTP in one place. No stack trace ever leaves."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orders.errors import IdempotencyConflict, NotAllowedNow, OrderError, OrderNotFound

log = logging.getLogger(__name__)

STATUS = {OrderNotFound: 404, IdempotencyConflict: 409, NotAllowedNow: 409}


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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


def _printable(part: Any) -> Any:
    if isinstance(part, str):
        return part.encode("utf-8", "replace").decode("utf-8")
    return part
