"""OpenTelemetry traces: on when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.

One trace per order. FastAPI's server span of `POST /orders` (opentelemetry-instrumentation-
fastapi) is the parent of the saga's workflow span, which DBOS makes, and of DBOS's spans of
each step and compensation under it. The link is DBOS's own (`PropagateOtelContext`, or the
enqueue option `otel_context`): the caller's trace context is stored with the workflow (its
`attributes`, key `dbos.otelContext`), so a saga enqueued by an API process and run by a
worker, or recovered after a crash by another process, continues the same trace. The order
view's `trace_id` is read from there too (the saga_status view).

Everything else is the SDK's standard configuration: OTEL_SERVICE_NAME (default
`order-saga`), OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_* ... The
exporter speaks OTLP over HTTP (protobuf), and sends spans in batches, off the saga's path.

Off (no endpoint, or OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none), nothing of
OpenTelemetry is imported or called, and DBOS makes no spans (its `enable_otlp` is off).
"""

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "order-saga"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_provider: "TracerProvider | None" = None


def enabled() -> bool:
    """Whether this process exports traces (read from the environment each time)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure() -> None:
    """Install the SDK's tracer provider and its OTLP exporter, once, if `enabled()`; before
    DBOS is launched, which then makes its spans with it."""
    global _provider
    if _provider is not None or not enabled():
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    # DBOS's enable_otlp also looks for an OpenTelemetry logger provider, for exporting its
    # logs; we export traces only, and its warning that there is none would mislead.
    logging.getLogger("dbos").addFilter(_NoLogProviderWarning())
    log.info("tracing: spans go to %s as %s", _endpoint(), name)


def instrument(app: "FastAPI") -> None:
    """Give every HTTP call a server span (not /healthz and /metrics), if tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls="/healthz,/metrics"
    )


def propagated() -> AbstractContextManager[Any]:
    """Around starting a saga in this process: store the caller's trace context with it."""
    if _provider is None:
        return nullcontext()
    from dbos import PropagateOtelContext

    return PropagateOtelContext()


def carrier() -> dict[str, str] | None:
    """The caller's W3C trace context as DBOS stores it with a workflow (its attribute
    `dbos.otelContext`), for a workflow enqueued in SQL; None when tracing is off or there
    is no trace here."""
    if _provider is None:
        return None
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


def current_context() -> "Context | None":
    """The caller's trace context, for an enqueue through DBOSClient to carry (its option
    `otel_context`); None when tracing is off."""
    if _provider is None:
        return None
    from opentelemetry import context

    return context.get_current()


def active() -> bool:
    """Whether `configure` installed the exporter (DBOS's enable_otlp follows it)."""
    return _provider is not None


def flush() -> None:
    """Send the spans still buffered (at a clean stop; the SDK also does at exit)."""
    if _provider is not None:
        _provider.force_flush()


def _endpoint() -> str:
    return next(os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name))


class _NoLogProviderWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("OTLP is enabled but logger provider not set")
