"""The saga's own bookkeeping step."""

from dbos import DBOS

from orders import journal
from runtime import database
from steps import runner


@DBOS.step(name="record_failure", **runner.compensation_policy())
def record_failure(order_id: str, reason: str) -> None:
    """Mark the saga FAILED once everything it did has been undone."""
    with database.connection() as conn:
        journal.saga_failed(conn, order_id, reason)
