"""See it run: the service as a user runs it (a subprocess), its `/metrics` scraped and parsed
as Prometheus does, its JSON log read line by line, and its traces received by a test
OTLP/HTTP receiver. Each test has a database and a process of its own, so every counter
starts at zero and moves only for what the test did."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from orders.model import FORWARD_STEPS
from tests.recovery.conftest import wait_for_end, wait_until
from tests.recovery.test_workers import COMMON
from tests.support.orders import order_body, wait_for_state
from tests.support.otlp import Receiver, Span
from tests.support.process import ServiceProcess
from tests.support.scrape import moved, scrape, value

COUNTERS = (
    "saga_started_total",
    "saga_finished_total",
    "saga_parked_total",
    "saga_step_attempts_total",
    "saga_step_duration_seconds_count",
)
AQ = {"name": "A", "line1": "1", "city": "C", "postal_code": "1", "country": "AQ"}


def attempted(step: str, result: str, times: int = 1) -> dict[str, float]:
    """The samples one step's attempts move: its result's counter and its histogram."""
    return {
        f"saga_step_attempts_total{{result={result},step={step}}}": times,
        f"saga_step_duration_seconds_count{{step={step}}}": times,
    }


def placed(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST the order and wait for its end; the view."""
    answer = client.post("/orders", params={"wait": 30}, json=body)
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def step_attempts(view: dict[str, Any], name: str) -> int:
    return next(s["attempts"] for s in view["steps"] + view["compensations"] if s["name"] == name)


