"""The operator's console as a person uses it: a real headless Chromium (Debian's `chromium`
and `chromium-driver`, driven by Selenium) on the service as `make run` starts it.

Two services, each a `python -m api` subprocess on a database of its own: one as started by
default (no API_TOKEN), with a long approval timeout so that a waiting order waits for the
"person", and one with API_TOKEN set. The screenshots in the README are taken here: set
SCREENSHOTS_DIR=docs (`make screenshots`) to write them there.
"""

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import postgres
from tests.support.orders import new_id, order_body, wait_for_state
from tests.support.process import ServiceProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token"
BIG = 100_000  # cents: at APPROVAL_THRESHOLD_CENTS, the order waits for approval
OPERATOR = "night-shift-ada"
SETTINGS = {
    "APPROVAL_THRESHOLD_CENTS": str(BIG),
    "APPROVAL_TIMEOUT_SECONDS": "600",  # a person takes their time
    "RETRY_BACKOFF_SECONDS": "0.02",
    "COMPENSATION_ATTEMPTS": "2",
    "SEED_DEMO_CATALOG": "false",
    "LOG_LEVEL": "WARNING",
}


@contextmanager
def service_on_own_database(prefix: str, **env: str) -> Iterator[ServiceProcess]:
    url = postgres.create_database(prefix)
    process = ServiceProcess(url, **SETTINGS, **env)
    process.start()
    try:
        yield process
    finally:
        # Nothing may be left waiting: cancel what still waits, then stop.
        with httpx.Client(base_url=process.url, timeout=30) as http:
            headers = {"Authorization": f"Bearer {TOKEN}"} if env.get("API_TOKEN") else {}
            for state in ("AWAITING_APPROVAL", "COMPENSATION_FAILED"):
                for order in http.get("/orders", params={"state": state}).json()["orders"]:
                    http.post(f"/orders/{order['order_id']}/cancel", headers=headers)
        assert process.stop() in (0, -signal.SIGTERM), process.tail()
        postgres.drop_database(url)


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    with service_on_own_database("saga_console") as process:
        yield process


@pytest.fixture(scope="module")
def api(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    assert not missing, (
        f"the browser tests need {' and '.join(missing)}: apt-get install chromium "
        "chromium-driver (make test installs them when run as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1360,1000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("SCREENSHOTS_DIR")
    return Path(where) if where else tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def sku(api: httpx.Client) -> Callable[..., str]:
    def make(price_cents: int = 2500, available: int = 50) -> str:
        name = new_id("SKU").upper()
        body = {"available": available, "price_cents": price_cents}
        api.put(f"/inventory/{name}", json=body).raise_for_status()
        return name

    return make


def place(api: httpx.Client, sku: str, **fields: Any) -> str:
    body = order_body({sku: 1}, **fields)
    assert api.post("/orders", json=body).status_code == 202
    return str(body["order_id"])


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    """Until `condition` holds; a page redrawing itself meanwhile is just another try."""
    return WebDriverWait(
        browser, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(condition)


def shown_state(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "live").get_attribute("data-state"))


def wait_for_shown_state(browser: WebDriver, state: str, timeout: float = 30) -> None:
    """The saga page, refreshing itself, comes to show `state` (no reload by the test)."""
    wait(browser, lambda b: shown_state(b) == state, timeout)


def act(browser: WebDriver, action: str, reason: str = "") -> str:
    """Type the reason, press the action's button, confirm; the answer the page shows."""
    type_reason(browser, reason)
    browser.execute_script("document.getElementById('answer').textContent = ''")
    press(browser, action)
    wait(browser, expected_conditions.alert_is_present(), 5)
    alert = browser.switch_to.alert
    question = alert.text
    alert.accept()
    assert action.split("-")[0] in question.lower()
    answer = wait(browser, lambda b: b.find_element(By.ID, "answer").text or None, 15)
    return str(answer)


def type_reason(browser: WebDriver, reason: str) -> None:
    """Into the reason field. The page may redraw itself up to the moment the field has the
    focus (from then on it waits), so a field replaced under the click is looked up again."""
    for _ in range(5):
        try:
            field = browser.find_element(By.ID, "reason")
            field.click()
            field.clear()
            field.send_keys(reason)
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError("the reason field kept being redrawn")


def follow(browser: WebDriver, link_text: str) -> None:
    """Click a link of a page that may redraw itself under the click."""
    wait(browser, lambda b: b.find_element(By.LINK_TEXT, link_text).click() or True)


def press(browser: WebDriver, action: str) -> None:
    """The action's button, looked up again if the page redrew itself under the click."""
    for _ in range(5):
        try:
            browser.find_element(By.CSS_SELECTOR, f"button[data-action='{action}']").click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"the {action} button kept being redrawn")


def whole_page(browser: WebDriver, path: Path) -> None:
    """A screenshot of the whole page, from its top."""
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], max(size["height"], int(height) + 20))
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(path))
    browser.set_window_size(size["width"], size["height"])


