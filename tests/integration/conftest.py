from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


@pytest.fixture
def conn(live_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection from the app's own pool (the app is started, so migrations ran)."""
    from runtime import database

    with database.connection() as connection:
        yield connection
