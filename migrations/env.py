"""Alembic environment: runs on the connection runtime.migrate passes, or on DATABASE_URL."""

import sqlalchemy as sa
from alembic import context

from runtime.database import sqlalchemy_url
from runtime.embedded import resolve_url
from runtime.settings import get_settings

config = context.config


def run_migrations(connection: sa.Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:  # `alembic upgrade head` from a shell
    engine = sa.create_engine(sqlalchemy_url(resolve_url(get_settings())))
    with engine.connect() as conn:
        run_migrations(conn)
        conn.commit()
    engine.dispose()