def set_operator(browser: WebDriver, name: str) -> None:
    field = browser.find_element(By.ID, "operator")
    field.clear()
    field.send_keys(name)


def rows(table: WebElement) -> list[WebElement]:
    return table.find_elements(By.CSS_SELECTOR, "tbody tr")


def actions_shown(browser: WebDriver) -> list[tuple[str, str, str]]:
    """(who, action, reason) of each row of the page's operator actions."""
    table = browser.find_element(By.ID, "actions")
    return [
        tuple(cell.text for cell in row.find_elements(By.TAG_NAME, "td")[1:4])  # type: ignore[misc]
        for row in rows(table)
    ]


@pytest.mark.parametrize("coordination", ["orchestration", "choreography"])
def test_an_operator_finds_a_waiting_order_approves_it_and_watches_it_complete(
    browser: WebDriver,
    service: ServiceProcess,
    api: httpx.Client,
    sku: Callable[..., str],
    coordination: str,
) -> None:
    order_id = place(api, sku(price_cents=BIG), coordination=coordination)
    wait_for_state(api, order_id, "AWAITING_APPROVAL")

    browser.get(service.url + "/")
    search = browser.find_element(By.NAME, "search")
    search.send_keys(order_id)
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(browser, lambda b: len(rows(b.find_element(By.ID, "orders"))) == 1)
    listed = wait(
        browser, lambda b: rows(b.find_element(By.ID, "orders"))[0].get_attribute("data-state")
    )
    assert listed == "AWAITING_APPROVAL"
    follow(browser, order_id)

    wait(browser, lambda b: b.find_element(By.ID, "order-id").text == order_id)
    assert shown_state(browser) == "AWAITING_APPROVAL"
    assert "waiting" in browser.find_element(By.ID, "approval").text
    assert "left" in browser.find_element(By.ID, "approval").text
    set_operator(browser, OPERATOR)
    answer = act(browser, "approve", "checked the customer")

    assert answer.startswith("202"), answer
    wait_for_shown_state(browser, "COMPLETED")
    timeline = browser.find_element(By.ID, "timeline")
    assert [r.get_attribute("data-status") for r in rows(timeline)] == ["completed"] * 4
    assert actions_shown(browser) == [(OPERATOR, "approve", "checked the customer")]
    assert api.get(f"/orders/{order_id}").json()["actions"][0]["by"] == OPERATOR
    assert browser.find_element(By.ID, "no-action").text.startswith("The saga has ended")
    if coordination == "choreography":  # its events, redrawn as they came
        events = [
            r.get_attribute("data-event") for r in rows(browser.find_element(By.ID, "events"))
        ]
        assert events[:3] == ["OrderPlaced", "InventoryReserved", "OrderApproved"]
        assert events[-1] == "OrderCompleted"
    else:
        assert browser.find_elements(By.ID, "events") == []


