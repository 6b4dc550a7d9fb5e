"""Bad input gets a 422 naming the problem, and nothing is stored or started."""

from typing import Any

import httpx
import pytest

from tests.support.orders import order_body


def without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return body


def with_(body: dict[str, Any], value: Any, *path: str | int) -> dict[str, Any]:
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def valid() -> dict[str, Any]:
    return order_body({"WIDGET": 1})


BAD_ORDERS = [
    ("missing-email", without(valid(), "customer_email"), ("body", "customer_email")),
    ("missing-items", without(valid(), "items"), ("body", "items")),
    (
        "missing-city",
        without(valid(), "shipping_address", "city"),
        ("body", "shipping_address", "city"),
    ),
    ("no-items", with_(valid(), [], "items"), ("body", "items")),
    (
        "101-items",
        with_(valid(), [{"sku": f"S{i}", "quantity": 1} for i in range(101)], "items"),
        ("body", "items"),
    ),
    ("quantity-0", with_(valid(), 0, "items", 0, "quantity"), ("body", "items", 0, "quantity")),
    (
        "quantity-1001",
        with_(valid(), 1001, "items", 0, "quantity"),
        ("body", "items", 0, "quantity"),
    ),
    (
        "quantity-string",
        with_(valid(), "2", "items", 0, "quantity"),
        ("body", "items", 0, "quantity"),
    ),
    (
        "quantity-float",
        with_(valid(), 1.5, "items", 0, "quantity"),
        ("body", "items", 0, "quantity"),
    ),
    (
        "quantity-huge",
        with_(valid(), 10**30, "items", 0, "quantity"),
        ("body", "items", 0, "quantity"),
    ),
    (
        "bad-email",
        with_(valid(), "ada-at-example.com", "customer_email"),
        ("body", "customer_email"),
    ),
    ("email-no-domain", with_(valid(), "ada@", "customer_email"), ("body", "customer_email")),
    (
        "country-3-letters",
        with_(valid(), "USA", "shipping_address", "country"),
        ("body", "shipping_address", "country"),
    ),
    (
        "country-digit",
        with_(valid(), "U1", "shipping_address", "country"),
        ("body", "shipping_address", "country"),
    ),
    ("unknown-field", with_(valid(), "10OFF", "coupon"), ("body", "coupon")),
    (
        "unknown-address-field",
        with_(valid(), "x", "shipping_address", "planet"),
        ("body", "shipping_address", "planet"),
    ),
    ("order-id-slash", with_(valid(), "a/b", "order_id"), ("body", "order_id")),
    ("order-id-65-chars", with_(valid(), "x" * 65, "order_id"), ("body", "order_id")),
    ("order-id-empty", with_(valid(), "", "order_id"), ("body", "order_id")),
    ("payment-not-pm", with_(valid(), "visa", "payment_method"), ("body", "payment_method")),
    ("sku-with-space", with_(valid(), "WID GET", "items", 0, "sku"), ("body", "items", 0, "sku")),
    ("customer-id-empty", with_(valid(), "", "customer_id"), ("body", "customer_id")),
    ("items-not-a-list", with_(valid(), {"sku": "WIDGET"}, "items"), ("body", "items")),
    (
        "repeated-sku",
        with_(valid(), [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}], "items"),
        ("body", "items"),
    ),
    ("body-is-a-list", [valid()], ("body",)),
    (
        "name-too-long",
        with_(valid(), "n" * 201, "shipping_address", "name"),
        ("body", "shipping_address", "name"),
    ),
]


