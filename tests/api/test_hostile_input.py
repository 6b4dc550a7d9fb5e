"""Hostile input: bodies over 64 KiB (413 on every route, declared or chunked), deep
nesting, huge numbers, odd Unicode and SQL-looking text. None of it becomes a 500; what is
refused stores nothing; what is valid is stored and returned exactly as sent."""

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from api.limits import MAX_BODY_BYTES
from tests.support.orders import new_id, order_body, wait_for_state

TOO_LARGE = {"detail": "request body too large: the limit is 65536 bytes (64 KiB)"}

# One concrete request per operation of the API (test_every_route_is_listed_here keeps it so).
ROUTES = [
    ("POST", "/orders", "/orders"),
    ("GET", "/orders", "/orders"),
    ("GET", "/orders/{order_id}", "/orders/no-such-order"),
    ("POST", "/orders/{order_id}/approve", "/orders/no-such-order/approve"),
    ("POST", "/orders/{order_id}/reject", "/orders/no-such-order/reject"),
    ("POST", "/orders/{order_id}/cancel", "/orders/no-such-order/cancel"),
    ("POST", "/orders/{order_id}/retry-compensation", "/orders/no-such-order/retry-compensation"),
    ("PUT", "/inventory/{sku}", "/inventory/HOSTILE-SKU"),
    ("GET", "/inventory/{sku}", "/inventory/HOSTILE-SKU"),
    ("GET", "/payments", "/payments?order_id=x"),
    ("GET", "/shipments", "/shipments?order_id=x"),
    ("GET", "/notifications", "/notifications?order_id=x"),
    ("PUT", "/faults/{operation}", "/faults/process_payment"),
    ("GET", "/faults/{operation}", "/faults/process_payment"),
    ("GET", "/faults", "/faults"),
    ("GET", "/healthz", "/healthz"),
    ("GET", "/metrics", "/metrics"),
]

SQL = "Robert'); DROP TABLE orders.orders;--"
SQL_LOOKING = [
    SQL,
    "' OR '1'='1",
    "1; SELECT pg_sleep(30);--",
    "%s %(order_id)s $1 {0} \\x27 \\\\'",
    "'; UPDATE inventory.items SET on_hand = 0;--",
]
ODD_UNICODE = {
    "name": "\u202eAda\u202c \u200fLovelace\u200e",  # right-to-left override, RTL/LTR marks
    "line1": "1 Main St \U0001f3e0 \U0001f469\u200d\U0001f469\u200d\U0001f467",  # ZWJ emoji
    "line2": "e" + "\u0301" * 40 + " A\u030angstro\u0308m",  # stacked combining marks, NFD
    "city": "Z\u200bu\u0308rich\ufeff\u2028\u0085",  # zero-width space, BOM, U+2028, NEL
    "postal_code": "\u0661\u0662\u0663\u0664\u0665",  # Arabic-Indic digits
}


def padded(body: Any, size: int) -> bytes:
    """`body` as JSON, padded with trailing whitespace (still valid JSON) to `size` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def chunks(raw: bytes, size: int = 8192) -> Iterator[bytes]:
    """A body httpx sends with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


@pytest.fixture(scope="module")
def known_sku(api: httpx.Client) -> str:
    """An item made before any test here takes its snapshot of what must not change."""
    sku = new_id("SKU")
    api.put(f"/inventory/{sku}", json={"available": 100, "price_cents": 1000}).raise_for_status()
    return sku


def body_for(method: str, path: str, sku: str) -> Any:
    """What the route would accept, so only the size can be why it is refused."""
    if (method, path) == ("POST", "/orders"):
        return order_body({sku: 1})
    if path == "/inventory/{sku}":
        return {"available": 1, "price_cents": 1}
    if path == "/faults/{operation}":
        return {"down": True, "latency_ms": 0}
    return {}