def test_cancel_with_a_reason_shows_the_action_and_the_compensations(
    browser: WebDriver,
    service: ServiceProcess,
    api: httpx.Client,
    sku: Callable[..., str],
    screenshots: Path,
) -> None:
    order_id = place(api, sku(price_cents=BIG))
    wait_for_state(api, order_id, "AWAITING_APPROVAL")
    browser.get(f"{service.url}/console/orders/{order_id}")
    set_operator(browser, OPERATOR)

    # A cancel needs a reason: without one the page says so and sends nothing.
    type_reason(browser, "")
    press(browser, "cancel")
    assert "needs a reason" in browser.find_element(By.ID, "answer").text
    assert api.get(f"/orders/{order_id}").json()["actions"] == []

    answer = act(browser, "cancel", "customer called: wrong address")
    assert answer.startswith("202"), answer
    wait_for_shown_state(browser, "FAILED")

    timeline = browser.find_element(By.ID, "timeline")
    reserve = rows(timeline)[0]
    assert reserve.get_attribute("data-status") == "compensated"
    undo = reserve.find_element(By.CSS_SELECTOR, "[data-compensation]")
    assert undo.get_attribute("data-compensation") == "release_reservation"
    assert actions_shown(browser) == [(OPERATOR, "cancel", "customer called: wrong address")]
    assert "cancelled by request: customer called" in browser.find_element(By.ID, "saga-error").text
    attempts = browser.find_element(By.ID, "attempts")
    assert [r.get_attribute("data-step") for r in rows(attempts)] == [
        "reserve_inventory",
        "release_reservation",
    ]


def test_retry_a_parked_saga_after_repairing_its_fault(
    browser: WebDriver,
    service: ServiceProcess,
    api: httpx.Client,
    sku: Callable[..., str],
    screenshots: Path,
) -> None:
    api.put("/faults/refund_payment", json={"down": True}).raise_for_status()
    try:
        order_id = place(api, sku(), shipping_address=_address("AQ"))  # shipping refused
        waiting = place(api, sku(price_cents=BIG))  # for the fleet page's picture
        wait_for_state(api, order_id, "COMPENSATION_FAILED")
        wait_for_state(api, waiting, "AWAITING_APPROVAL")
        browser.get(service.url + "/")
        attention = browser.find_element(By.ID, "attention")
        assert [r.get_attribute("data-order") for r in rows(attention)] == [order_id]
        whole_page(browser, screenshots / "console-fleet.png")
        follow(browser, order_id)
        wait_for_shown_state(browser, "COMPENSATION_FAILED")
        assert "parked" in browser.find_element(By.ID, "attention-reason").text
        assert browser.find_element(By.ID, "parked").text.startswith("1 time")
        failed_tries = [
            r for r in rows(browser.find_element(By.ID, "attempts"))
            if r.get_attribute("data-step") == "refund_payment"
        ]  # fmt: skip
        assert len(failed_tries) == 2  # COMPENSATION_ATTEMPTS, each with its error
        assert all("unavailable" in r.text.lower() for r in failed_tries), [
            r.text for r in failed_tries
        ]
        set_operator(browser, OPERATOR)
    finally:
        api.put("/faults/refund_payment", json={"down": False}).raise_for_status()

    answer = act(browser, "retry-compensation", "payments are back")
    assert answer.startswith("202"), answer
    wait_for_shown_state(browser, "FAILED")

    assert actions_shown(browser) == [(OPERATOR, "retry-compensation", "payments are back")]
    compensations = [
        r.find_element(By.CSS_SELECTOR, "[data-compensation]").get_attribute("data-compensation")
        for r in rows(browser.find_element(By.ID, "timeline"))
        if r.find_elements(By.CSS_SELECTOR, "[data-compensation]")
    ]
    assert compensations == ["release_reservation", "refund_payment"]
    whole_page(browser, screenshots / "console-saga.png")


