"""Tests of the test harness itself: real PostgreSQL, real PgBouncer, real sockets.

If these fail, every database test is suspect, so they check the promises
the other tests rely on: isolation, restart/crash behaviour, fault injection.
"""

import os
import uuid

import psycopg2
import pytest

import pgharness
import tcpproxy
from serverproc import wait_until
from skiputil import unavailable


def query(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else None


# --------------------------------------------------------------- shared server


def test_shared_server_answers_select_1(pg_server):
    conn = pg_server.connect()
    try:
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


_seen_databases = []


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_its_own_empty_database(pg_url, pg_server, round_):
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    try:
        dbname = query(conn, "SELECT current_database()")[0][0]
        assert dbname != "postgres"
        # empty: no user tables, and creating the same table again cannot clash
        assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
        query(conn, "CREATE TABLE marker (round int)")
        query(conn, "INSERT INTO marker VALUES (%s)", (round_,))
    finally:
        conn.close()
    for earlier in _seen_databases:
        assert earlier != dbname
        # the earlier test's database was dropped at its teardown
        assert pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (earlier,)) == []
    _seen_databases.append(dbname)


def test_fixture_database_is_dropped_even_with_open_connections(pg_server):
    # what pg_url's teardown does: a leftover session must not block DROP DATABASE
    name = pg_server.create_database(f"t_drop_{uuid.uuid4().hex[:8]}")
    leftover = pg_server.connect(name)
    pg_server.drop_database(name)
    assert pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) == []
    with pytest.raises(psycopg2.OperationalError):
        query(leftover, "SELECT 1")
    leftover.close()


# ------------------------------------------------------------- private cluster


def test_private_cluster_is_fast_and_trusting(private_pg):
    settings = dict(
        private_pg.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'full_page_writes', 'synchronous_commit', 'max_connections', 'listen_addresses')"
        )
    )
    assert settings == {
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "on",  # see FAST_SETTINGS: off would lose commits at stop("immediate")
        "max_connections": "100",
        "listen_addresses": "127.0.0.1",
    }
    assert private_pg.url("db1").startswith(f"postgresql://postgres@127.0.0.1:{private_pg.port}/db1")
    # the unix socket lives in the short base dir
    assert os.path.exists(os.path.join(private_pg.socket_dir, f".s.PGSQL.{private_pg.port}"))


def test_private_cluster_immediate_stop_and_restart(private_pg):
    private_pg.create_database("app")
    conn = private_pg.connect("app")
    query(conn, "CREATE TABLE t (v int)")
    query(conn, "INSERT INTO t VALUES (42)")  # autocommit: committed before the "crash"
    port, url = private_pg.port, private_pg.url("app")

    private_pg.stop("immediate")
    assert not private_pg.is_running()
    with pytest.raises(psycopg2.OperationalError):
        query(conn, "SELECT 1")
    conn.close()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2)

    private_pg.start()  # returns once it accepts connections (crash recovery done)
    assert private_pg.is_running() and private_pg.port == port
    conn = psycopg2.connect(url)
    try:
        assert query(conn, "SELECT v FROM t") == [(42,)]
    finally:
        conn.close()

    private_pg.restart()  # fast mode
    assert private_pg.execute("SELECT count(*) FROM t", dbname="app") == [(1,)]


def test_private_cluster_limits_and_settings(private_pg):
    private_pg.create_role("limited", connection_limit=1)
    first = private_pg.connect(user="limited")
    with pytest.raises(psycopg2.OperationalError, match="too many connections"):
        private_pg.connect(user="limited")
    first.close()

    private_pg.configure(reload=True, statement_timeout="1234ms")  # reloadable: no restart
    assert wait_until(
        lambda: private_pg.execute("SHOW statement_timeout") == [("1234ms",)], timeout=10, what="reload"
    )
    private_pg.restart(max_connections=7)  # needs a restart
    assert private_pg.execute("SHOW max_connections") == [("7",)]


# ------------------------------------------------------------------- TCP proxy


def _loopback_server(pg_server):
    if pg_server.host not in ("127.0.0.1", "localhost", "::1"):
        unavailable("TcpProxy only forwards to loopback; the external test server is not local")
    return pg_server