def records(service: ServiceProcess) -> list[dict[str, Any]]:
    """Every line of the service's output, each of which must be one JSON log record."""
    lines = [line for line in service.log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log record: {line!r}") from None
    return parsed


def wait_for_shipment_in_flight(sql: psycopg.Connection[Any], order_id: str) -> None:
    """Until create_shipment has begun (PARTICIPANT_LATENCY_MS then holds it in flight)."""
    wait_until(
        lambda: sql.execute(
            "SELECT 1 FROM orders.saga_steps WHERE order_id = %s AND name = 'create_shipment'",
            (order_id,),
        ).fetchone() is not None,
        "create_shipment in flight",
    )  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def test_metrics_move_by_exactly_what_each_outcome_did_and_logs_tell_its_story(
    service: ServiceProcess,
) -> None:
    service.start(
        LOG_LEVEL="INFO", LOG_FORMAT="json", STEP_ATTEMPTS="10", COMPENSATION_ATTEMPTS="2"
    )
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 100, "price_cents": 1500})
        start = scrape(service.url)

        happy = placed(client, order_body({"WIDGET": 1}))
        after_happy = scrape(service.url)
        assert happy["state"] == "COMPLETED"
        expected: dict[str, float] = {
            "saga_started_total{}": 1,
            "saga_finished_total{state=COMPLETED}": 1,
        }
        for step in FORWARD_STEPS:
            expected |= attempted(step, "ok")
        assert moved(start, after_happy, COUNTERS) == expected

        declined = placed(client, order_body({"WIDGET": 1}, payment_method="pm_card_declined"))
        after_declined = scrape(service.url)
        assert declined["state"] == "FAILED"
        assert moved(after_happy, after_declined, COUNTERS) == {
            "saga_started_total{}": 1,
            "saga_finished_total{state=FAILED}": 1,
            **attempted("reserve_inventory", "ok"),
            **attempted("process_payment", "refused"),
            **attempted("release_reservation", "ok"),
        }

        # A step whose service is down for a while: each failed try is one transient attempt.
        client.put("/faults/create_shipment", json={"down": True}).raise_for_status()
        body = order_body({"WIDGET": 1})
        assert client.post("/orders", json=body).status_code == 202
        wait_until(
            lambda: step_attempts(client.get(f"/orders/{body['order_id']}").json(),
                                  "create_shipment") >= 2,
            "two failed tries of create_shipment",
        )  # fmt: skip
        client.put("/faults/create_shipment", json={"down": False}).raise_for_status()
        flaky = wait_for_end(service.url, body["order_id"])
        after_flaky = scrape(service.url)
        assert flaky["state"] == "COMPLETED"
        tries = step_attempts(flaky, "create_shipment")
        assert moved(after_declined, after_flaky, COUNTERS) == {
            "saga_started_total{}": 1,
            "saga_finished_total{state=COMPLETED}": 1,
            **attempted("reserve_inventory", "ok"),
            **attempted("process_payment", "ok"),
            "saga_step_attempts_total{result=transient,step=create_shipment}": tries - 1,
            "saga_step_attempts_total{result=ok,step=create_shipment}": 1,
            "saga_step_duration_seconds_count{step=create_shipment}": tries,
            **attempted("send_confirmation", "ok"),
        }

        # A compensation that cannot get through parks the saga; a retry finishes it.
        client.put("/faults/release_reservation", json={"down": True}).raise_for_status()
        stuck = order_body({"WIDGET": 1}, payment_method="pm_card_declined")
        assert client.post("/orders", json=stuck).status_code == 202
        wait_for_state(client, stuck["order_id"], "COMPENSATION_FAILED")
        parked = scrape(service.url)
        assert moved(after_flaky, parked, COUNTERS) == {
            "saga_started_total{}": 1,
            "saga_parked_total{}": 1,
            **attempted("reserve_inventory", "ok"),
            **attempted("process_payment", "refused"),
            **attempted("release_reservation", "transient", 2),
        }
        assert value(parked, "sagas", state="COMPENSATION_FAILED") == 1
        assert value(parked, "sagas", state="COMPLETED") == 2
        assert value(parked, "sagas_needing_attention") == 1
        assert value(parked, "saga_oldest_unfinished_seconds") > 0
        assert value(parked, "saga_database_up") == 1

        client.put("/faults/release_reservation", json={"down": False}).raise_for_status()
        client.post(f"/orders/{stuck['order_id']}/retry-compensation").raise_for_status()
        assert wait_for_end(service.url, stuck["order_id"])["state"] == "FAILED"
        end = scrape(service.url)
        assert moved(parked, end, COUNTERS) == {
            "saga_finished_total{state=FAILED}": 1,
            **attempted("release_reservation", "ok"),
        }
        assert value(end, "sagas", state="FAILED") == 2
        assert value(end, "sagas", state="COMPENSATION_FAILED") == 0
        assert value(end, "sagas_needing_attention") == 0
        assert value(end, "saga_oldest_unfinished_seconds") == 0

    # HTTP calls by route template, and no id anywhere in a label.
    order_route = {"method": "GET", "route": "/orders/{order_id}", "status": "200"}
    assert value(end, "http_requests_total", **order_route) >= 1
    assert value(end, "http_requests_total", method="POST", route="/orders", status="200") == 2
    ids = {v[key] for v in (happy, declined, flaky) for key in ("order_id", "saga_id")}
    for _, labels in end:
        assert not {label for _, label in labels} & ids

    # The log: one JSON object per line for every logger, and the saga's story by its id.
    lines = records(service)
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in lines)
    loggers = {r["logger"].split(".")[0] for r in lines}
    assert {"dbos", "uvicorn", "api", "steps"} <= loggers
    story = [r for r in lines if r.get("order_id") == happy["order_id"]]
    assert all(r["saga_id"] == happy["saga_id"] for r in story)
    messages = [r["message"] for r in story]
    assert messages[0] == "order placed, saga starting"
    for step in FORWARD_STEPS:
        assert any(m.startswith(f"{step} done in ") for m in messages), messages
    assert messages[-1] == "saga COMPLETED"
    in_steps = [r for r in story if "step" in r]
    assert {r["step"] for r in in_steps} == set(FORWARD_STEPS)
    assert all(r["attempt"] == 1 for r in in_steps)
    flaky_story = [r for r in lines if r.get("order_id") == flaky["order_id"]]
    shipment = [r for r in flaky_story if r.get("step") == "create_shipment"]
    assert [r["attempt"] for r in shipment] == list(range(1, tries + 1))
    assert [r["level"] for r in shipment] == ["WARNING"] * (tries - 1) + ["INFO"]
    parked_story = [r["message"] for r in lines if r.get("order_id") == stuck["order_id"]]
    assert any(m.startswith("saga parked in COMPENSATION_FAILED") for m in parked_story)
    assert parked_story[-1].startswith("saga FAILED")


