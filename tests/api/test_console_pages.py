"""The operator's console over HTTP: the fleet page (counts, filters, pages), each saga's page
(timeline, waits, the actions its state allows), 400/404 pages for what cannot be shown,
hostile text escaped, and the static files. The pages are parsed with the standard library's
html.parser; what a browser does with them is tested elsewhere."""

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from orders.model import FORWARD_STEPS, SAGA_STATES
from tests.support.orders import new_id, order_body, wait_for_state

AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}
REFUND_DOWN = "ServiceUnavailable: refund_payment: service unreachable (fault switch is on)"
PAGE_SIZE = 50
MANY = 55
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"

# --- a small DOM over html.parser --------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: list[tuple[str, str | None]], parent: "Node | None"):
        self.tag, self.parent = tag, parent
        self.attrs = {k: v or "" for k, v in attrs}
        self.children: list[Node | str] = []

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return re.sub(r"\s+", " ", "".join(parts)).strip()

    def walk(self) -> Iterator["Node"]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def all(self, tag: str | None = None, **attrs: str | bool) -> list["Node"]:
        """Descendants with this tag and attributes (`data_order` is data-order; True: the
        attribute is there; `class_`: one of the classes)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}

        def matches(node: Node) -> bool:
            for name, value in wanted.items():
                if name not in node.attrs:
                    return False
                if name == "class" and value is not True:
                    if value not in node.attrs["class"].split():
                        return False
                elif value is not True and node.attrs[name] != value:
                    return False
            return tag is None or node.tag == tag

        return [node for node in self.walk() if matches(node)]

    def one(self, tag: str | None = None, **attrs: str | bool) -> "Node":
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", [], None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, attrs, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def html(response: httpx.Response, status: int = 200) -> Node:
    """The page, parsed, after checking it is an HTML page that is never cached."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    builder = _Builder()
    builder.feed(response.text)
    builder.close()
    return builder.root


def listed(page: Node) -> list[Node]:
    """The rows of the fleet page's list (#orders)."""
    return page.one("table", id="orders").all("tr", data_order=True)


def listed_ids(page: Node) -> list[str]:
    return [row.attrs["data-order"] for row in listed(page)]


def buttons(page: Node) -> list[str]:
    return [b.attrs["data-action"] for b in page.all("button", data_action=True)]


# --- sagas to look at ------------------------------------------------------------------------


def put_sku(api: httpx.Client, available: int, price_cents: int = 1000) -> str:
    sku = new_id("SKU")
    api.put(
        f"/inventory/{sku}", json={"available": available, "price_cents": price_cents}
    ).raise_for_status()
    return sku


