"""The settings the suite gives the in-process app: fast, deterministic retries and waits.
Services started as subprocesses do not inherit them; each test passes its own."""

IN_PROCESS = {
    "PARTICIPANT_LATENCY_MS": "0",
    "RETRY_BACKOFF_SECONDS": "0.02",
    "STEP_ATTEMPTS": "4",
    "COMPENSATION_ATTEMPTS": "4",
    "APPROVAL_THRESHOLD_CENTS": "100000",
    "APPROVAL_TIMEOUT_SECONDS": "4",
    "STEP_TIMEOUT_SECONDS": "1",
    "SEED_DEMO_CATALOG": "false",
    "LOG_LEVEL": "WARNING",
}
