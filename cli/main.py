"""`saga`: the operator's command line, a client of the HTTP API (docs/CLI.md).

Exit codes: 0 done, 1 the service refused (a 4xx; its message is printed), 2 bad usage,
3 the service cannot be reached or could not answer (connection refused, timeout, DNS, 5xx).
Nothing here prints a traceback for a usage or network error: one line on stderr, and the code.
"""

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
import typer.main
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from cli import render
from cli.http import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    REFUSED,
    UNREACHABLE,
    USAGE,
    Client,
    Failure,
    Target,
    operator_name,
)

ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class State(StrEnum):
    STARTED = "STARTED"
    PENDING = "PENDING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


app = typer.Typer(
    name="saga",
    help="Operate the order saga through its HTTP API (SAGA_URL, API_TOKEN). "
    "Exit codes: 0 ok, 1 refused by the service, 2 bad usage, 3 service unreachable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- checks on what the user typed (bad usage: exit 2, before anything is sent) ----------


def _order_id(value: str) -> str:
    if not ORDER_ID.fullmatch(value):
        raise typer.BadParameter("an order id is 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _reason(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 200 or CONTROL_CHARACTERS.search(value):
        raise typer.BadParameter("a reason is 1-200 characters, without control characters")
    return value


def _search(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 64 or CONTROL_CHARACTERS.search(value):
        raise typer.BadParameter("a search is 1-64 characters, without control characters")
    return value


def _before(value: str | None) -> str | None:
    return None if value is None else _order_id(value)


# --- options every command takes (also before the command: `saga --url U list`) ----------

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", metavar="URL", help=f"The service (default: SAGA_URL, else {DEFAULT_URL})."
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.001,
        metavar="SECONDS",
        help=f"Give up on an answer after this long (default {DEFAULT_TIMEOUT:g} s).",
    ),
]
OrderIdArgument = Annotated[
    str, typer.Argument(metavar="ORDER_ID", callback=_order_id, show_default=False)
]
ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", metavar="TEXT", callback=_reason, help="Why (1-200 characters)."),
]
StateOption = Annotated[
    State | None,
    typer.Option(
        "--state",
        case_sensitive=False,
        metavar="STATE",
        help="Only sagas in this state (any case): " + ", ".join(s.value for s in State) + ".",
    ),
]


class Style(StrEnum):
    ORCHESTRATION = "orchestration"
    CHOREOGRAPHY = "choreography"