def place(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    assert api.post("/orders", json=body).status_code == 202
    return body


def ended(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/orders", json=body, params={"wait": 30})
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def big_order(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    """Waits for approval (at the threshold), for APPROVAL_TIMEOUT_SECONDS (4 s here)."""
    body = place(api, order_body({put_sku(api, 5, 50_000): 2}, **fields))
    wait_for_state(api, body["order_id"], "AWAITING_APPROVAL")
    return body


@pytest.fixture(scope="module")
def sagas(api: httpx.Client) -> Iterator[dict[str, dict[str, Any]]]:
    """A completed saga, a failed one (declined card), and one parked in COMPENSATION_FAILED
    (its refund could not get through; the switch is repaired once it parked, and it is
    retried to its end after the module)."""
    sku = put_sku(api, 10)
    completed = place(api, order_body({sku: 1}))
    failed = place(api, order_body({sku: 1}, payment_method="pm_card_declined"))
    api.put("/faults/refund_payment", json={"down": True}).raise_for_status()
    try:
        parked = place(api, order_body({sku: 1}, shipping_address=AQ))
        wait_for_state(api, parked["order_id"], "COMPENSATION_FAILED")
    finally:
        api.put("/faults/refund_payment", json={"down": False}).raise_for_status()
    views = {
        "completed": ended(api, completed),
        "failed": ended(api, failed),
        "parked": api.get(f"/orders/{parked['order_id']}").json(),
    }
    yield views
    api.post(f"/orders/{parked['order_id']}/retry-compensation").raise_for_status()
    assert ended(api, parked)["state"] == "FAILED"


@pytest.fixture(scope="module")
def many(api: httpx.Client) -> list[str]:
    """MANY orders with one id prefix, ended (each fails at once: unknown SKU); newest first."""
    prefix = f"many-{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{i:02d}" for i in range(MANY)]
    began = time.monotonic()
    for order_id in ids:
        place(api, order_body({"NO-SUCH-SKU": 1}, order_id=order_id))
    for order_id in ids:
        wait_for_state(api, order_id, "FAILED")
    print(f"placed and ended {MANY} orders in {time.monotonic() - began:.2f} s")
    return ids[::-1]


# --- the fleet page ------------------------------------------------------------------------


def counts_in_sql(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute("SELECT state, count(*) FROM orders.orders GROUP BY state").fetchall()
    needing = db.execute("SELECT count(*) FROM saga_status WHERE needs_attention").fetchone()
    assert needing is not None
    return dict.fromkeys(SAGA_STATES, 0) | dict(rows) | {"attention": needing[0]}


def test_the_fleet_page_counts_each_state_and_lists_a_new_order_first(
    api: httpx.Client, db: psycopg.Connection[Any], sagas: dict[str, Any]
) -> None:
    body = place(api, order_body({"NO-SUCH-SKU": 1}))
    # Sagas of earlier tests may still move: read while the counts hold still.
    for _ in range(50):
        before = counts_in_sql(db)
        response = api.get("/")
        if counts_in_sql(db) == before:
            break
    page = html(response)

    shown = {
        a.attrs["data-state"]: int(a.one("span", class_="n").text())
        for a in page.one("section", class_="counts").all("a", data_state=True)
    }
    assert shown == before
    assert shown["COMPENSATION_FAILED"] >= 1  # the parked saga
    row = listed(page)[0]
    assert row.attrs["data-order"] == body["order_id"]
    (link,) = row.all("a")
    assert (link.attrs["href"], link.text()) == (
        f"/console/orders/{body['order_id']}",
        body["order_id"],
    )
    attention = page.one("table", id="attention").all("tr", data_order=True)
    assert sagas["parked"]["order_id"] in [r.attrs["data-order"] for r in attention]
    assert "clear" not in [a.text() for a in page.all("a")]  # no filter: nothing to clear


def test_the_state_filter_lists_only_that_state(
    api: httpx.Client, sagas: dict[str, Any], many: list[str]
) -> None:
    page = html(api.get("/", params={"state": "FAILED"}))

    rows = listed(page)
    assert len(rows) == PAGE_SIZE  # many more FAILED than a page
    assert {r.attrs["data-state"] for r in rows} == {"FAILED"}
    assert "chosen" in page.one("a", data_state="FAILED").attrs["class"].split()
    assert page.one("select", name="state").one("option", selected=True).attrs["value"] == "FAILED"
    assert "clear" in [a.text() for a in page.all("a")]
    completed = html(api.get("/", params={"state": "COMPLETED"}))
    assert sagas["completed"]["order_id"] in listed_ids(completed)
    assert {r.attrs["data-state"] for r in listed(completed)} == {"COMPLETED"}


def test_the_attention_filter_lists_those_that_need_it(
    api: httpx.Client, sagas: dict[str, Any]
) -> None:
    needing = html(api.get("/", params={"attention": "true"}))
    not_needing = html(api.get("/", params={"attention": "false"}))

    parked, completed = sagas["parked"]["order_id"], sagas["completed"]["order_id"]
    assert parked in listed_ids(needing)
    assert completed not in listed_ids(needing)
    assert all(row.one("td", class_="why").text() for row in listed(needing))
    assert parked not in listed_ids(not_needing)
    assert not any(row.one("td", class_="why").text() for row in listed(not_needing))


def test_a_search_lists_its_orders_and_pages_through_them(
    api: httpx.Client, many: list[str]
) -> None:
    prefix = many[0][:-2]

    first = html(api.get("/", params={"search": prefix}))
    (older,) = first.all("a", rel="next")
    href = older.attrs["href"]
    second = html(api.get("/" + href if href.startswith("?") else href))

    assert listed_ids(first) == many[:PAGE_SIZE]
    assert parse_qs(urlsplit(href).query) == {"search": [prefix], "before": [many[PAGE_SIZE - 1]]}
    assert listed_ids(second) == many[PAGE_SIZE:]
    assert second.all("a", rel="next") == []
    assert [a.text() for a in second.all("a", href=f"?search={prefix}")] == ["newest"]
    assert first.one("input", name="search").attrs["value"] == prefix
    one = html(api.get("/", params={"search": many[-1]}))
    assert listed_ids(one) == [many[-1]]
    assert one.all("a", rel="next") == []


def test_empty_filter_fields_are_no_filter(api: httpx.Client, many: list[str]) -> None:
    plain = html(api.get("/"))
    empty = html(api.get("/?state=&attention=&search=&before="))

    assert listed_ids(empty) == listed_ids(plain)
    assert len(listed_ids(plain)) == PAGE_SIZE
    assert "clear" not in [a.text() for a in empty.all("a")]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("state=BOGUS", "state must be one of " + ", ".join(SAGA_STATES) + "; got 'BOGUS'"),
        ("attention=maybe", "attention must be one of true, false; got 'maybe'"),
        ("search=" + "s" * 65, "search must be at most 64 printable characters"),
        ("search=a%01b", "search must be at most 64 printable characters"),
        ("before=has%20space", "before must be at most 64 printable characters"),
        ("before=" + "b" * 65, "before must be at most 64 printable characters"),
        (
            "coordination=both",
            "coordination must be one of orchestration, choreography; got 'both'",
        ),
    ],
    ids=[
        "state",
        "attention",
        "search-65",
        "search-control",
        "before-space",
        "before-65",
        "coordination",
    ],
)
def test_a_bad_filter_is_a_400_page_naming_it(api: httpx.Client, query: str, problem: str) -> None:
    page = html(api.get(f"/?{query}"), status=400)

    assert page.one(id="problem").text() == problem


# --- a saga's page -----------------------------------------------------------------------


def test_a_completed_saga_shows_its_steps_and_nothing_to_do(
    api: httpx.Client, sagas: dict[str, Any]
) -> None:
    view = sagas["completed"]

    page = html(api.get(f"/console/orders/{view['order_id']}"))

    timeline = page.one("table", id="timeline").all("tr", data_step=True)
    assert [(r.attrs["data-step"], r.attrs["data-status"]) for r in timeline] == [
        (name, "completed") for name in FORWARD_STEPS
    ]
    for name in FORWARD_STEPS:
        assert name in page.one("table", id="timeline").text()
    attempts = page.one("table", id="attempts").all("tr", data_step=True)
    assert [(r.attrs["data-step"], r.attrs["class"]) for r in attempts] == [
        (name, "o-ok") for name in FORWARD_STEPS
    ]
    assert page.one(id="order-id").text() == view["order_id"]
    assert page.one(id="live").attrs["data-state"] == "COMPLETED"
    assert buttons(page) == []
    assert page.one(id="no-action").text() == "The saga has ended: nothing is left to do."
    assert page.one(id="no-actions").text() == "No operator has acted on this saga."


def test_a_failed_saga_shows_what_undid_each_step(api: httpx.Client, sagas: dict[str, Any]) -> None:
    view = sagas["failed"]

    page = html(api.get(f"/console/orders/{view['order_id']}"))

    timeline = page.one("table", id="timeline")
    assert "undone by" in timeline.one("thead").text()
    reserve = timeline.one("tr", data_step="reserve_inventory")
    assert reserve.one("td", data_compensation="release_reservation").text() == (
        "↩ release_reservation (undo #1)"
    )
    payment = timeline.one("tr", data_step="process_payment")
    assert payment.attrs["data-status"] == "failed"
    assert "nothing to undo: it did not act" in payment.text()
    assert page.one(id="saga-error").text() == view["error"]
    refused = page.one("table", id="attempts").one("tr", data_step="process_payment")
    assert refused.attrs["class"] == "o-refused"
    assert "payment declined: card declined" in refused.one("td", class_="err").text()
    assert buttons(page) == []


def test_a_saga_awaiting_approval_shows_its_deadline_and_the_decisions(
    api: httpx.Client,
) -> None:
    body = big_order(api)
    order_id = body["order_id"]

    waiting = html(api.get(f"/console/orders/{order_id}"))
    view = api.get(f"/orders/{order_id}").json()
    rejected = api.post(
        f"/orders/{order_id}/reject", headers={"X-Operator": "grace"}, json={"reason": "too big"}
    )
    after = html(api.get(f"/console/orders/{order_id}"))

    deadline = datetime.fromisoformat(view["approval"]["deadline"])
    shown = deadline.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    approval = waiting.one(id="approval")
    assert approval.text().startswith(f"waiting; deadline {shown} UTC")
    countdown = approval.one("span", class_="countdown")
    assert datetime.fromisoformat(countdown.attrs["data-deadline"]) == deadline
    assert countdown.text().startswith("0 min 0")  # under 4 s left
    assert buttons(waiting) == ["approve", "reject", "cancel"]
    assert waiting.one("form", id="act").attrs["data-order"] == order_id
    assert waiting.one("p", class_="advice").text().startswith("It waits for a person.")
    assert rejected.status_code == 202
    assert buttons(after) == [] or buttons(after) == ["cancel"]  # while it undoes, if caught
    (action,) = after.one("table", id="actions").all("tr", data_action=True)
    assert (action.attrs["data-action"], action.one("td", class_="by").text()) == (
        "reject",
        "grace",
    )
    assert action.one("td", class_="reason").text() == "too big"
    assert after.one(id="approval").text().startswith("rejected; deadline")
    assert ended(api, body)["state"] == "FAILED"


def test_a_parked_saga_shows_the_retry_the_count_and_the_advice(
    api: httpx.Client, sagas: dict[str, Any]
) -> None:
    view = sagas["parked"]

    page = html(api.get(f"/console/orders/{view['order_id']}"))

    assert view["state"] == "COMPENSATION_FAILED"
    assert buttons(page) == ["retry-compensation"]
    assert page.one(id="parked").text() == "1 time, now, at refund_payment"
    assert (
        page.one("p", class_="advice")
        .text()
        .startswith("It parked after refund_payment kept failing (1 time so far).")
    )
    assert page.one(id="attention-reason").text() == "parked"
    refunds = page.one("table", id="attempts").all("tr", data_step="refund_payment")
    assert [(r.attrs["class"], r.one("td", class_="err").text()) for r in refunds] == [
        ("o-transient", REFUND_DOWN)
    ] * 4
    undo = page.one("table", id="timeline").one("td", data_compensation="refund_payment")
    assert undo.text() == "↩ refund_payment (undo #1)"  # a refused shipment needs no undo


def test_an_unknown_order_is_a_404_page_and_a_bad_id_a_400_page(api: httpx.Client) -> None:
    missing = f"no-such-{uuid.uuid4().hex[:8]}"

    unknown = html(api.get(f"/console/orders/{missing}"), status=404)
    bad = html(api.get("/console/orders/bad%20id"), status=400)

    assert unknown.one(id="problem").text() == f"there is no order {missing!r}"
    assert bad.one(id="problem").text() == "an order id is 1-64 letters, digits, '_' or '-'"


# --- hostile text ----------------------------------------------------------------------------


def test_hostile_text_is_shown_escaped_and_never_as_markup(api: httpx.Client) -> None:
    body = big_order(api, customer_id=SCRIPT)
    order_id = body["order_id"]
    cancelled = api.post(
        f"/orders/{order_id}/cancel", headers={"X-Operator": "<b>eve</b>"}, json={"reason": IMG}
    )
    view = ended(api, body)

    saga = api.get(f"/console/orders/{order_id}")
    fleet = api.get("/", params={"search": SCRIPT})  # a customer id is searched whole
    problem = api.get("/", params={"state": SCRIPT})

    assert cancelled.status_code == 202
    assert (view["customer_id"], view["error"]) == (SCRIPT, f"cancelled by request: {IMG}")
    for response in (saga, fleet, problem):
        assert "<script>alert" not in response.text
        assert "<img src=x" not in response.text
        assert "<b>eve" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in saga.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in saga.text
    assert "&lt;b&gt;eve&lt;/b&gt;" in saga.text
    page = html(saga)
    assert page.one(id="saga-error").text() == f"cancelled by request: {IMG}"
    action = page.one("table", id="actions").one("tr", data_action="cancel")
    assert (action.one("td", class_="by").text(), action.one("td", class_="reason").text()) == (
        "<b>eve</b>", IMG
    )  # fmt: skip
    found = html(fleet)
    assert listed_ids(found) == [order_id]
    assert SCRIPT in listed(found)[0].text()
    assert found.one("input", name="search").attrs["value"] == SCRIPT
    assert "&lt;script&gt;" in fleet.text
    assert html(problem, status=400).one(id="problem").text().endswith(f"; got {SCRIPT!r}")


# --- static files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_types"),
    [("console.js", ("text/javascript", "application/javascript")), ("console.css", ("text/css",))],
)
def test_the_console_static_files_are_served(
    api: httpx.Client, path: str, content_types: tuple[str, ...]
) -> None:
    response = api.get(f"/console/static/{path}")

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in content_types
    assert response.content


