"""The operator's command line, `.venv/bin/saga` (docs/CLI.md), run as the installed script
against the real service: exit 0 when done, 1 when the service refuses (its message shown),
2 on bad usage, 3 when the service cannot be reached; never a traceback.

Each run of the script costs about half a second of Python start-up, so each test runs it
only a few times. Approvals are decided on a service of this module's own (a subprocess with
API_TOKEN set and an approval deadline long enough for a subprocess to make it); the rest
runs on the suite's in-process app (no token, APPROVAL_TIMEOUT_SECONDS=4).
"""

import json
import os
import signal
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaos.service import free_port
from cli.http import Client, Failure, answer_of, describe_detail, operator_name
from cli.main import main
from tests.support import postgres
from tests.support.orders import new_id, order_body, wait_for_state
from tests.support.process import ServiceProcess

SAGA = Path(sysconfig.get_path("scripts")) / "saga"
TOKEN = "cli-test-token"
WITH_TOKEN = {"Authorization": f"Bearer {TOKEN}"}
BIG = 100_000  # cents: at APPROVAL_THRESHOLD_CENTS, the order waits for approval
AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}


def saga(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed script with SAGA_URL=url (and API_TOKEN=token if given)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"API_TOKEN", "SAGA_URL", "SAGA_TIMEOUT", "COLUMNS"}
    }
    env |= {"SAGA_URL": url, "PYTHONIOENCODING": "utf-8"}
    # Compiled once, not at every run: with PYTHONDONTWRITEBYTECODE each start-up compiles
    # typer, rich and httpx from source again (about twice as long).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if token is not None:
        env["API_TOKEN"] = token
    return subprocess.run(
        [str(SAGA), *args], env=env, capture_output=True, text=True, encoding="utf-8", timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run ended with `code`, one line on stderr and no traceback; that line."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saga: ")
    return lines[0]


def place(api: httpx.Client, sku: str, quantity: int = 1, **fields: Any) -> dict[str, Any]:
    """An order placed and waited for until it ended; its view."""
    response = api.post("/orders", json=order_body({sku: quantity}, **fields), params={"wait": 30})
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


# --- on the suite's app -------------------------------------------------------------------


@pytest.fixture(scope="module")
def completed(api: httpx.Client) -> dict[str, Any]:
    sku = new_id("CLI")
    api.put(f"/inventory/{sku}", json={"available": 9, "price_cents": 1234}).raise_for_status()
    view = place(api, sku, 2)
    assert view["state"] == "COMPLETED"
    return view


def test_list_shows_an_order_and_its_json_is_the_apis(
    live_url: str, api: httpx.Client, completed: dict[str, Any]
) -> None:
    order_id = completed["order_id"]

    table = saga(live_url, "list", "--search", order_id)
    as_json = saga(live_url, "list", "--state", "completed", "--search", order_id, "--json")
    other_state = saga(live_url, "list", "--state", "FAILED", "--search", order_id)

    assert table.returncode == 0, table.stderr
    assert order_id in table.stdout
    assert "COMPLETED" in table.stdout
    assert "$24.68" in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    listing = json.loads(as_json.stdout)
    assert listing == api.get("/orders", params={"state": "COMPLETED", "search": order_id}).json()
    assert [o["order_id"] for o in listing["orders"]] == [order_id]
    assert other_state.returncode == 0
    assert order_id not in other_state.stdout


def test_show_prints_the_timeline_and_its_json_is_the_apis(
    live_url: str, api: httpx.Client, completed: dict[str, Any]
) -> None:
    order_id = completed["order_id"]

    shown = saga(live_url, "show", order_id)
    as_json = saga(live_url, "show", order_id, "--json")

    assert shown.returncode == 0, shown.stderr
    for word in [order_id, "COMPLETED", "$24.68", "timeline", "attempts", "operator actions"]:
        assert word in shown.stdout
    for step in ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation"):
        assert step in shown.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == api.get(f"/orders/{order_id}").json()


def test_a_choreographed_order_is_listed_by_its_style_and_shown_with_its_events(
    live_url: str, api: httpx.Client, stock: Callable[..., str]
) -> None:
    view = place(api, stock(3), coordination="choreography")
    order_id = view["order_id"]

    listed = saga(live_url, "list", "--coordination", "CHOREOGRAPHY", "--search", order_id)
    other = saga(live_url, "list", "--coordination", "orchestration", "--search", order_id)
    shown = saga(live_url, "show", order_id)

    assert listed.returncode == 0, listed.stderr
    assert order_id in listed.stdout
    assert "choreography" in listed.stdout
    assert order_id not in other.stdout
    assert shown.returncode == 0, shown.stderr
    assert "events" in shown.stdout
    for event in view["events"]:
        assert event["type"] in shown.stdout
    assert "notifications" in shown.stdout  # OrderConfirmed's emitter


