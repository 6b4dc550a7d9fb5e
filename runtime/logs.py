"""One log format for every logger (ours, DBOS's, uvicorn's), and the saga's ids on its records.

`configure` puts a single handler on the root logger, on standard error: LOG_FORMAT=json
writes one JSON object per record (`ts`, `level`, `logger`, `message`, and the context below;
python-json-logger), LOG_FORMAT=text one readable line; unset, text on a terminal and JSON
otherwise. DBOS's logger and uvicorn's, which otherwise bring handlers and formats of their
own, hand their records to it.

Inside a saga every record carries `order_id` and `saga_id`, and inside a step also `step`
and `attempt` (the journal's count: the attempt's number across crashes and restarts). They
come from context variables (`saga`, `step`) that the workflow and the step runner set, read
by a filter on the handler, so nothing threads them through calls; a record that names them
itself (`extra=`) keeps its own.
"""

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_saga: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("saga", default=None)
_step: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("step", default=None)

CONTEXT_FIELDS = ("order_id", "saga_id", "step", "attempt", "trace_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "order-saga"


@contextmanager
def saga(order_id: str, saga_id: str) -> Iterator[None]:
    """Records logged inside carry the saga's ids."""
    token = _saga.set({"order_id": order_id, "saga_id": saga_id})
    try:
        yield
    finally:
        _saga.reset(token)


@contextmanager
def step(name: str, attempt: int | None = None) -> Iterator[dict[str, Any]]:
    """Records logged inside carry the step (and its attempt, which may be set later on the
    dict this yields, once the journal has counted it)."""
    fields: dict[str, Any] = {"step": name}
    if attempt is not None:
        fields["attempt"] = attempt
    token = _step.set(fields)
    try:
        yield fields
    finally:
        _step.reset(token)


def current() -> dict[str, Any]:
    """The saga and step context of the caller (empty outside a saga)."""
    return {**(_saga.get() or {}), **(_step.get() or {})}


class ContextFilter(logging.Filter):
    """Adds the saga's context to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "trace_id"):
            trace_id = _trace_id()
            if trace_id is not None:
                record.trace_id = trace_id
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [order_id=… saga_id=… step=… attempt=…]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if hasattr(record, key)
        )
        return f"{line} [{context}]" if context else line


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="ts",
        # uvicorn's records carry their message again with terminal colours
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def configure(level: str, log_format: str | None, stream: TextIO | None = None) -> None:
    """Send every logger's records to one handler on `stream` (standard error), in
    `log_format` ("json" or "text"; None: text on a terminal, else JSON), from `level` up."""
    stream = stream or sys.stderr
    chosen = log_format or ("text" if stream.isatty() else "json")
    handler = logging.StreamHandler(stream)
    handler.name = HANDLER_NAME
    handler.setFormatter(json_formatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # DBOS gives its logger a console handler of its own (and stops propagation) only if it
    # has none: a handler that drops nothing keeps it on ours. uvicorn's loggers are left
    # without handlers (uvicorn.Config(log_config=None)) and propagate here.
    dbos = logging.getLogger("dbos")
    if not dbos.handlers:
        dbos.addHandler(logging.NullHandler())
    dbos.propagate = True
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl command


def _trace_id() -> str | None:
    """The current span's trace id (32 hex digits), if tracing is on and a span is current."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # never imported: tracing is off, at no cost
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
