"""Access: the service listens on 127.0.0.1 unless HOST says otherwise, and with API_TOKEN
set every call that changes state, other than POST /orders, needs `Authorization: Bearer
<token>` (401 otherwise, and nothing changes). Reads and placing orders stay open.

One service subprocess (`python -m api`, started without HOST and with API_TOKEN) on a
database of its own serves every test here: the suite's in-process app runs without a token.
"""

import signal
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from tests.api.conftest import state_a_request_could_change
from tests.support import postgres
from tests.support.orders import order_body, wait_for_state
from tests.support.process import ServiceProcess

TOKEN = "s3cret-token-for-the-access-tests"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
BIG = 100_000  # cents: the order waits for approval (APPROVAL_THRESHOLD_CENTS)

# Every call that changes state other than POST /orders: (method, url template, body).
PROTECTED = [
    ("PUT", "/inventory/{sku}", {"available": 7, "price_cents": 1}),
    ("PUT", "/faults/{operation}", {"down": True, "latency_ms": 5}),
    ("POST", "/orders/{order_id}/approve", None),
    ("POST", "/orders/{order_id}/reject", None),
    ("POST", "/orders/{order_id}/cancel", {"reason": "not allowed"}),
    ("POST", "/orders/{order_id}/retry-compensation", None),
]
PROTECTED_OPERATIONS = {(method, path) for method, path, _ in PROTECTED}
MISSING = "this call needs 'Authorization: Bearer <API_TOKEN>'"
INVALID = "the bearer token is not valid"
# Ways to get it wrong: the Authorization header as sent (bytes: any latin-1 byte can
# arrive), and the detail of the 401.
WRONG = {
    "no-header": (None, MISSING),
    "bearer-without-token": (b"Bearer", MISSING),
    "basic-scheme": (f"Basic {TOKEN}".encode(), MISSING),
    "no-scheme": (TOKEN.encode(), MISSING),
    "wrong-token": (b"Bearer not-the-token", INVALID),
    "token-prefix": (f"Bearer {TOKEN[:-1]}".encode(), INVALID),
    "token-longer": (f"Bearer {TOKEN}x".encode(), INVALID),
    "other-case": (f"Bearer {TOKEN.upper()}".encode(), INVALID),
    "non-ascii": ("Bearer s3cr\u00e9t-\u00ff".encode("latin-1"), INVALID),
}


class ServiceWithoutHost(ServiceProcess):
    """The service with no HOST in its environment, as `make run` starts it by default."""

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        environment = super().environment(env)
        del environment["HOST"]
        return environment


@pytest.fixture(scope="module")
def service_db() -> Iterator[str]:
    url = postgres.create_database("saga_access")
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module")
def secured(service_db: str) -> Iterator[ServiceProcess]:
    process = ServiceWithoutHost(
        service_db,
        API_TOKEN=TOKEN,
        APPROVAL_THRESHOLD_CENTS=str(BIG),
        APPROVAL_TIMEOUT_SECONDS="600",  # a waiting order keeps waiting through the module
        RETRY_BACKOFF_SECONDS="0.02",
        SEED_DEMO_CATALOG="false",
        LOG_LEVEL="WARNING",
    )
    process.start()
    yield process
    assert process.stop() in (0, -signal.SIGTERM), process.tail()  # uvicorn re-raises it


