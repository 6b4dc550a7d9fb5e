"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis),
over real HTTP against the suite's live server.

Each operation is one test: schemathesis's example, coverage (boundary values, missing and
malformed parts) and fuzzing phases, with valid and invalid data. Every response must be
a non-5xx answer whose status code, content type, headers and body match what the schema
declares, and invalid data must be refused. The schema is the app's own (create_app); a test
checks it is exactly what the server serves at /openapi.json.

So that it cannot pass by doing nothing, each operation must have sent at least MIN_CASES
requests (fewer only where the schema allows fewer distinct requests), both valid and
invalid ones where the operation takes any input.
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app

# schemathesis's own strategies trip this Hypothesis deprecation; nothing here to act on.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

SPEC: dict[str, Any] = create_app().openapi()
schema = schemathesis.openapi.from_dict(SPEC)

MAX_EXAMPLES = 100  # the fuzzing phase's budget per operation; coverage adds its own cases
MIN_CASES = 60  # requests per operation that takes input, valid and invalid together
MIN_EACH_MODE = 15  # of those, at least this many valid and this many invalid
# Operations whose whole input space is smaller than MIN_CASES: how many distinct requests
# there are to send (a fixed path, or one of the eight fault operations).
SMALL_INPUT_SPACE = {
    "GET /faults": 1,
    "GET /healthz": 1,
    "GET /metrics": 1,
    "GET /faults/{operation}": 8,
}
MAX_WAIT_SECONDS = 0.2  # POST /orders?wait= is cut to this, so one case cannot take 60 s

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

OPERATIONS = sorted(
    f"{method.upper()} {path}" for path, methods in SPEC["paths"].items() for method in methods
)
sent: Counter[tuple[str, str]] = Counter()  # (operation, "positive" / "negative") -> requests


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.fixture
def enough_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an operation's fuzzing: it really sent enough requests of each kind."""
    operation = request.node.name.partition("[")[2].rstrip("]")
    yield
    positive, negative = sent[operation, "positive"], sent[operation, "negative"]
    if operation in SMALL_INPUT_SPACE:
        assert positive >= SMALL_INPUT_SPACE[operation], (operation, positive)
    else:
        assert positive + negative >= MIN_CASES, (operation, positive, negative)
        assert positive >= MIN_EACH_MODE, (operation, positive)
        assert negative >= MIN_EACH_MODE, (operation, negative)


def test_the_fuzzed_schema_is_the_one_the_server_serves(api: httpx.Client) -> None:
    assert api.get("/openapi.json").json() == SPEC
    assert len(OPERATIONS) == 17


@pytest.mark.usefixtures("faults_repaired", "enough_cases")
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_every_operation_answers_as_its_schema_says(
    case: schemathesis.Case, live_url: str, session: requests.Session
) -> None:
    mode = "negative" if case.meta and case.meta.generation.mode.is_negative else "positive"
    if mode == "positive":
        _cap_wait(case)
    sent[case.operation.label, mode] += 1
    case.call_and_validate(base_url=live_url, session=session, checks=CHECKS, timeout=30)


def _cap_wait(case: schemathesis.Case) -> None:
    """A valid ?wait= (sent as a number or, in the coverage phase, as text) becomes short."""
    try:
        wait = float(case.query["wait"])
    except (TypeError, ValueError, KeyError):
        return
    if 0 < wait <= 60:
        case.query["wait"] = MAX_WAIT_SECONDS