def test_a_refusal_is_explained_not_swallowed(
    browser: WebDriver, service: ServiceProcess, api: httpx.Client, sku: Callable[..., str]
) -> None:
    """The page was drawn while the saga waited; meanwhile someone else decided."""
    order_id = place(api, sku(price_cents=BIG))
    wait_for_state(api, order_id, "AWAITING_APPROVAL")
    browser.get(f"{service.url}/console/orders/{order_id}")
    type_reason(browser, "keep the page still")  # no redraw while it holds text
    api.post(f"/orders/{order_id}/reject", headers={"X-Operator": "someone-else"})
    wait_for_state(api, order_id, "FAILED")

    answer = act(browser, "approve", "too late")

    assert answer.startswith("409"), answer
    assert "already rejected" in answer
    assert "does not allow this now" in answer
    assert [a["action"] for a in api.get(f"/orders/{order_id}").json()["actions"]] == ["reject"]
    wait_for_shown_state(browser, "FAILED", timeout=5)  # redrawn after the answer


def test_the_fleet_page_counts_filters_and_pages(
    browser: WebDriver,
    service: ServiceProcess,
    api: httpx.Client,
    sku: Callable[..., str],
    screenshots: Path,
) -> None:
    customer = new_id("cust")
    failing = [place(api, "NO-SUCH-SKU", customer_id=customer) for _ in range(3)]
    item = sku()
    fine = [place(api, item, customer_id=customer) for _ in range(2)]
    for order_id in failing:
        wait_for_state(api, order_id, "FAILED")
    for order_id in fine:
        wait_for_state(api, order_id, "COMPLETED")

    browser.get(service.url + "/")
    counts = {
        tile.get_attribute("data-state"): int(tile.find_element(By.CLASS_NAME, "n").text)
        for tile in browser.find_elements(By.CSS_SELECTOR, "a.count")
    }
    metrics = httpx.get(service.url + "/metrics").text
    for state in ("COMPLETED", "FAILED"):
        assert f'sagas{{state="{state}"}} {float(counts[state])}' in metrics

    browser.find_element(By.NAME, "search").send_keys(customer)
    Select(browser.find_element(By.NAME, "state")).select_by_value("FAILED")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(browser, lambda b: "state=FAILED" in b.current_url)
    listed = [r.get_attribute("data-order") for r in rows(browser.find_element(By.ID, "orders"))]
    assert listed == failing[::-1]  # newest first

    Select(browser.find_element(By.NAME, "state")).select_by_value("")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(browser, lambda b: len(rows(b.find_element(By.ID, "orders"))) == 5)

    # The page redraws itself: an order placed now appears without a reload.
    late = place(api, item, customer_id=customer)
    wait(
        browser,
        lambda b: rows(b.find_element(By.ID, "orders"))[0].get_attribute("data-order") == late,
        15,
    )
    wait_for_state(api, late, "COMPLETED")


def test_with_an_api_token_an_action_without_it_is_refused_and_with_it_succeeds(
    browser: WebDriver,
) -> None:
    with (
        service_on_own_database("saga_console_token", API_TOKEN=TOKEN) as secured,
        httpx.Client(base_url=secured.url, timeout=30) as http,
    ):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        http.put("/inventory/BIG", json={"available": 5, "price_cents": BIG}, headers=headers)
        order_id = place(http, "BIG")
        wait_for_state(http, order_id, "AWAITING_APPROVAL")

        browser.get(f"{secured.url}/console/orders/{order_id}")
        token = browser.find_element(By.ID, "token")
        # No token typed: the page asks for it and sends nothing.
        press(browser, "approve")
        assert "needs its API token" in browser.find_element(By.ID, "answer").text

        token.send_keys("not-the-token")
        answer = act(browser, "approve", "wrong token")
        assert answer.startswith("401"), answer
        assert "token is missing or wrong" in answer
        assert http.get(f"/orders/{order_id}").json()["actions"] == []

        token.clear()
        token.send_keys(TOKEN)
        set_operator(browser, OPERATOR)
        answer = act(browser, "approve", "right token")
        assert answer.startswith("202"), answer
        wait_for_shown_state(browser, "COMPLETED")
        assert actions_shown(browser) == [(OPERATOR, "approve", "right token")]


def _address(country: str) -> dict[str, str]:
    return {"name": "Ada", "line1": "1 Main St", "city": "Springfield",
            "postal_code": "12345", "country": country}  # fmt: skip
