"""The runtime's own guarantees."""

import pytest
from psycopg_pool import ConnectionPool

from runtime import database


def test_a_closed_pool_stops_a_step_without_looking_like_its_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DBOS records an Exception raised in a step as its failure, and the saga compensates
    for that; a process that is stopping must do neither, so this is a BaseException."""
    closed: ConnectionPool = ConnectionPool("postgresql://unused", open=False)
    closed.close()
    monkeypatch.setattr(database, "_pool", closed)

    with pytest.raises(database.RuntimeStopped), database.connection():
        pass
    assert not issubclass(database.RuntimeStopped, Exception)