def locations(response: httpx.Response) -> list[tuple[Any, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(error["loc"]) for error in response.json()["detail"]]


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("body", "field"), [p[1:] for p in BAD_ORDERS], ids=[p[0] for p in BAD_ORDERS]
)
def test_a_bad_order_is_refused_naming_the_field(
    api: httpx.Client, body: Any, field: tuple[Any, ...]
) -> None:
    found = locations(api.post("/orders", json=body))
    assert any(loc[: len(field)] == field for loc in found), found


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        ("{", "application/json"),
        ("", "application/json"),
        ("a=1", "application/x-www-form-urlencoded"),
    ],
    ids=["truncated-json", "empty-body", "form-encoded"],
)
def test_a_body_that_is_not_json_is_refused(api: httpx.Client, raw: str, content_type: str) -> None:
    found = locations(api.post("/orders", content=raw, headers={"content-type": content_type}))
    assert found
    assert found[0][0] == "body"


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("request_args", "field"),
    [
        ({"headers": {"Idempotency-Key": "k" * 256}}, ("header", "idempotency-key")),
        ({"headers": {"Idempotency-Key": "has space"}}, ("header", "idempotency-key")),
        ({"params": {"wait": 61}}, ("query", "wait")),
        ({"params": {"wait": 0}}, ("query", "wait")),
        ({"params": {"wait": "soon"}}, ("query", "wait")),
    ],
    ids=["key-too-long", "key-with-space", "wait-over-60", "wait-zero", "wait-not-a-number"],
)
def test_bad_headers_and_parameters_of_post_orders_are_refused(
    api: httpx.Client, request_args: dict[str, Any], field: tuple[str, ...]
) -> None:
    found = locations(api.post("/orders", json=valid(), **request_args))
    assert field in found


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", "/orders?state=DONE", None, ("query", "state")),
        ("GET", "/orders?limit=0", None, ("query", "limit")),
        ("GET", "/orders?limit=1001", None, ("query", "limit")),
        ("PUT", "/inventory/WIDGET", {"available": -1, "price_cents": 1}, ("body", "available")),
        ("PUT", "/inventory/WIDGET", {"available": 1}, ("body", "price_cents")),
        ("PUT", "/inventory/WIDGET", {"available": 1, "price_cents": 1.5}, ("body", "price_cents")),
        ("PUT", "/inventory/W%20X", {"available": 1, "price_cents": 1}, ("path", "sku")),
        ("GET", "/payments", None, ("query", "order_id")),
        ("GET", "/shipments", None, ("query", "order_id")),
        ("GET", "/notifications", None, ("query", "order_id")),
        ("PUT", "/faults/teleport", {"down": True}, ("path", "operation")),
        ("PUT", "/faults/process_payment", {"down": "yes"}, ("body", "down")),
    ],
)
def test_bad_input_to_the_other_endpoints_is_refused(
    api: httpx.Client, method: str, url: str, body: Any, field: tuple[str, ...]
) -> None:
    assert field in locations(api.request(method, url, json=body))


def test_unknown_order_and_item_are_404(api: httpx.Client) -> None:
    assert api.get("/orders/no-such-order").status_code == 404
    assert api.get("/orders/no-such-order").json() == {"detail": "order 'no-such-order' not found"}
    assert api.get("/inventory/NO-SUCH-SKU").status_code == 404


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("method", "url", "raw", "field"),
    [
        ("POST", "/orders", '{"customer_id": "\\ud800"}', ("body", "customer_id")),
        (
            "POST",
            "/orders",
            '{"items": [{"sku": "A", "quantity": NaN}]}',
            ("body", "items", 0, "quantity"),
        ),
        (
            "PUT",
            "/inventory/WIDGET",
            '{"available": Infinity, "price_cents": 1}',
            ("body", "available"),
        ),
        ("PUT", "/faults/process_payment", '{"down": NaN}', ("body", "down")),
        ("PUT", "/inventory/WIDGET", '{"available": 1, "price_cents": 1, "\\udfff": 1}', ("body",)),
    ],
    ids=["lone-surrogate", "nan-quantity", "infinite-stock", "nan-switch", "surrogate-key"],
)
def test_values_json_cannot_echo_back_are_still_a_422(
    api: httpx.Client, method: str, url: str, raw: str, field: tuple[Any, ...]
) -> None:
    response = api.request(method, url, content=raw, headers={"content-type": "application/json"})

    found = locations(response)
    assert any(loc[: len(field)] == field for loc in found), found


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/orders/ord%00x", ("path", "order_id")),
        ("/inventory/W%00", ("path", "sku")),
        ("/payments?order_id=o%00", ("query", "order_id")),
        ("/shipments?order_id=o%00", ("query", "order_id")),
        ("/notifications?order_id=o%00", ("query", "order_id")),
    ],
)
def test_a_nul_character_in_a_path_or_query_is_a_422(
    api: httpx.Client, url: str, field: tuple[str, ...]
) -> None:
    assert field in locations(api.get(url))


@pytest.mark.usefixtures("nothing_changes")
@pytest.mark.parametrize(
    "raw",
    # 30000 deep is 60000 bytes: under the 64 KiB body limit (api/limits.py), past the parser
    [b'{"customer_id": "\xff\xfe"}', b"[" * 30_000 + b"]" * 30_000],
    ids=["invalid-utf8", "nested-30000-deep"],
)
def test_a_body_that_cannot_even_be_parsed_is_a_400(api: httpx.Client, raw: bytes) -> None:
    response = api.post("/orders", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
