"""The saga's control flow with plain functions in place of DBOS steps (no database)."""

from typing import Any

import pytest

from orders.model import COMPENSATION_OF, FORWARD_STEPS
from services.faults import OPERATIONS
from services.outcomes import done, refused
from workflows.order_fulfillment import Compensations, Policy, Refused, Stopped


def test_every_step_and_compensation_is_a_downstream_operation_with_a_fault_switch() -> None:
    assert set(OPERATIONS) == set(FORWARD_STEPS) | set(COMPENSATION_OF)
    assert set(COMPENSATION_OF.values()) == set(FORWARD_STEPS)


ORDER: Any = {"order_id": "o"}
POLICY: Policy = {
    "approval_threshold_cents": 100,
    "approval_timeout_seconds": 1,
    "compensation_attempts": 1,
    "retry_backoff_seconds": 0,
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(self, name: str, answer: dict[str, Any]) -> Any:
        def run(order: Any, *args: Any) -> dict[str, Any]:
            self.calls.append(name)
            return answer

        run.__name__ = name
        return run


def test_compensations_run_in_reverse_and_skip_the_refused_step() -> None:
    rec = Recorder()
    saga = Compensations(ORDER, POLICY)

    saga.attempt(rec.step("reserve", done()), rec.step("release", done()))
    saga.attempt(rec.step("pay", done()), rec.step("refund", done()))
    with pytest.raises(Refused, match="ship refused: nowhere"):
        saga.attempt(rec.step("ship", refused("nowhere")), rec.step("cancel", done()))
    saga.undo_in_reverse("because")

    assert rec.calls == ["reserve", "pay", "ship", "refund", "release"]


def test_a_step_that_raised_is_compensated_too_since_it_may_have_acted() -> None:
    rec = Recorder()
    saga = Compensations(ORDER, POLICY)

    def timed_out(order: Any) -> dict[str, Any]:
        raise TimeoutError("no answer")

    saga.attempt(rec.step("reserve", done()), rec.step("release", done()))
    with pytest.raises(TimeoutError):
        saga.attempt(timed_out, rec.step("refund", done()))
    saga.undo_in_reverse("because")

    assert rec.calls == ["reserve", "refund", "release"]


def test_a_step_cancelled_before_it_acted_is_not_undone() -> None:
    rec = Recorder()
    saga = Compensations(ORDER, POLICY)

    saga.attempt(rec.step("reserve", done()), rec.step("release", done()))
    skipped = {"outcome": "cancelled", "reason": "cancelled by request", "may_have_acted": False}
    with pytest.raises(Stopped, match="cancelled by request"):
        saga.attempt(rec.step("pay", skipped), rec.step("refund", done()))
    saga.undo_in_reverse("because")

    assert rec.calls == ["reserve", "pay", "release"]


def test_a_step_that_acted_while_a_cancel_came_in_is_undone() -> None:
    rec = Recorder()
    saga = Compensations(ORDER, POLICY)

    with pytest.raises(Stopped, match="cancelled by request: changed my mind"):
        saga.attempt(
            rec.step("reserve", done(cancel_requested="cancelled by request: changed my mind")),
            rec.step("release", done()),
        )
    saga.undo_in_reverse("because")

    assert rec.calls == ["reserve", "release"]


def test_a_cancelled_step_that_began_before_a_crash_is_undone_since_it_may_have_acted() -> None:
    rec = Recorder()
    saga = Compensations(ORDER, POLICY)

    rerun = {"outcome": "cancelled", "reason": "cancelled by request", "may_have_acted": True}
    with pytest.raises(Stopped):
        saga.attempt(rec.step("pay", rerun), rec.step("refund", done()))
    saga.undo_in_reverse("because")

    assert rec.calls == ["pay", "refund"]