def test_show_of_a_failed_order_has_its_compensations(
    live_url: str, api: httpx.Client, stock: Callable[..., str]
) -> None:
    view = place(api, stock(3), payment_method="pm_card_declined")
    assert view["state"] == "FAILED"

    shown = saga(live_url, "show", view["order_id"])

    assert shown.returncode == 0, shown.stderr
    assert "FAILED" in shown.stdout
    assert "release_reservation" in shown.stdout  # beside reserve_inventory, which it undid
    assert "refused" in shown.stdout  # the payment's attempt
    assert view["error"].split(":")[0] in shown.stdout


@pytest.mark.usefixtures("faults_repaired")
def test_a_parked_saga_is_shown_and_retried(
    live_url: str, api: httpx.Client, stock: Callable[..., str]
) -> None:
    body = order_body({stock(5): 1}, shipping_address=AQ)
    api.put("/faults/refund_payment", json={"down": True}).raise_for_status()
    api.post("/orders", json=body).raise_for_status()
    order_id = body["order_id"]
    wait_for_state(api, order_id, "COMPENSATION_FAILED")

    shown = saga(live_url, "show", order_id)
    api.put("/faults/refund_payment", json={"down": False}).raise_for_status()
    retried = saga(live_url, "retry", order_id, "--reason", "payments are back")
    view = wait_for_state(api, order_id, "FAILED")

    assert shown.returncode == 0, shown.stderr
    assert "COMPENSATION_FAILED" in shown.stdout
    assert "fault switch is on" in shown.stdout
    assert f"saga retry {order_id}" in shown.stdout  # what to do about it
    assert retried.returncode == 0, retried.stderr
    assert order_id in retried.stdout
    assert [c["name"] for c in view["compensations"]] == ["refund_payment", "release_reservation"]
    assert view["actions"][-1]["action"] == "retry-compensation"
    assert view["actions"][-1]["reason"] == "payments are back"
    assert view["actions"][-1]["by"] == operator_name()


def test_an_unknown_order_is_refused_with_the_apis_message(live_url: str) -> None:
    result = saga(live_url, "show", "no-such-order")

    line = assert_one_line_error(result, 1)
    assert "404" in line
    assert "no-such-order" in line


def test_watch_refreshes_the_list_then_stops(live_url: str, completed: dict[str, Any]) -> None:
    order_id = completed["order_id"]

    result = saga(live_url, "watch", "--count", "2", "--interval", "0.1", "--search", order_id)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("saga watch") == 2  # piped: each refresh printed in turn
    assert result.stdout.count(order_id) == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["list", "--limit", "abc"], ["frobnicate"]],
    ids=["not-a-number", "no-such-command"],
)
def test_bad_usage_exits_2_without_a_traceback(live_url: str, args: list[str]) -> None:
    assert_one_line_error(saga(live_url, *args), 2)


def test_an_unreachable_service_exits_3_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    line = assert_one_line_error(saga(url, "list"), 3)

    assert url in line


# --- in this process: the same entry point, without a Python start-up per case -----------


@pytest.mark.parametrize(
    "args",
    [
        ["show"],  # missing ORDER_ID
        ["show", "a/b"],  # not an order id: no odd URL is built
        ["approve", "x" * 65],
        ["list", "--state", "DONE"],
        ["list", "--coordination", "telepathy"],
        ["list", "--limit", "0"],
        ["cancel", "ord-1", "--reason", ""],
        ["cancel", "ord-1", "--reason", "x" * 201],
        ["watch", "--interval", "0"],
        ["--url", "ftp://example.com", "list"],
    ],
)
def test_bad_usage_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(args)

    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_state_is_case_insensitive_and_the_url_option_wins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"

    code = main(
        ["--url", "http://127.0.0.1:1", "list", "--state", "awaiting_approval", "--url", closed]
    )

    assert code == 3
    assert closed in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (404, {"detail": "order 'x' not found"}, 1, "refused (404): order 'x' not found"),
        (
            422,
            {"detail": [{"loc": ["body", "reason"], "msg": "too long", "type": "x"}]},
            1,
            "refused (422): body.reason: too long",
        ),
        (503, {"detail": "the database is unavailable"}, 3, "could not answer (503): the database"),
        (502, None, 3, "could not answer (502): Bad Gateway (not the saga API's answer"),
        (200, None, 3, "answered 200 without JSON"),
    ],
)
def test_each_answer_maps_to_its_exit_code(status: int, body: Any, code: int, message: str) -> None:
    response = (
        httpx.Response(status, json=body)
        if body is not None
        else httpx.Response(status, text="Bad Gateway")
    )

    with pytest.raises(Failure) as failure:
        answer_of(response, "http://x")

    assert failure.value.code == code
    assert message in failure.value.message