def test_a_replay_after_a_crash_counts_nothing_twice(
    service: ServiceProcess, sql: psycopg.Connection[Any]
) -> None:
    """SIGKILL while create_shipment is in flight; the restarted process finishes the saga.
    Its counters show only what it did: the steps DBOS replays from their checkpoints
    (reserve_inventory, process_payment) are no attempts, and the saga was not started
    here, but it ended here."""
    service.start(PARTICIPANT_LATENCY_MS="1000")
    body = order_body({"WIDGET": 1})
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        assert client.post("/orders", json=body).status_code == 202
    wait_for_shipment_in_flight(sql, body["order_id"])
    service.kill()
    service.start(PARTICIPANT_LATENCY_MS="0")
    view = wait_for_end(service.url, body["order_id"])
    samples = scrape(service.url)

    assert view["state"] == "COMPLETED"
    assert step_attempts(view, "create_shipment") == 2  # one try in each process
    assert moved({}, samples, COUNTERS) == {
        "saga_finished_total{state=COMPLETED}": 1,
        **attempted("create_shipment", "ok"),
        **attempted("send_confirmation", "ok"),
    }


def order_trace(spans: list[Span]) -> bool:
    """The trace is all there: the POST, the workflow, every step, each one's parent."""
    names = {span.name for span in spans}
    ids = {span.span_id for span in spans}
    return {"POST /orders", "order_fulfillment", *FORWARD_STEPS} <= names and all(
        s.parent_id in ids for s in spans if s.name != "POST /orders"
    )


def assert_one_tree(spans: list[Span]) -> None:
    """The saga's workflow span hangs under the POST's server span, each step under it."""
    by_id = {span.span_id: span for span in spans}
    post = next(s for s in spans if s.name == "POST /orders" and s.parent_id not in by_id)
    workflow = next(s for s in spans if s.name == "order_fulfillment")
    parent = by_id[workflow.parent_id]
    while parent.span_id != post.span_id:  # the server span's own children, then it
        parent = by_id[parent.parent_id]
    for step in FORWARD_STEPS:
        assert {s.parent_id for s in spans if s.name == step} == {workflow.span_id}, step


def traced(receiver: Receiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "saga-under-test",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }


def test_one_trace_per_order_from_the_post_through_every_step(
    service: ServiceProcess, receiver: Receiver
) -> None:
    service.start(**traced(receiver))
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        happy = placed(client, order_body({"WIDGET": 1}))
        declined = placed(client, order_body({"WIDGET": 1}, payment_method="pm_card_declined"))

    assert len(happy["trace_id"]) == 32
    assert happy["trace_id"] != declined["trace_id"]
    spans = receiver.wait_for(happy["trace_id"], order_trace)
    assert_one_tree(spans)
    assert {span.service for span in spans} == {"saga-under-test"}
    compensated = receiver.wait_for(
        declined["trace_id"], lambda s: "release_reservation" in {x.name for x in s}
    )
    assert {"process_payment", "release_reservation"} <= {s.name for s in compensated}
    logged = [r for r in records(service) if r.get("order_id") == happy["order_id"]]
    assert {r.get("trace_id") for r in logged if "step" in r} == {happy["trace_id"]}


def test_without_an_endpoint_there_is_no_trace(service: ServiceProcess) -> None:
    service.start()
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        assert placed(client, order_body({"WIDGET": 1}))["trace_id"] is None


def recovered_under_its_workflow(spans: list[Span]) -> bool:
    ids = {span.span_id for span in spans}
    return any(s.name == "send_confirmation" and s.parent_id in ids for s in spans)


def test_a_saga_recovered_after_a_crash_continues_its_trace(
    service: ServiceProcess, sql: psycopg.Connection[Any], receiver: Receiver
) -> None:
    service.start(PARTICIPANT_LATENCY_MS="1000", **traced(receiver))
    body = order_body({"WIDGET": 1})
    with httpx.Client(base_url=service.url, timeout=30) as client:
        client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
        assert client.post("/orders", json=body).status_code == 202
        trace_id = client.get(f"/orders/{body['order_id']}").json()["trace_id"]
    wait_for_shipment_in_flight(sql, body["order_id"])
    service.kill()
    service.start(PARTICIPANT_LATENCY_MS="0", **traced(receiver))
    view = wait_for_end(service.url, body["order_id"])

    assert view["trace_id"] == trace_id
    spans = receiver.wait_for(trace_id, recovered_under_its_workflow)
    recovered = next(s for s in spans if s.name == "send_confirmation")
    workflow = next(s for s in spans if s.span_id == recovered.parent_id)
    assert workflow.name == "order_fulfillment"


