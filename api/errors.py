"""Every error a client can see, mapped to HTTP in one place. No stack trace ever leaves."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orders.errors import IdempotencyConflict, OrderError, OrderNotFound

log = logging.getLogger(__name__)

STATUS = {OrderNotFound: 404, IdempotencyConflict: 409}


def install(app: FastAPI) -> None:
    """Register the handlers. Validation errors keep FastAPI's 422 shape: {"detail": [...]}."""

    @app.exception_handler(OrderError)
    async def order_error(request: Request, error: OrderError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=STATUS.get(type(error), 400))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)
