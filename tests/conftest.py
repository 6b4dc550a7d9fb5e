"""The suite's real PostgreSQL, the app served for real, and helpers every tier uses.

App modules are imported inside fixtures only: settings are read on first import, and
DATABASE_URL is pointed at a fresh test database in pytest_configure first. Under
pytest-xdist every worker process does this for itself (its own embedded server, or its own
databases on DATABASE_URL's); the controller runs no test and needs none.
"""

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import knobs, postgres
from tests.support.orders import new_id

EXIT_STATUS = pytest.StashKey[int]()

os.environ.update(knobs.IN_PROCESS)


def _runs_tests(config: pytest.Config) -> bool:
    """False in pytest-xdist's controller, which only hands tests to its workers."""
    workers = getattr(config.option, "numprocesses", None)
    return hasattr(config, "workerinput") or not workers


def pytest_configure(config: pytest.Config) -> None:
    if not _runs_tests(config):
        return
    postgres.start(os.environ.get("DATABASE_URL"))
    os.environ["DATABASE_URL"] = postgres.create_database()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    from runtime.exit import exit_if_sagas_wait

    if not _runs_tests(config):
        return
    postgres.drop_database(os.environ["DATABASE_URL"])
    postgres.stop()
    # Sagas left waiting (approval, parked) sit in DBOS threads that would hold the exit.
    exit_if_sagas_wait(config.stash.get(EXIT_STATUS, 0))


@pytest.fixture(scope="session")
def live_url() -> Iterator[str]:
    from api.app import create_app
    from tests.support.live import LiveServer

    server = LiveServer(create_app())
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def api(live_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_url, timeout=60) as client:
        yield client


@pytest.fixture
def db() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        yield conn


@pytest.fixture
def stock(api: httpx.Client) -> Callable[..., str]:
    """stock(available, price_cents=1000) -> a new SKU with that much available."""

    def make(available: int, price_cents: int = 1000) -> str:
        sku = new_id("SKU")
        response = api.put(
            f"/inventory/{sku}", json={"available": available, "price_cents": price_cents}
        )
        response.raise_for_status()
        return sku

    return make


@pytest.fixture
def faults_repaired(api: httpx.Client) -> Iterator[None]:
    """Every fault switch is off again after the test."""
    yield
    for operation in api.get("/faults").json():
        api.put(f"/faults/{operation}", json={"down": False}).raise_for_status()