def test_split_mode_one_trace_across_the_api_process_and_the_worker(
    service_db: str, receiver: Receiver
) -> None:
    api = ServiceProcess(service_db, PROCESS_ROLE="api", **COMMON)
    worker = ServiceProcess(service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **COMMON)
    try:
        api.start(**{**traced(receiver), "OTEL_SERVICE_NAME": "saga-api"})
        worker.start(**{**traced(receiver), "OTEL_SERVICE_NAME": "saga-worker"})
        with httpx.Client(base_url=api.url, timeout=30) as client:
            client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
            view = placed(client, order_body({"WIDGET": 1}))
        spans = receiver.wait_for(view["trace_id"], order_trace)
        assert_one_tree(spans)
        services = {s.name: s.service for s in spans}
        assert services["POST /orders"] == "saga-api"
        assert services["order_fulfillment"] == "saga-worker"
        # Each process serves its own /metrics: the API took the order in, the worker ran it.
        assert value(scrape(api.url), "saga_started_total") == 1
        worker_samples = scrape(worker.url)
        assert value(worker_samples, "saga_started_total") == 0
        assert value(worker_samples, "saga_finished_total", state="COMPLETED") == 1
    finally:
        api.stop()
        worker.stop()


def choreographed_trace(spans: list[Span]) -> bool:
    """A choreographed order's trace is all there: the POST, each of its five handlers and
    every step, each one's parent in the trace."""
    names = [span.name for span in spans]
    ids = {span.span_id for span in spans}
    return (
        names.count("handle_event") == 5
        and {"POST /orders", *FORWARD_STEPS} <= set(names)
        and all(s.parent_id in ids for s in spans if s.name != "POST /orders")
    )


def assert_one_chain(spans: list[Span]) -> None:
    """Each handler hangs under the one that started it (the first under the POST), and
    each step under its handler."""
    by_id = {span.span_id: span for span in spans}
    handlers = [s for s in spans if s.name == "handle_event"]
    roots = [h for h in handlers if by_id[h.parent_id].name != "handle_event"]
    assert len(roots) == 1  # the first, under the POST's server span
    parent = by_id[roots[0].parent_id]
    while parent.name != "POST /orders":
        parent = by_id[parent.parent_id]
    for step in FORWARD_STEPS:
        (span,) = [s for s in spans if s.name == step]
        assert by_id[span.parent_id].name == "handle_event", step


@pytest.mark.parametrize("split", [False, True], ids=["make-run", "split-mode"])
def test_one_trace_per_choreographed_order_through_every_handler(
    service: ServiceProcess, service_db: str, receiver: Receiver, split: bool
) -> None:
    processes: list[ServiceProcess] = []
    if split:
        processes = [
            ServiceProcess(service_db, PROCESS_ROLE="api", **COMMON),
            ServiceProcess(service_db, PROCESS_ROLE="worker", EXECUTOR_ID="w1", **COMMON),
        ]
    entry = processes[0] if split else service
    try:
        for process in processes or [service]:
            process.start(**traced(receiver))
        with httpx.Client(base_url=entry.url, timeout=30) as client:
            client.put("/inventory/WIDGET", json={"available": 5, "price_cents": 1500})
            view = placed(client, order_body({"WIDGET": 1}, coordination="choreography"))
        assert view["state"] == "COMPLETED"
        assert len(view["trace_id"] or "") == 32, view["trace_id"]
        spans = receiver.wait_for(view["trace_id"], choreographed_trace)
    finally:
        for process in processes:
            process.stop()

    assert_one_chain(spans)
    if split:  # the POST's span is the API process's; every handler's, the worker's
        assert {s.service for s in spans if s.name == "handle_event"} == {"saga-under-test"}