CoordinationOption = Annotated[
    Style | None,
    typer.Option(
        "--coordination",
        case_sensitive=False,
        metavar="STYLE",
        help="Only sagas of this coordination: orchestration or choreography.",
    ),
]
AttentionOption = Annotated[
    bool | None,
    typer.Option(
        "--attention/--no-attention",
        help="Only sagas that need attention (or, --no-attention, only those that don't).",
        show_default=False,
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit", min=1, max=1000, metavar="N", help="At most N (1-1000; default 50)."),
]
SearchOption = Annotated[
    str | None,
    typer.Option(
        "--search",
        metavar="TEXT",
        callback=_search,
        help="Order ids starting with TEXT, or customer id TEXT.",
    ),
]


@dataclass
class Settings:
    url: str | None = None
    timeout: float | None = None
    json: bool = False


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", metavar="URL", envvar="SAGA_URL", help=f"The service (default {DEFAULT_URL})."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.001,
            metavar="SECONDS",
            envvar="SAGA_TIMEOUT",
            help=f"Give up on an answer after this long (default {DEFAULT_TIMEOUT:g} s).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """The API token, when the service has one, is read from API_TOKEN."""
    ctx.obj = Settings(url=url, timeout=timeout, json=json_output)


@dataclass(frozen=True)
class Run:
    """One command's settings: its own options over the global ones over the environment."""

    target: Target
    json: bool

    @classmethod
    def of(cls, ctx: typer.Context, url: str | None, timeout: float | None, as_json: bool) -> "Run":
        root = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
        token = os.environ.get("API_TOKEN") or None
        target = Target(
            url=url or root.url or DEFAULT_URL,
            token=token,
            timeout=timeout or root.timeout or DEFAULT_TIMEOUT,
        )
        return cls(target=target, json=as_json or root.json)

    def call(self, request: Callable[[Client], Any]) -> Any:
        """The answer to `request`, or the failure reported and the command ended."""
        try:
            with Client(self.target) as client:
                return request(client)
        except Failure as failure:
            self.fail(failure)

    def fail(self, failure: Failure) -> NoReturn:
        if self.json and failure.body is not None:
            print_json(failure.body)
        error(failure.message)
        raise typer.Exit(failure.code)


def console() -> Console:
    """stdout; piped (no terminal), as plain text wide enough for the tables not to wrap."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=200)
    return out


def print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    sys.stderr.write(f"saga: {message}\n")
    sys.stderr.flush()


# --- the commands ----------------------------------------------------------------------


@app.command("list")
def list_orders(
    ctx: typer.Context,
    state: StateOption = None,
    attention: AttentionOption = None,
    limit: LimitOption = None,
    search: SearchOption = None,
    coordination: CoordinationOption = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            metavar="ORDER_ID",
            callback=_before,
            help="The page after this order (the `next` of the previous page).",
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """The sagas, newest first: id, state, current step, total, attention, last change."""
    run = Run.of(ctx, url, timeout, json_output)
    listing = run.call(
        lambda client: client.list_orders(
            state=state.value if state else None,
            limit=limit,
            attention=attention,
            search=search,
            before=before,
            coordination=coordination.value if coordination else None,
        )
    )
    if run.json:
        print_json(listing)
        return
    console().print(render.orders_table(listing))


@app.command()
def show(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """One saga: state, timeline of steps and compensations, attempts, operator actions."""
    run = Run.of(ctx, url, timeout, json_output)
    view = run.call(lambda client: client.order(order_id))
    if run.json:
        print_json(view)
        return
    out = console()
    out.print(render.order_view(view, width=out.width))


def _act(
    ctx: typer.Context,
    action: str,
    order_id: str,
    reason: str | None,
    json_output: bool,
    url: str | None,
    timeout: float | None,
) -> None:
    run = Run.of(ctx, url, timeout, json_output)
    answer = run.call(lambda client: client.act(order_id, action, reason, operator_name()))
    if run.json:
        print_json(answer)
        return
    console().print(render.accepted(action, answer))


@app.command()
def approve(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Let a saga AWAITING_APPROVAL go on."""
    _act(ctx, "approve", order_id, reason, json_output, url, timeout)


@app.command()
def reject(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Make a saga AWAITING_APPROVAL undo what it did."""
    _act(ctx, "reject", order_id, reason, json_output, url, timeout)


@app.command()
def cancel(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Stop a saga that has not ended, and undo what it did."""
    _act(ctx, "cancel", order_id, reason, json_output, url, timeout)


@app.command()
def retry(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Make a saga parked in COMPENSATION_FAILED try its remaining compensations again.

    It calls POST /orders/{id}/retry-compensation.
    """
    _act(ctx, "retry-compensation", order_id, reason, json_output, url, timeout)


@app.command()
def watch(
    ctx: typer.Context,
    state: StateOption = None,
    attention: AttentionOption = None,
    limit: LimitOption = None,
    search: SearchOption = None,
    coordination: CoordinationOption = None,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.05, metavar="SECONDS", help="Time between refreshes."),
    ] = 2.0,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, metavar="N", help="Stop after N refreshes."),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """The list, refreshed every --interval seconds until Ctrl-C (or --count refreshes).

    Once a refresh has worked, an unreachable service is shown on screen and tried again.
    """
    run = Run.of(ctx, url, timeout, json_output)
    out = console()

    def fetch(client: Client) -> Any:
        return client.list_orders(
            state=state.value if state else None,
            limit=limit,
            attention=attention,
            search=search,
            coordination=coordination.value if coordination else None,
        )

    try:
        with Client(run.target) as client:
            _watch(run, out, lambda: fetch(client), interval, count)
    except Failure as failure:
        run.fail(failure)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends


def _watch(
    run: Run, out: Console, fetch: Callable[[], Any], interval: float, count: int | None
) -> None:
    live = out.is_terminal and not run.json
    listing: Any = None
    trouble: str | None = None

    def frame() -> RenderableType:
        now = datetime.now(UTC).strftime("%H:%M:%S")
        title = f"saga watch · {run.target.url} · {now} UTC · every {interval:g} s"
        if live:
            title += " · Ctrl-C to stop"
        lines: list[RenderableType] = [Text(title, style="bold")]
        if trouble:
            lines.append(Text(f"{trouble}; retrying", style="bold red"))
        lines.append(render.orders_table(listing or {"orders": []}))
        return Group(*lines)

    def refresh() -> None:
        nonlocal listing, trouble
        try:
            listing, trouble = fetch(), None
        except Failure as failure:
            if listing is None or failure.code != UNREACHABLE:
                raise  # the first look, or a refusal: the watch cannot go on
            trouble = failure.message

    refresh()
    done = 1
    screen: AbstractContextManager[Live | None] = (
        Live(frame(), console=out, auto_refresh=False) if live else nullcontext()
    )
    with screen as shown:
        while True:
            if run.json:
                sys.stdout.write(json.dumps(listing, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            elif shown is not None:
                shown.update(frame(), refresh=True)
            else:
                out.print(frame())
            if count is not None and done >= count:
                return
            time.sleep(interval)
            refresh()
            done += 1


# --- the entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run `saga`; the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="saga",
            standalone_mode=False,
        )
    except typer.TyperException as problem:  # Click's usage errors and the like
        return _usage_error(problem)
    except typer.Abort:
        error("aborted")
        return 1
    except Failure as failure:  # not expected outside a command; never a traceback
        error(failure.message)
        return failure.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `saga list | head`: the reader left; say nothing more
        _quiet_stdout()
        return 1
    return result if isinstance(result, int) else 0


def _usage_error(problem: typer.TyperException) -> int:
    code = int(getattr(problem, "exit_code", USAGE))
    if type(problem).__name__ == "NoArgsIsHelpError":
        help_text = problem.format_message()  # Rich already printed it; plain Click did not
        if help_text.strip():
            sys.stdout.write(help_text + "\n")
        return code
    ctx = getattr(problem, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(problem.format_message().split())
    error(f"{message}{hint}")
    return code if code != REFUSED else USAGE


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
