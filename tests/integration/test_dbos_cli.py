"""DBOS's own command line on the database in use (`.venv/bin/dbos`, `make dbos`), and the
service's startup line pointing at our own tools rather than DBOS Conductor."""

import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orders.model import FORWARD_STEPS
from runtime.dbos_cli import NOT_MIGRATED
from tests.support import postgres
from tests.support.orders import new_id, order_body
from tests.support.process import ROOT, ServiceProcess, inherited

DBOS_CLI = str(ROOT / ".venv/bin/dbos")
MAKE_DBOS = (sys.executable, "-m", "runtime.dbos_cli")  # what `make dbos ARGS=…` runs


@dataclass
class Served:
    url: str
    service: ServiceProcess
    saga_id: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The service on a database of its own, after one saga has completed there."""
    url = postgres.create_database("saga_dbos_cli")
    service = ServiceProcess(url, LOG_LEVEL="INFO", SEED_DEMO_CATALOG="false")
    try:
        service.start()
        with httpx.Client(base_url=service.url, timeout=60) as client:
            sku = new_id("SKU")
            stock = {"available": 1, "price_cents": 1000}
            client.put(f"/inventory/{sku}", json=stock).raise_for_status()
            view = client.post("/orders", json=order_body({sku: 1}), params={"wait": 30}).json()
        assert view["state"] == "COMPLETED", view
        yield Served(url, service, view["saga_id"])
    finally:
        service.stop()
        postgres.drop_database(url)


def run(
    *command: str, cwd: Path = ROOT, without: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """`command` with the test's environment, minus `without`, plus `env`."""
    base = {k: v for k, v in inherited().items() if k not in without}
    return subprocess.run(
        command, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def listed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dbos_workflow_list_shows_the_saga(served: Served) -> None:
    workflows = listed(run(DBOS_CLI, "workflow", "list", DATABASE_URL=served.url))

    [saga] = [w for w in workflows if w["workflow_id"] == served.saga_id]
    assert saga["name"] == "order_fulfillment"
    assert saga["status"] == "SUCCESS"


def test_dbos_workflow_steps_shows_each_step_the_saga_ran(served: Served) -> None:
    steps = listed(run(DBOS_CLI, "workflow", "steps", served.saga_id, DATABASE_URL=served.url))

    names = [step["function_name"] for step in steps]
    assert [name for name in names if name in FORWARD_STEPS] == list(FORWARD_STEPS)


def test_make_dbos_runs_dbos_cli_on_database_url_from_any_directory(
    served: Served, tmp_path: Path
) -> None:
    result = run(
        *MAKE_DBOS, "workflow", "list", cwd=tmp_path, PYTHONPATH=str(ROOT), DATABASE_URL=served.url
    )

    workflows = listed(result)  # dbos-config.yaml found though run from elsewhere
    assert served.saga_id in [w["workflow_id"] for w in workflows]


def test_make_dbos_with_a_bad_subcommand_gets_dbos_usage_and_exit_status_2(
    served: Served,
) -> None:
    result = run(*MAKE_DBOS, "workflow", "lsit", DATABASE_URL=served.url)

    assert result.returncode == 2
    assert "Usage: dbos workflow" in result.stderr
    assert "No such command 'lsit'" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_dbos_on_an_unknown_workflow_says_so_in_one_line(served: Served) -> None:
    result = run(*MAKE_DBOS, "workflow", "get", "no-such-saga", DATABASE_URL=served.url)

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert "no-such-saga" in line


def test_make_dbos_on_a_database_without_dbos_tables_says_how_to_make_them() -> None:
    url = postgres.create_database("saga_dbos_empty")
    try:
        result = run(*MAKE_DBOS, "workflow", "list", DATABASE_URL=url)
    finally:
        postgres.drop_database(url)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == NOT_MIGRATED
    assert "Traceback" not in result.stderr


def test_make_dbos_uses_the_embedded_server_when_database_url_is_unset() -> None:
    """`make dbos ARGS=migrate` on a new embedded server makes DBOS's tables (and ours, by the
    command in dbos-config.yaml); `workflow list` then lists nothing. The server under
    DATA_DIR is started for each, and stopped again after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pgserver._commands import POSTGRES_BIN_PATH

    data = Path(tempfile.mkdtemp(prefix="saga-dbos-"))
    pgdata = data / "pg"

    def make_dbos(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*MAKE_DBOS, *args, without=("DATABASE_URL",), DATA_DIR=str(data))

    try:
        migrated = make_dbos("migrate")
        after = make_dbos("workflow", "list")
        left_running = (pgdata / "postmaster.pid").exists()
    finally:
        if (pgdata / "postmaster.pid").exists():
            pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
            subprocess.run([pg_ctl, "stop", "-D", str(pgdata), "-m", "immediate"], check=False)
        shutil.rmtree(data, ignore_errors=True)

    assert migrated.returncode == 0, migrated.stderr
    assert "Executing migration command: .venv/bin/python -m alembic upgrade head" in (
        migrated.stdout
    )
    assert listed(after) == []
    assert not left_running


def test_the_startup_log_points_at_our_api_and_metrics_not_at_dbos_conductor(
    served: Served,
) -> None:
    log = served.service.log.read_text()

    url = served.service.url
    assert f"{url}/orders (the API, {url}/docs), {url}/metrics (Prometheus)" in log
    assert "DBOS Conductor" not in log
    assert "console.dbos.dev" not in log
    assert "DBOS launched!" in log  # DBOS's other lines stay
