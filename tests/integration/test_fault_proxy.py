"""The fault proxy (chaos/faultproxy.py) against the suite's real PostgreSQL: what passes
through unchanged, and what each fault really does to the client and to the server."""

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import errors

from chaos.faultproxy import FaultProxy, LinkInfo

Conn = psycopg.Connection[Any]


def database_url() -> str:
    return os.environ["DATABASE_URL"]


def new_app(label: str) -> str:
    return f"fp-{label}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll until predicate() holds; whether it did within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def sessions(db: Conn, application_name: str) -> int:
    """The server's sessions of that application (LIKE pattern), seen from a direct connection."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        (application_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def link_of(proxy: FaultProxy, application_name: str) -> LinkInfo:
    (link,) = [link for link in proxy.links() if link.application_name == application_name]
    return link


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    started = FaultProxy(database_url()).start()
    yield started
    started.stop()


@pytest.fixture
def connect(proxy: FaultProxy) -> Iterator[Callable[..., Conn]]:
    """connect(application_name, **kwargs): an autocommit connection through the proxy."""
    opened: list[Conn] = []

    def make(application_name: str, **kwargs: Any) -> Conn:
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg.connect(
            proxy.url_for(database_url()),
            application_name=application_name,
            autocommit=True,
            **kwargs,
        )
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


@pytest.fixture
def table(db: Conn) -> Iterator[str]:
    name = f"fp_rows_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    db.execute(f"DROP TABLE {name}")


def ids(db: Conn, table: str) -> list[int]:
    return [row[0] for row in db.execute(f"SELECT id FROM {table} ORDER BY id")]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


# -- passing through -------------------------------------------------------------------


def test_queries_transactions_prepared_statements_pipelines_and_copy_pass_through_unchanged(
    connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    conn = connect(new_app("plain"))
    assert conn.execute("SELECT 1, 'zürich'::text, NULL::int").fetchone() == (1, "zürich", None)
    assert conn.execute("SELECT %s::int + %s", (40, 2)).fetchone() == (42,)

    with conn.transaction():
        conn.execute(f"INSERT INTO {table} VALUES (1), (2)")
    with pytest.raises(errors.UniqueViolation):
        conn.execute(f"INSERT INTO {table} VALUES (1)")
    with conn.transaction():
        conn.execute(f"INSERT INTO {table} VALUES (3)")
        raise psycopg.Rollback
    assert ids(db, table) == [1, 2]

    for i in range(6):
        assert conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone() == (i * 2,)
    prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared is not None
    assert prepared[0] >= 1  # later executions were Binds of a named statement

    with conn.pipeline():
        first = conn.execute("SELECT 10")
        second = conn.execute(f"INSERT INTO {table} VALUES (%s) RETURNING id", (4,))
    assert first.fetchone() == (10,)
    assert second.fetchone() == (4,)

    with conn.cursor().copy(f"COPY {table} (id) FROM STDIN") as copy:
        for i in range(100, 200):
            copy.write_row((i,))
    with conn.cursor().copy(f"COPY {table} (id) TO STDOUT") as copy:
        copied = [int(row[0]) for row in copy.rows()]
    assert copied == ids(db, table) == [1, 2, 4, *range(100, 200)]


def test_a_large_result_and_a_large_parameter_pass_through_byte_for_byte(
    connect: Callable[..., Conn], db: Conn
) -> None:
    conn = connect(new_app("large"))
    query = "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 120000) i"
    value = conn.execute(query).fetchone()
    assert value is not None
    assert len(value[0]) == 120000 * 32  # a few MB in one DataRow
    direct = db.execute(f"SELECT md5(({query}))").fetchone()
    assert direct is not None
    assert hashlib.md5(value[0].encode(), usedforsecurity=False).hexdigest() == direct[0]

    rows_query = "SELECT i, md5(i::text) FROM generate_series(1, 50000) i"
    assert conn.execute(rows_query).fetchall() == db.execute(rows_query).fetchall()

    parameter = "ab" * 1_500_000
    assert conn.execute("SELECT md5(%s)", (parameter,)).fetchone() == (
        hashlib.md5(parameter.encode(), usedforsecurity=False).hexdigest(),
    )


def test_links_show_each_connections_application_name_user_and_database(
    proxy: FaultProxy, connect: Callable[..., Conn]
) -> None:
    before = time.monotonic()
    app = new_app("links")
    conn = connect(app)
    link = link_of(proxy, app)
    url = urlsplit(database_url())
    assert (link.user, link.database, link.state) == (url.username, url.path[1:], "open")
    assert link.opened_at >= before

    conn.execute("SET application_name = 'fp-renamed'")  # the server reports the change
    assert link_of(proxy, "fp-renamed").id == link.id


def test_url_for_points_at_the_proxy_and_keeps_everything_else(proxy: FaultProxy) -> None:
    here = f"127.0.0.1:{proxy.port}"
    assert (
        proxy.url_for("postgresql://u:p%40ss@/db?host=/tmp/x/pg&sslmode=disable&port=6000")
        == f"postgresql://u:p%40ss@{here}/db?sslmode=disable"
    )
    assert (
        proxy.url_for("postgresql://app@db.example:5433/orders?connect_timeout=3&options=-c%20a")
        == f"postgresql://app@{here}/orders?connect_timeout=3&options=-c%20a"
    )
    assert proxy.url_for("postgresql:///db") == f"postgresql://{here}/db"


def test_a_proxy_forwards_to_a_tcp_upstream_too(proxy: FaultProxy, db: Conn, table: str) -> None:
    with FaultProxy(proxy.url_for(database_url())) as outer:  # SSLRequest, then 'N', twice
        armed = outer.lose_reply(sql=f"INSERT INTO {table}")
        with psycopg.connect(outer.url_for(), autocommit=True, connect_timeout=5) as conn:
            assert conn.execute("SELECT 7").fetchone() == (7,)
            with pytest.raises(psycopg.OperationalError):
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
        assert armed.fired.is_set()
    assert ids(db, table) == [1]


# -- cuts ------------------------------------------------------------------------------


def test_a_cut_drops_the_client_and_ends_its_server_session(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn
) -> None:
    app = new_app("cut")
    conn = connect(app)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert sessions(db, app) == 1

    proxy.cut(link_of(proxy, app).id)

    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert wait_until(lambda: sessions(db, app) == 0)
    assert proxy.links() == []
    assert proxy.counts["cut"] == 1


def test_a_half_open_cut_keeps_the_server_session_and_its_lock_until_orphans_are_closed(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn
) -> None:
    app = new_app("halfopen")
    conn = connect(app)
    assert conn.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (True,)
    link = link_of(proxy, app)

    proxy.cut(link.id, half_open=True)

    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert proxy.orphans() == 1
    assert link_of(proxy, app).state == "orphan"
    assert sessions(db, app) == 1
    assert db.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (False,)
    assert proxy.counts["half_open"] == 1

    proxy.close_orphans()

    assert wait_until(lambda: sessions(db, app) == 0)
    assert db.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (True,)
    db.execute("SELECT pg_advisory_unlock(42)")
    assert proxy.orphans() == 0
    assert proxy.links() == []


# -- lost replies ----------------------------------------------------------------------


def test_a_lost_reply_to_an_autocommit_insert_fails_the_client_but_the_row_is_there(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    app = new_app("lost-insert")
    conn = connect(app)
    armed = proxy.lose_reply(sql=rf"^\s*insert into {table}\b")

    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))

    assert armed.fired.is_set()
    assert armed.link is not None
    assert armed.link.application_name == app
    assert armed.sql is not None
    assert armed.sql.startswith(f"INSERT INTO {table}")
    assert ids(db, table) == [1]
    assert wait_until(lambda: sessions(db, app) == 0)
    assert proxy.counts["lost_reply"] == 1


def test_a_lost_reply_to_a_commit_fails_the_client_but_the_transaction_is_committed(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    conn = connect(new_app("lost-commit"))
    armed = proxy.lose_reply(sql=r"^\s*COMMIT\b")

    def insert_two_rows() -> None:
        with conn.transaction():  # BEGIN ... COMMIT
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
            conn.execute(f"INSERT INTO {table} VALUES (2)")

    with pytest.raises(psycopg.OperationalError):
        insert_two_rows()

    assert armed.fired.is_set()
    assert armed.sql == "COMMIT"
    assert ids(db, table) == [1, 2]


def test_a_lost_reply_does_not_fire_inside_an_open_transaction_and_stays_armed(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    conn = connect(new_app("lost-in-tx"))
    armed = proxy.lose_reply(sql=f"INSERT INTO {table}")

    with conn.transaction():
        conn.execute(f"INSERT INTO {table} VALUES (1)")  # answered with 'T': passed on
    assert not armed.fired.is_set()
    with pytest.raises(errors.UniqueViolation):
        conn.execute(f"INSERT INTO {table} VALUES (1)")  # idle after, but it failed
    assert not armed.fired.is_set()
    assert ids(db, table) == [1]

    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"INSERT INTO {table} VALUES (2)")
    assert armed.fired.is_set()
    assert ids(db, table) == [1, 2]


def test_a_lost_reply_of_a_prepared_statement_fires_on_a_bind_without_parse(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    conn = connect(new_app("lost-prepared"))
    insert = f"INSERT INTO {table} VALUES (%s)"
    for i in range(3):
        conn.execute(insert, (i,), prepare=True)
    armed = proxy.lose_reply(sql=f"INSERT INTO {table}")

    with pytest.raises(psycopg.OperationalError):
        conn.execute(insert, (3,), prepare=True)

    assert armed.fired.is_set()
    assert ids(db, table) == [0, 1, 2, 3]


def test_a_lost_reply_filtered_by_application_name_fires_only_on_that_applications_link(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    target, bystander = new_app("target"), new_app("bystander")
    target_conn, bystander_conn = connect(target), connect(bystander)
    armed = proxy.lose_reply(sql=f"INSERT INTO {table}", application_name="fp-target-")

    bystander_conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert not armed.fired.is_set()
    with pytest.raises(psycopg.OperationalError):
        target_conn.execute(f"INSERT INTO {table} VALUES (2)")

    assert armed.link is not None
    assert armed.link.application_name == target
    assert bystander_conn.execute("SELECT 1").fetchone() == (1,)
    assert ids(db, table) == [1, 2]


def test_a_half_open_lost_reply_keeps_the_committed_session_as_an_orphan(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    app = new_app("lost-half")
    conn = connect(app)
    armed = proxy.lose_reply(sql=f"INSERT INTO {table}", half_open=True)

    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"INSERT INTO {table} VALUES (1)")

    assert armed.fired.is_set()
    assert proxy.orphans() == 1
    assert sessions(db, app) == 1
    assert ids(db, table) == [1]
    proxy.close_orphans()
    assert wait_until(lambda: sessions(db, app) == 0)


def test_a_disarmed_lost_reply_never_fires(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn, table: str
) -> None:
    conn = connect(new_app("disarmed"))
    armed = proxy.lose_reply(sql=f"INSERT INTO {table}")
    armed.disarm()

    conn.execute(f"INSERT INTO {table} VALUES (1)")

    assert not armed.fired.is_set()
    assert ids(db, table) == [1]


# -- stalls and partitions -------------------------------------------------------------


def test_a_stall_delays_a_query_by_about_its_length_and_loses_nothing(
    proxy: FaultProxy, connect: Callable[..., Conn]
) -> None:
    app = new_app("stall")
    conn = connect(app)
    started = time.monotonic()
    proxy.stall(link_of(proxy, app).id, 1.0)
    assert link_of(proxy, app).state == "stalled"

    assert conn.execute("SELECT 42").fetchone() == (42,)
    assert 0.95 <= time.monotonic() - started < 2.5
    assert link_of(proxy, app).state == "open"
    assert proxy.counts["stall"] == 1


def test_a_stall_that_ends_in_a_cut_fails_the_query(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn
) -> None:
    app = new_app("stall-cut")
    conn = connect(app)
    started = time.monotonic()
    proxy.stall(link_of(proxy, app).id, 0.5, then_cut=True)

    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert 0.45 <= time.monotonic() - started < 2.5
    assert wait_until(lambda: sessions(db, app) == 0)
    assert (proxy.counts["stall"], proxy.counts["cut"]) == (1, 1)


def test_a_partition_times_out_new_connections_and_holds_queries_until_healed(
    proxy: FaultProxy, connect: Callable[..., Conn], pool: ThreadPoolExecutor
) -> None:
    app = new_app("partition")
    conn = connect(app)
    proxy.partition()
    assert link_of(proxy, app).state == "stalled"
    held = pool.submit(lambda: conn.execute("SELECT 5").fetchone())

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        connect(new_app("partition-new"), connect_timeout=2)
    assert 1.5 <= time.monotonic() - started < 6
    assert not held.done()

    proxy.heal()

    assert held.result(timeout=5) == (5,)
    assert connect(new_app("partition-after")).execute("SELECT 6").fetchone() == (6,)
    assert proxy.counts["partition"] == 1


# -- cancel and stop -------------------------------------------------------------------


def test_a_cancel_request_through_the_proxy_cancels_the_running_query(
    connect: Callable[..., Conn], db: Conn, pool: ThreadPoolExecutor
) -> None:
    app = new_app("cancel")
    conn = connect(app)
    sleeping = pool.submit(conn.execute, "SELECT pg_sleep(10)")
    assert wait_until(
        lambda: (
            db.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
                " AND query LIKE '%%pg_sleep%%'",
                (app,),
            ).fetchone()
            is not None
        )
    )

    started = time.monotonic()
    conn.cancel_safe(timeout=5)

    with pytest.raises(errors.QueryCanceled):
        sleeping.result(timeout=5)
    assert time.monotonic() - started < 3
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_leaves_no_server_session_of_the_proxy_behind(
    proxy: FaultProxy, connect: Callable[..., Conn], db: Conn
) -> None:
    apps = [new_app("stop") for _ in range(3)]
    conns = [connect(app) for app in apps]
    proxy.cut(link_of(proxy, apps[0]).id, half_open=True)
    proxy.stall(link_of(proxy, apps[1]).id, 30)
    assert sessions(db, "fp-stop-%") == 3

    proxy.stop()
    proxy.stop()

    assert wait_until(lambda: sessions(db, "fp-stop-%") == 0)
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
