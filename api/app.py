"""The FastAPI application: routes, error mapping, and the runtime's start and stop."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from api import access, db, errors, orders, services
from api.limits import BodySizeLimit
from api.responses import TOO_LARGE, UNAVAILABLE
from console import pages
from runtime import lifecycle, metrics, tracing
from runtime.settings import Settings, get_settings

DESCRIPTION = """Order fulfillment as a durable saga: reserve inventory, process payment,
create shipment, send confirmation; on failure, undo what was done, in reverse.
Every step is checkpointed in PostgreSQL by DBOS, so a killed process resumes where it stopped."""


class Health(BaseModel):
    status: Literal["ok"]


class HealthDown(BaseModel):
    status: Literal["unavailable"]
    detail: str


def create_app(
    settings: Settings | None = None, on_started: Callable[[], None] | None = None
) -> FastAPI:
    """The app; starting it migrates the database, launches DBOS and resumes sagas, then
    calls `on_started` (before the server accepts its first call)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Off the event loop: it blocks, and DBOS refuses some calls on a loop's thread.
        try:
            await run_in_threadpool(lifecycle.start, settings)
        except BaseException:
            lifecycle.stop()  # give back what was taken: the executor id, the embedded server
            raise
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await run_in_threadpool(lifecycle.stop)

    app = FastAPI(
        title="Order saga",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=TOO_LARGE,
    )
    app.state.settings = settings  # what api.access checks tokens against
    access.warn_if_exposed(settings)
    app.add_middleware(db.DatabaseBudget)
    app.add_middleware(BodySizeLimit)
    if settings.metrics:
        app.add_middleware(metrics.HttpMetrics)  # outermost: it times and counts every answer
    tracing.configure()
    tracing.instrument(app)  # server spans, if tracing is on (then outermost)
    errors.install(app)
    app.include_router(orders.router, responses=UNAVAILABLE)
    app.include_router(services.router, responses=UNAVAILABLE)
    app.include_router(pages.router)  # the operator's console: GET / and its saga pages
    app.mount(pages.STATIC_PATH, pages.static, name="console-static")
    access.describe(app, settings)

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=Health,
        responses={503: {**UNAVAILABLE[503], "model": HealthDown, "description": "No database"}},
    )
    def healthz() -> JSONResponse:
        """200 once migrations ran and DBOS is launched, and the database answers."""
        try:
            with db.connection() as conn:
                conn.execute("SELECT 1")
        except Exception:
            return JSONResponse(
                {"status": "unavailable", "detail": "the database is unavailable"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return JSONResponse({"status": "ok"})

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={
            200: {"content": {metrics.CONTENT_TYPE_LATEST: {}}},
            404: {"description": "METRICS=false"},
        },
    )
    def prometheus_metrics() -> Response:
        """Prometheus text format: this process's counters and histograms (with several
        serving processes, all of theirs), and the fleet's gauges read from the database.
        No token needed. 404 when METRICS=false."""
        if not settings.metrics:
            return JSONResponse({"detail": "metrics are off (METRICS=false)"}, status_code=404)
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)

    return app