def test_proxy_forwards_and_cut_all_breaks_the_connection(pg_server, pg_url, make_tcp_proxy):
    server = _loopback_server(pg_server)
    proxy = make_tcp_proxy("127.0.0.1", server.port)
    conn = psycopg2.connect(proxy.url_for(pg_url))
    assert query(conn, "SELECT 1") == [(1,)]
    big = query(conn, "SELECT repeat('x', 2000000)")[0][0]  # > the proxy's buffer limit
    assert len(big) == 2_000_000
    assert proxy.active_count() == 1

    assert proxy.cut_all() == 1
    with pytest.raises(psycopg2.OperationalError):
        query(conn, "SELECT 1")
    assert conn.closed
    assert proxy.active_count() == 0

    # the proxy itself keeps working: a new connection goes through
    conn2 = psycopg2.connect(proxy.url_for(pg_url))
    try:
        assert query(conn2, "SELECT 2") == [(2,)]
    finally:
        conn2.close()
    wait_until(lambda: proxy.active_count() == 0, timeout=5, what="proxy to see the close")


def test_proxy_refuse(pg_server, pg_url, make_tcp_proxy):
    proxy = make_tcp_proxy("127.0.0.1", _loopback_server(pg_server).port)
    proxy.refuse(True)
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        psycopg2.connect(proxy.url_for(pg_url), connect_timeout=2)
    proxy.refuse(False)
    conn = psycopg2.connect(proxy.url_for(pg_url), connect_timeout=2)
    try:
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_proxy_to_a_stopped_server_resets_clients(private_pg, make_tcp_proxy):
    proxy = make_tcp_proxy("127.0.0.1", private_pg.port)
    private_pg.stop("fast")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(proxy.url_for(private_pg.url()), connect_timeout=2)
    private_pg.start()
    conn = psycopg2.connect(proxy.url_for(private_pg.url()), connect_timeout=2)
    conn.close()


def test_proxy_chaos_cuts_connections_at_random(pg_server, pg_url, make_tcp_proxy):
    proxy = make_tcp_proxy("127.0.0.1", _loopback_server(pg_server).port)
    proxy.start_chaos(0.05, seed=7)
    failures = 0

    def one_round():
        nonlocal failures
        try:
            conn = psycopg2.connect(proxy.url_for(pg_url), connect_timeout=2)
            try:
                for _ in range(20):
                    query(conn, "SELECT pg_sleep(0.005)")
            finally:
                conn.close()
        except psycopg2.OperationalError:
            failures += 1
        return failures >= 2

    wait_until(one_round, timeout=15, interval=0, what="chaos to cut two connections")
    proxy.stop_chaos()
    assert proxy.cuts >= 2
    conn = psycopg2.connect(proxy.url_for(pg_url))  # calm again
    try:
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_proxy_only_targets_loopback():
    with pytest.raises(ValueError, match="loopback"):
        tcpproxy.TcpProxy("192.0.2.1", 5432)


# -------------------------------------------------------------------- pgbouncer


def test_pgbouncer_transaction_pooling(pg_server, pg_url, make_pgbouncer, request):
    if not isinstance(pg_server, pgharness.PgCluster):  # external server may want a password
        pg_server = request.getfixturevalue("private_pg")
        pg_server.create_database("bouncer")
        dbname = "bouncer"
    else:
        dbname = pg_url.rsplit("/", 1)[1]
    bouncer = make_pgbouncer(pg_server, default_pool_size=1)
    assert bouncer.url(dbname).startswith(f"postgresql://postgres@127.0.0.1:{bouncer.port}/")

    a = psycopg2.connect(bouncer.url(dbname))
    b = psycopg2.connect(bouncer.url(dbname))
    a.autocommit = b.autocommit = True
    try:
        assert query(a, "SELECT current_database()") == [(dbname,)]
        # transaction pooling with one server connection: both clients share its backend
        assert query(a, "SELECT pg_backend_pid()") == query(b, "SELECT pg_backend_pid()")
        a.autocommit = False  # a real transaction through the bouncer
        query(a, "CREATE TABLE bt (v int)")
        query(a, "INSERT INTO bt VALUES (1)")
        a.commit()
        assert query(b, "SELECT count(*) FROM bt") == [(1,)]
    finally:
        a.close()
        b.close()
    pools = {(row[0], row[1]): row for row in bouncer.admin("SHOW POOLS")}
    assert pools[(dbname, "postgres")][-1] == "transaction"


# ---------------------------------------------------------------------- misc


def test_tmp_outbox_is_a_fresh_path(tmp_outbox, tmp_path):
    assert isinstance(tmp_outbox, str)
    assert tmp_outbox == str(tmp_path / "outbox.db")
    assert not os.path.exists(tmp_outbox)


def test_find_pg_bindir():
    bindir = pgharness.find_pg_bindir()
    if bindir is None:
        unavailable("no PostgreSQL binaries on this machine")
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(os.path.join(bindir, name), os.X_OK)
