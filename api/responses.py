"""The error answers routes share, declared once so /openapi.json lists what really happens
(the fuzzing in tests/api/test_fuzz.py holds every response to these declarations)."""

from typing import Any

from api.limits import MAX_BODY_BYTES
from api.schemas import Problem

Responses = dict[int | str, dict[str, Any]]

# Every route: the body cap (api/limits.py) runs before routing.
TOO_LARGE: Responses = {
    413: {"model": Problem, "description": f"The request body is over {MAX_BODY_BYTES} bytes"}
}

# Every route that reads or writes the database (api/errors.py).
UNAVAILABLE: Responses = {
    503: {
        "model": Problem,
        "description": "The database is down, busy or slow; try again (same Idempotency-Key)",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        },
    }
}

# Every route with a JSON body: bytes that are not even text or nest too deep for the parser.
UNPARSABLE: Responses = {
    400: {"model": Problem, "description": "The body could not be parsed (invalid UTF-8, ...)"}
}