def test_every_route_is_listed_here(api: httpx.Client) -> None:
    served = {
        (method.upper(), path)
        for path, methods in api.get("/openapi.json").json()["paths"].items()
        for method in methods
    }
    assert {(method, path) for method, path, _ in ROUTES} == served


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
@pytest.mark.parametrize(("method", "path", "url"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_a_body_over_64_kib_is_413_on_every_route_and_stores_nothing(
    api: httpx.Client, known_sku: str, method: str, path: str, url: str, transfer: str
) -> None:
    raw = padded(body_for(method, path, known_sku), MAX_BODY_BYTES + 1)
    content: bytes | Iterator[bytes] = raw if transfer == "content-length" else chunks(raw)

    response = api.request(
        method, url, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == TOO_LARGE
    sent = response.request.headers
    if transfer == "chunked":
        assert (sent.get("transfer-encoding"), sent.get("content-length")) == ("chunked", None)
    else:
        assert sent["content-length"] == str(MAX_BODY_BYTES + 1)


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_a_body_of_exactly_64_kib_is_accepted(
    api: httpx.Client, stock: Callable[..., str], transfer: str
) -> None:
    body = order_body({stock(5): 1})
    raw = padded(body, MAX_BODY_BYTES)
    content: bytes | Iterator[bytes] = raw if transfer == "content-length" else chunks(raw)

    response = api.post("/orders", content=content, headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text
    assert response.json()["order_id"] == body["order_id"]
    assert wait_for_state(api, body["order_id"], "COMPLETED")["total_cents"] == 1000


@pytest.mark.usefixtures("nothing_changes")
def test_an_endless_body_is_answered_413_without_being_read_to_its_end(live_url: str) -> None:
    """Chunks keep coming and the last one never does: the answer comes anyway, after little
    more than the limit was read (the rest is not held anywhere)."""
    address = urlsplit(live_url)
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            b"POST /orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        while not select.select([sock], [], [], 0)[0]:
            assert time.monotonic() < deadline, f"no answer after {sent} bytes"
            assert sent < 256 * 1024 * 1024, "the server read 256 MiB without answering"
            sock.sendall(chunk)
            sent += 65536
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < len(
            json.dumps(TOO_LARGE)
        ):
            part = sock.recv(65536)
            assert part, f"connection closed; got {answer!r}"
            answer += part

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert json.loads(body) == TOO_LARGE
    assert sent > MAX_BODY_BYTES


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("depth", "status"),
    [(50, 422), (500, 422), (5_000, 400), (20_000, 400)],
)
def test_deeply_nested_json_is_refused_without_a_500(
    api: httpx.Client, depth: int, status: int
) -> None:
    """Nesting the parser can take is a 422 naming the field; deeper is a 400."""
    nested = "[" * depth + "1" + "]" * depth
    raw = json.dumps(order_body({"WIDGET": 1})).replace('"c-42"', nested)

    response = api.post("/orders", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == status, response.text[:300]
    if status == 422:
        assert ["body", "customer_id"] in [e["loc"] for e in response.json()["detail"]]
    else:
        assert response.json() == {"detail": "There was an error parsing the body"}


@pytest.mark.usefixtures("nothing_changes")
def test_deep_nesting_in_an_unknown_field_is_a_422_naming_it(api: httpx.Client) -> None:
    extra: Any = 1
    for _ in range(200):
        extra = {"a": [extra]}

    response = api.post("/orders", json={**order_body({"WIDGET": 1}), "extra": extra})

    assert response.status_code == 422
    assert ["body", "extra"] in [e["loc"] for e in response.json()["detail"]]


HUGE = "1" + "0" * 400  # 10**400
HUGE_NUMBERS = [
    ("POST", "/orders", "quantity", HUGE, ("body", "items", 0, "quantity")),
    ("POST", "/orders", "quantity", "-" + HUGE, ("body", "items", 0, "quantity")),
    ("POST", "/orders", "quantity", "1e309", ("body", "items", 0, "quantity")),
    ("POST", "/orders", "quantity", "-1e309", ("body", "items", 0, "quantity")),
    ("POST", "/orders", "quantity", "1e-400", ("body", "items", 0, "quantity")),
    ("POST", "/orders", "quantity", "1E3", ("body", "items", 0, "quantity")),
    ("PUT", "/inventory/HUGE-SKU", "available", HUGE, ("body", "available")),
    ("PUT", "/inventory/HUGE-SKU", "price_cents", "1e309", ("body", "price_cents")),
    ("PUT", "/faults/process_payment", "latency_ms", HUGE, ("body", "latency_ms")),
]


def raw_body_with(url: str, field: str, number: str) -> str:
    """The route's valid body as JSON text with `field`'s value replaced by `number` as
    written (json.dumps could not write 1e309 or keep 1E3 as it is)."""
    if url == "/orders":
        body: dict[str, Any] = order_body({"WIDGET": 1})
        body["items"][0]["quantity"] = "@NUMBER@"
    elif url.startswith("/inventory/"):
        body = {"available": 1, "price_cents": 1, field: "@NUMBER@"}
    else:
        body = {"down": False, field: "@NUMBER@"}
    return json.dumps(body).replace('"@NUMBER@"', number)


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("method", "url", "field", "number", "loc"),
    HUGE_NUMBERS,
    ids=[f"{url}-{field}-{number[:8]}" for _, url, field, number, _ in HUGE_NUMBERS],
)
def test_huge_and_odd_numbers_in_bodies_are_a_422(
    api: httpx.Client, method: str, url: str, field: str, number: str, loc: tuple[Any, ...]
) -> None:
    raw = raw_body_with(url, field, number)

    response = api.request(method, url, content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text
    assert list(loc) in [e["loc"] for e in response.json()["detail"]]


@pytest.mark.usefixtures("nothing_changes")
def test_a_number_too_long_to_convert_is_a_400_not_a_500(api: httpx.Client) -> None:
    raw = raw_body_with("/orders", "quantity", "9" * 5000)  # past Python's 4300-digit limit

    response = api.post("/orders", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("url", "loc"),
    [
        (f"/orders?limit={HUGE}", ["query", "limit"]),
        ("/orders?limit=1e309", ["query", "limit"]),
        ("/orders?state=" + SQL, ["query", "state"]),
        ("/orders/" + SQL, ["path", "order_id"]),
        ("/inventory/x' OR '1'='1", ["path", "sku"]),
        ("/payments?order_id=' OR 1=1 --", ["query", "order_id"]),
        ("/shipments?order_id=" + SQL, ["query", "order_id"]),
        ("/notifications?order_id=%E2%80%AEevil", ["query", "order_id"]),
        ("/faults/" + SQL, ["path", "operation"]),
    ],
)
def test_hostile_paths_and_queries_are_a_422(api: httpx.Client, url: str, loc: list[Any]) -> None:
    response = api.get(url)

    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]]


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize("wait", [HUGE, "1e309", "inf", "nan", "-0", "1e-400"])
def test_a_hostile_wait_is_a_422(api: httpx.Client, wait: str) -> None:
    response = api.post("/orders", json=order_body({"WIDGET": 1}), params={"wait": wait})

    assert response.status_code == 422, response.text
    assert ["query", "wait"] in [e["loc"] for e in response.json()["detail"]]


def stored_request(db: psycopg.Connection[Any], order_id: str) -> dict[str, Any]:
    row = db.execute(
        "SELECT request FROM orders.orders WHERE order_id = %s", (order_id,)
    ).fetchone()
    assert row is not None
    return dict(row[0])


def test_odd_unicode_in_names_and_addresses_is_stored_exactly(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    customer = "\u5ba2\u6237-\U0001d518\U0001d52b\U0001d526"  # CJK, mathematical fraktur
    body = order_body({stock(5): 1}, customer_id=customer)
    body["shipping_address"].update(ODD_UNICODE)

    placed = api.post("/orders", json=body)
    view = wait_for_state(api, body["order_id"], "COMPLETED")

    assert placed.status_code == 202, placed.text
    assert view["total_cents"] == 1000
    stored = stored_request(db, body["order_id"])
    assert stored["customer_id"] == customer
    for field, text in ODD_UNICODE.items():
        assert stored["shipping_address"][field] == text, field  # no normalization, no trimming
        assert stored["shipping_address"][field].encode() == text.encode()


@pytest.mark.parametrize(("length", "status"), [(200, 202), (201, 422)])
def test_length_limits_count_characters_not_bytes(
    api: httpx.Client, stock: Callable[..., str], length: int, status: int
) -> None:
    body = order_body({stock(5): 1})
    body["shipping_address"]["name"] = "\U0001f600" * length  # 4 bytes each in UTF-8

    response = api.post("/orders", json=body)

    assert response.status_code == status, response.text


def test_sql_looking_text_is_stored_and_returned_literally(
    api: httpx.Client, db: psycopg.Connection[Any], stock: Callable[..., str]
) -> None:
    body = order_body({stock(5, price_cents=100_000): 1}, customer_id="'; DROP SCHEMA dbos;--")
    address = body["shipping_address"]
    address.update(name=SQL_LOOKING[0], line1=SQL_LOOKING[1], line2=SQL_LOOKING[3])
    address.update(city=SQL_LOOKING[4], postal_code="';--")
    key = {"Idempotency-Key": "Robert');DROP-TABLE-orders.orders;--" + new_id("k")}

    placed = api.post("/orders", json=body, headers=key)
    again = api.post("/orders", json=body, headers=key)
    wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")  # 100000 cents: it waits
    cancelled = api.post(f"/orders/{body['order_id']}/cancel", json={"reason": SQL_LOOKING[2]})
    view = wait_for_state(api, body["order_id"], "FAILED")

    assert (placed.status_code, again.status_code, cancelled.status_code) == (202, 202, 202)
    assert again.json()["saga_id"] == placed.json()["saga_id"]
    assert view["error"] == f"cancelled by request: {SQL_LOOKING[2]}"  # as sent, to the byte
    assert api.get(f"/orders/{body['order_id']}").json()["error"] == view["error"]
    stored = stored_request(db, body["order_id"])
    assert stored["customer_id"] == body["customer_id"]
    assert stored["shipping_address"] == {**address, "country": "US"}
    row = db.execute(
        "SELECT idempotency_key FROM orders.orders WHERE order_id = %s", (body["order_id"],)
    ).fetchone()
    assert row is not None
    assert row[0] == key["Idempotency-Key"]
    tables = db.execute(
        "SELECT to_regclass('orders.orders')::text, to_regnamespace('dbos')::text"
    ).fetchone()
    assert tables == ("orders.orders", "dbos")
    assert api.get("/orders", params={"limit": 1}).status_code == 200


BODY_ROUTES = [
    ("POST", "/orders", "/orders"),
    ("PUT", "/inventory/{sku}", "/inventory/HOSTILE-SKU"),
    ("PUT", "/faults/{operation}", "/faults/process_payment"),
    ("POST", "/orders/{order_id}/cancel", "/orders/no-such-order/cancel"),
]


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(("method", "path", "url"), BODY_ROUTES, ids=[p for _, p, _ in BODY_ROUTES])
def test_a_body_that_is_not_utf8_is_a_documented_400_on_every_route_with_a_body(
    api: httpx.Client, method: str, path: str, url: str
) -> None:
    """Found by the fuzzing (tests/api/test_fuzz.py): these 400s were not in the schema."""
    response = api.request(
        method, url, content=b'{"down": "\xff\xfe"}', headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    documented = api.get("/openapi.json").json()["paths"][path][method.lower()]["responses"]
    assert "400" in documented
