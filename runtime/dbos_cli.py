"""`python -m runtime.dbos_cli ARGS` (`make dbos ARGS="…"`): DBOS's own command line on the
database in use.

It is `.venv/bin/dbos ARGS` run in the project directory (where dbos-config.yaml is) with
DATABASE_URL set to the database in use: when DATABASE_URL is unset, the embedded server's,
started if need be. An error is a message, not a traceback; bad usage gets DBOS's usage
message and exit status 2.
"""

import logging
import os
import sys
from pathlib import Path

import click
import psycopg

from runtime.embedded import resolve_url
from runtime.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
NOT_MIGRATED = (
    "The database has no DBOS tables yet: `make run` or `make dbos ARGS=migrate` makes them."
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # Importing DBOS's CLI sets the root logger to INFO (dbos/_docker_pg_helper.py), and
    # pgserver would then log every pg_ctl command.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # dbos-config.yaml reads its system_database_url from DATABASE_URL, in the directory
    # DBOS's CLI is run in; the commands it runs (`dbos migrate`) inherit both.
    os.environ["DATABASE_URL"] = resolve_url(get_settings())
    os.chdir(ROOT)
    return run(args)


def run(args: list[str]) -> int:
    """DBOS's command line with `args`, in this process; its exit status."""
    from dbos.cli.cli import app

    try:
        status = app.main(args, prog_name="dbos", standalone_mode=False)
    except click.ClickException as error:  # bad usage (exit status 2), or DBOS refusing (1)
        error.show()
        return error.exit_code
    except click.Abort:  # Ctrl-C
        click.echo("Aborted!", err=True)
        return 1
    except Exception as error:  # from DBOS: an unknown workflow id, a database it cannot read
        lines = str(error).splitlines()
        click.echo(f"Error: {lines[0] if lines else type(error).__name__}", err=True)
        if isinstance(getattr(error, "orig", None), psycopg.errors.UndefinedTable):
            click.echo(NOT_MIGRATED, err=True)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