@pytest.fixture(scope="module")
def client(secured: ServiceProcess) -> Iterator[httpx.Client]:
    """A client of the secured service that sends no token unless told to."""
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def sql(service_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(service_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def waiting(client: httpx.Client) -> Iterator[dict[str, Any]]:
    """An order AWAITING_APPROVAL (for 600 s), on an item of its own; its body. Cancelled
    (with the token) at the end so the service stops with no saga waiting."""
    sku = "ACCESS-SKU"
    client.put(f"/inventory/{sku}", json={"available": 5, "price_cents": BIG}, headers=RIGHT)
    body = order_body({sku: 1})
    assert client.post("/orders", json=body).status_code == 202  # no token needed
    wait_for_state(client, body["order_id"], "AWAITING_APPROVAL")
    yield body
    client.post(f"/orders/{body['order_id']}/cancel", headers=RIGHT)
    wait_for_state(client, body["order_id"], "FAILED")


def url_of(template: str, waiting: dict[str, Any]) -> str:
    return template.format(
        sku=waiting["items"][0]["sku"], operation="process_payment", order_id=waiting["order_id"]
    )


def order_row(sql: psycopg.Connection[Any], order_id: str) -> tuple[Any, ...]:
    row = sql.execute(
        """SELECT state, decision, decided_at, cancel_requested_at, cancel_reason, updated_at
             FROM orders.orders WHERE order_id = %s""",
        (order_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_without_host_the_service_listens_on_127_0_0_1_only(secured: ServiceProcess) -> None:
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(secured.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }

    assert listening == {("127.0.0.1", secured.port)}
    # 127.0.0.2 is this machine too: a socket bound to 0.0.0.0 would answer there.
    for address in ["127.0.0.2", *non_loopback_addresses()]:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, secured.port), timeout=5).close()


def non_loopback_addresses() -> list[str]:
    return [
        a.address
        for addresses in psutil.net_if_addrs().values()
        for a in addresses
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


@pytest.mark.parametrize(("wrong", "detail"), list(WRONG.values()), ids=list(WRONG))
@pytest.mark.parametrize(
    ("method", "template", "body"), PROTECTED, ids=[f"{m} {t}" for m, t, _ in PROTECTED]
)
def test_a_state_changing_call_without_the_token_is_401_and_changes_nothing(
    client: httpx.Client,
    sql: psycopg.Connection[Any],
    waiting: dict[str, Any],
    method: str,
    template: str,
    body: Any,
    wrong: bytes | None,
    detail: str,
) -> None:
    url = url_of(template, waiting)
    headers = {} if wrong is None else {"Authorization": wrong}
    before = (state_a_request_could_change(sql), order_row(sql, waiting["order_id"]))
    item_before = client.get(url_of("/inventory/{sku}", waiting)).json()

    response = client.request(method, url, json=body, headers=headers)

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": detail}
    assert (state_a_request_could_change(sql), order_row(sql, waiting["order_id"])) == before
    assert client.get(url_of("/inventory/{sku}", waiting)).json() == item_before
    assert client.get("/faults/process_payment").json() == {
        "operation": "process_payment", "down": False, "latency_ms": 0
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("PUT", "/inventory/A", {"available": -1, "price_cents": 1}),  # invalid body
        ("PUT", "/inventory/A%20B", {"available": 1, "price_cents": 1}),  # invalid path
        ("PUT", "/faults/teleport", {"down": True}),  # no such operation
        ("POST", "/orders/no-such-order/approve", None),  # no such order
        ("POST", "/orders/no-such-order/retry-compensation", None),
    ],
)
def test_the_token_is_checked_before_the_request_itself(
    client: httpx.Client, method: str, url: str, body: Any
) -> None:
    """No 404 or 422 tells a caller without the token what exists or what is valid."""
    response = client.request(method, url, json=body)

    assert response.status_code == 401, response.text


def test_the_right_token_lets_each_protected_call_through(
    client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    sku = "ACCESS-SKU-2"
    put = client.put(f"/inventory/{sku}", json={"available": 9, "price_cents": BIG}, headers=RIGHT)
    fault = client.put("/faults/cancel_shipment", json={"down": True}, headers=RIGHT)
    repaired = client.put("/faults/cancel_shipment", json={"down": False}, headers=RIGHT)
    first, second, third = (order_body({sku: 1}) for _ in range(3))
    for body in (first, second, third):
        assert client.post("/orders", json=body).status_code == 202
        wait_for_state(client, body["order_id"], "AWAITING_APPROVAL")

    approved = client.post(f"/orders/{first['order_id']}/approve", headers=RIGHT)
    rejected = client.post(f"/orders/{second['order_id']}/reject", headers=RIGHT)
    cancelled = client.post(f"/orders/{third['order_id']}/cancel", headers=RIGHT)
    retried = client.post(f"/orders/{first['order_id']}/retry-compensation", headers=RIGHT)

    assert (put.status_code, put.json()["available"]) == (200, 9)
    assert (fault.status_code, fault.json()["down"], repaired.status_code) == (200, True, 200)
    assert client.get("/faults/cancel_shipment").json()["down"] is False
    assert (approved.status_code, rejected.status_code, cancelled.status_code) == (202, 202, 202)
    assert retried.status_code == 409  # through the check, to the saga's own rule
    assert wait_for_state(client, first["order_id"], "COMPLETED")["approval"]["decision"] == (
        "approved"
    )
    assert wait_for_state(client, second["order_id"], "FAILED")["error"] == (
        "rejected by the approver"
    )
    assert wait_for_state(client, third["order_id"], "FAILED")["error"] == "cancelled by request"
    assert order_row(sql, first["order_id"])[1] == "approved"


def test_reading_and_placing_orders_need_no_token(
    client: httpx.Client, waiting: dict[str, Any]
) -> None:
    order_id, sku = waiting["order_id"], waiting["items"][0]["sku"]
    for url in [
        "/healthz",
        "/orders",
        f"/orders/{order_id}",
        f"/inventory/{sku}",
        f"/payments?order_id={order_id}",
        f"/shipments?order_id={order_id}",
        f"/notifications?order_id={order_id}",
        "/faults",
        "/faults/process_payment",
        "/openapi.json",
        "/docs",
    ]:
        assert client.get(url).status_code == 200, url
    body = order_body({"NO-SUCH-SKU": 1})
    assert client.post("/orders", json=body).status_code == 202
    assert wait_for_state(client, body["order_id"], "FAILED")["error"].startswith(
        "reserve_inventory refused"
    )


def test_the_docs_show_which_calls_need_the_token(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()

    scheme = spec["components"]["securitySchemes"]["ApiToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    needing = {
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
        if operation.get("security") == [{"ApiToken": []}]
    }
    assert needing == PROTECTED_OPERATIONS
    for method, path in PROTECTED_OPERATIONS:
        assert "401" in spec["paths"][path][method.lower()]["responses"]


def test_a_service_without_api_token_documents_no_token(api: httpx.Client) -> None:
    """The suite's in-process app runs without API_TOKEN: its calls are open, and its
    schema says so (no security requirement, no 401)."""
    spec = api.get("/openapi.json").json()

    assert "securitySchemes" not in spec.get("components", {})
    for methods in spec["paths"].values():
        for operation in methods.values():
            assert "security" not in operation
            assert "401" not in operation["responses"]
    assert api.put("/inventory/OPEN-SKU", json={"available": 1, "price_cents": 1}).is_success


def test_an_empty_api_token_is_refused_at_start(service_db: str) -> None:
    """API_TOKEN= (empty) would protect nothing; the service refuses to start with it."""
    process = ServiceProcess(service_db, API_TOKEN="", EXECUTOR_ID="empty-token-check")

    assert process.start_expecting_failure(timeout=30) != 0
    assert "api_token" in process.log.read_text()
