"""The answers a downstream operation gives: JSON values only (they are checkpointed)."""

from typing import Any

Outcome = dict[str, Any]


class ServiceUnavailable(Exception):
    """The service could not be reached or did not answer: transient, worth retrying."""


def done(**fields: Any) -> Outcome:
    """The operation happened (or had already happened under this key)."""
    return {"outcome": "done", **fields}


def refused(reason: str) -> Outcome:
    """A business refusal: permanent, nothing was changed, retrying will not help."""
    return {"outcome": "refused", "reason": reason}


def is_refused(outcome: Outcome) -> bool:
    return outcome.get("outcome") == "refused"
