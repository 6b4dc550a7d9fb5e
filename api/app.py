"""The FastAPI application: routes, error mapping, and the runtime's start and stop."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import errors, orders, services
from runtime import database, lifecycle
from runtime.settings import Settings, get_settings

DESCRIPTION = """Order fulfillment as a durable saga: reserve inventory, process payment,
create shipment, send confirmation; on failure, undo what was done, in reverse.
Every step is checkpointed in PostgreSQL by DBOS, so a killed process resumes where it stopped."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; starting it migrates the database, launches DBOS and resumes sagas."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Off the event loop: it blocks, and DBOS refuses some calls on a loop's thread.
        try:
            await run_in_threadpool(lifecycle.start, settings)
        except BaseException:
            lifecycle.stop()  # give back what was taken: the executor id, the embedded server
            raise
        try:
            yield
        finally:
            await run_in_threadpool(lifecycle.stop)

    app = FastAPI(title="Order saga", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.include_router(orders.router)
    app.include_router(services.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 once migrations ran and DBOS is launched, and the database answers."""
        try:
            with database.connection() as conn:
                conn.execute("SELECT 1")
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app