# --- choreography --------------------------------------------------------------------------


def test_the_coordination_filter_and_a_choreographed_sagas_events(api: httpx.Client) -> None:
    sku = put_sku(api, 10)
    customer = new_id("c")
    choreographed = ended(
        api, order_body({sku: 1}, customer_id=customer, coordination="choreography")
    )
    orchestrated = ended(api, order_body({sku: 1}, customer_id=customer))

    only = html(api.get("/", params={"coordination": "choreography", "search": customer}))
    both = html(api.get("/", params={"search": customer}))
    page = html(api.get(f"/console/orders/{choreographed['order_id']}"))
    plain = html(api.get(f"/console/orders/{orchestrated['order_id']}"))

    assert listed_ids(only) == [choreographed["order_id"]]
    assert (
        only.one("select", name="coordination").one("option", selected=True).attrs["value"]
        == "choreography"
    )
    assert [r.one("td", class_="style").text() for r in listed(both)] == [
        "orchestration",
        "choreography",
    ]
    rows = page.one("table", id="events").all("tr", data_event=True)
    assert [(r.attrs["data-event"], r.attrs["data-by"]) for r in rows] == [
        (e["type"], e["by"]) for e in choreographed["events"]
    ]
    assert [r.attrs["data-event"] for r in rows][-1] == "OrderCompleted"
    assert page.one(id="coordination").text().startswith("choreography")
    assert page.one(id="workflow-id").text() == choreographed["workflow_id"]
    timeline = page.one("table", id="timeline").all("tr", data_step=True)
    assert [r.attrs["data-status"] for r in timeline] == ["completed"] * 4  # as orchestrated
    assert plain.all("table", id="events") == []
    assert plain.one(id="coordination").text() == "orchestration"
