"""Simulated downstream services. Each owns its schema; operations are idempotent by key.

They know nothing of sagas or DBOS. An operation answers with an outcome dict:
`{"outcome": "done", ...}` or, for a business refusal, `{"outcome": "refused", "reason": ...}`.
An unreachable service raises `ServiceUnavailable` (transient: worth retrying).
"""
