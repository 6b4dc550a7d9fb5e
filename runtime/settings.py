"""All configuration, read once from the environment (names as in docs/CONFIGURATION.md)."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# One per core, but not so many that the database's connections run out by default.
MAX_DEFAULT_PROCESSES = 4


class Settings(BaseSettings):
    """Environment knobs. Each field's env var is its name in upper case."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset = embedded server under DATA_DIR"
    )
    data_dir: Path = Field(default=Path(".data"), description="Embedded PostgreSQL lives here")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        default=None,
        min_length=1,
        description="Bearer token for calls that change state (not POST /orders); unset: open",
    )

    approval_threshold_cents: int = Field(default=100_000, ge=0)
    approval_timeout_seconds: float = Field(default=86_400, gt=0)
    participant_latency_ms: int = Field(default=0, ge=0)
    step_timeout_seconds: float = Field(default=10.0, gt=0)
    step_attempts: int = Field(default=5, ge=1, le=100)
    compensation_attempts: int = Field(default=10, ge=1, le=100)
    retry_backoff_seconds: float = Field(default=0.5, ge=0)
    attention_after_seconds: float = Field(
        default=300.0,
        gt=0,
        description="An unfinished saga unchanged this long (past its deadline, if awaiting "
        "approval) needs attention; written to orders.settings for the saga_status view",
    )

    process_role: Literal["all", "api", "worker"] = Field(
        default="all",
        description="all: one process does everything; api: HTTP, enqueues sagas only; "
        "worker: runs sagas from the queue",
    )
    worker_concurrency: int = Field(
        default=1000,
        ge=1,
        description="Sagas one worker holds at once, those waiting for approval or parked "
        "included (DBOS counts every unfinished saga a worker took from the queue)",
    )
    queue_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="How often a worker looks for new sagas on the queue (their start delay)",
    )
    takeover_after_seconds: float = Field(
        default=15.0,
        ge=1,
        description="This process's lease: once its heartbeat is this old it is dead to "
        "everyone, and stops acting itself a little before; a dead worker's sagas move",
    )
    processes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Serving processes behind the one port (unset: one per core, up to "
        f"{MAX_DEFAULT_PROCESSES}, for the all role; 1 for api and worker)",
    )
    executor_id: str = Field(default="local", min_length=1)
    executor_lock_wait_seconds: float = Field(
        default=15.0, ge=0, description="How long a start waits for its executor id to be free"
    )
    application_version: str = Field(
        default="order-saga-1", description="Bump on purpose; see docs/SAGA.md 'Changing the saga'"
    )
    db_pool_size: int = Field(default=10, ge=1)
    db_wait_seconds: float = Field(
        default=5.0, gt=0, description="How long an HTTP call waits for the database before 503"
    )
    seed_demo_catalog: bool = True
    log_level: str = "INFO"
    metrics: bool = Field(
        default=True, description="false: no counters or histograms, GET /metrics answers 404"
    )
    log_format: Literal["json", "text"] | None = Field(
        default=None,
        description="json: one JSON object per record; text: one readable line; "
        "unset: text on a terminal, else JSON",
    )

    def serving_processes(self) -> int:
        """PROCESSES, or its default for this role."""
        if self.processes is not None:
            return self.processes
        if self.process_role != "all":
            return 1  # split mode scales by starting more API processes and workers
        return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_PROCESSES))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