def test_watch_outlives_an_unreachable_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: list[Any] = [
        {"orders": [], "next": None},
        Failure(3, "cannot reach the service at http://x: connection refused"),
        {"orders": [], "next": None},
    ]

    def list_orders(self: Client, **params: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Failure):
            raise answer
        return answer

    monkeypatch.setattr(Client, "list_orders", list_orders)

    code = main(["watch", "--count", "3", "--interval", "0.05"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.count("saga watch") == 3
    assert out.count("connection refused; retrying") == 1


def test_validation_errors_are_printed_readably() -> None:
    body = {
        "detail": [
            {"loc": ["body", "reason"], "msg": "String should have at most 200 characters"},
            {"loc": ["header", "X-Operator"], "msg": "String should match pattern"},
        ]
    }

    assert describe_detail(body) == (
        "body.reason: String should have at most 200 characters; "
        "header.X-Operator: String should match pattern"
    )
    assert describe_detail({"detail": "order 'x' not\nfound"}) == "order 'x' not found"


def test_the_operator_name_is_printable_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "jos\u00e9")
    assert operator_name() == "jos%C3%A9"
    monkeypatch.setattr("getpass.getuser", lambda: "")
    assert operator_name() == "unknown"

    def no_user() -> str:
        raise OSError("no user")

    monkeypatch.setattr("getpass.getuser", no_user)
    assert operator_name() == "unknown"


# --- on a service with API_TOKEN: approvals, and the token ------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[ServiceProcess]:
    """The service with API_TOKEN set and a 600 s approval deadline, on a database of its
    own. Orders still waiting at the end are cancelled, so that it stops promptly."""
    database = postgres.create_database("saga_cli")
    process = ServiceProcess(
        database,
        API_TOKEN=TOKEN,
        APPROVAL_THRESHOLD_CENTS=str(BIG),
        APPROVAL_TIMEOUT_SECONDS="600",
        RETRY_BACKOFF_SECONDS="0.02",
        SEED_DEMO_CATALOG="false",
        LOG_LEVEL="WARNING",
    )
    process.start()
    try:
        yield process
        with httpx.Client(base_url=process.url, headers=WITH_TOKEN, timeout=30) as client:
            waiting = client.get("/orders", params={"state": "AWAITING_APPROVAL"}).json()
            for order in waiting["orders"]:
                client.post(f"/orders/{order['order_id']}/cancel")
            for order in waiting["orders"]:
                wait_for_state(client, order["order_id"], "FAILED")
    finally:
        assert process.stop() in (0, -signal.SIGTERM), process.tail()
        postgres.drop_database(database)


@pytest.fixture(scope="module")
def secure_api(secured: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, headers=WITH_TOKEN, timeout=30) as client:
        yield client


@pytest.fixture
def waiting(secure_api: httpx.Client) -> str:
    """An order AWAITING_APPROVAL on the secured service; its id."""
    sku = new_id("CLI-BIG")
    secure_api.put(f"/inventory/{sku}", json={"available": 5, "price_cents": BIG})
    body = order_body({sku: 1})
    assert secure_api.post("/orders", json=body).status_code == 202
    wait_for_state(secure_api, body["order_id"], "AWAITING_APPROVAL")
    return str(body["order_id"])


def test_approve_needs_the_token_and_is_recorded_with_the_users_name(
    secured: ServiceProcess, secure_api: httpx.Client, waiting: str
) -> None:
    without = saga(secured.url, "approve", waiting)
    approved = saga(secured.url, "approve", waiting, "--reason", "checked by phone", token=TOKEN)
    view = wait_for_state(secure_api, waiting, "COMPLETED")
    again = saga(secured.url, "approve", waiting, token=TOKEN)

    assert assert_one_line_error(without, 1) == (
        "saga: refused (401): this call needs 'Authorization: Bearer <API_TOKEN>' "
        "(set API_TOKEN to the service's token)"
    )
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stdout
    assert view["approval"]["decision"] == "approved"
    assert [{k: a[k] for k in ("action", "by", "reason")} for a in view["actions"]] == [
        {"action": "approve", "by": operator_name(), "reason": "checked by phone"}
    ]
    line = assert_one_line_error(again, 1)  # a completed order cannot be approved
    assert "409" in line
    assert "already approved" in line


def test_reject_prints_the_apis_json(
    secured: ServiceProcess, secure_api: httpx.Client, waiting: str
) -> None:
    rejected = saga(secured.url, "reject", waiting, "--json", token=TOKEN)
    view = wait_for_state(secure_api, waiting, "FAILED")

    assert rejected.returncode == 0, rejected.stderr
    answer = json.loads(rejected.stdout)
    assert answer["order_id"] == waiting
    assert set(answer) == {"order_id", "saga_id", "state"}
    assert view["error"] == "rejected by the approver"
    assert [c["name"] for c in view["compensations"]] == ["release_reservation"]


def test_cancel_with_a_reason(
    secured: ServiceProcess, secure_api: httpx.Client, waiting: str
) -> None:
    cancelled = saga(secured.url, "cancel", waiting, "--reason", "customer called", token=TOKEN)
    view = wait_for_state(secure_api, waiting, "FAILED")

    assert cancelled.returncode == 0, cancelled.stderr
    assert view["error"] == "cancelled by request: customer called"
    assert view["actions"][-1]["action"] == "cancel"
    assert view["actions"][-1]["reason"] == "customer called"
