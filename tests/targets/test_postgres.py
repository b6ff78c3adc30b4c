"""The target layer against real servers: field mapping, idempotence, error classification
made real (server stopped, NUL byte, too-long value, CHECK, statement timeout), the pool's
connection budget, schema versioning and `check`."""

import datetime as dt
import json
import os
import threading
import time

import psycopg2
import pytest

from outbox_relay.errors import RowRejected, TargetUnavailable
from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.schema import target as schema
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target
from outbox_relay.targets.postgres import PostgresTarget

from factories import RECEIVED, flat, flats, rows_of, sample
from relayutil import pg_query, put_all, row_stats
from scenarios import count_on, in_threads, pool_through_a_server_crash, write_through_one_pool
from serverproc import free_port, wait_until


@pytest.fixture
def target(pg_url, make_target):
    return make_target(pg_url)


RELAY_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outbox-relay'"


def relay_backends(cluster_or_url):
    """Client backends that say they are the relay (application_name)."""
    if isinstance(cluster_or_url, str):
        return pg_query(cluster_or_url, RELAY_BACKENDS)[0][0]
    return cluster_or_url.execute(RELAY_BACKENDS)[0][0]


# -- writing ---------------------------------------------------------------------------------


def test_write_maps_every_field(target, pg_url):
    messages = [normalize(sample(n)) for n in ("v2_text.json", "v2_post.json", "v2_image.json",
                                                "v1_text.json", "flat_message.json",
                                                "openclaw_message_received.json")]
    assert target.write(rows_of(messages, first_id=41)) == len(messages)

    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT message_id, chat_id, chat_type, thread_id, root_id, parent_id, sender_id,"
                        " sender_type, msg_type, content, text, mentions, created_at, source, raw,"
                        " received_at, relayed_at, outbox_host, outbox_id FROM feishu_messages")
            got = {r[0]: r for r in cur.fetchall()}
    finally:
        conn.close()
    assert len(got) == len(messages)
    for n, m in enumerate(messages):
        (message_id, chat_id, chat_type, thread_id, root_id, parent_id, sender_id, sender_type, msg_type,
         content, text, mentions, created_at, source, raw, received_at, relayed_at, host,
         outbox_id) = got[m.message_id]
        assert (chat_id, chat_type, thread_id, sender_id, sender_type) == (
            m.chat_id, m.chat_type, m.thread_id, m.sender_id, m.sender_type)
        assert (root_id, parent_id) == (m.root_id, m.parent_id)
        assert (msg_type, text, source) == (m.msg_type, m.text, m.source)
        assert content == m.content and mentions == m.mentions and raw == m.raw  # jsonb, decoded
        assert created_at == dt.datetime.fromtimestamp(m.created_at / 1000, dt.timezone.utc)
        assert received_at == dt.datetime.fromtimestamp(RECEIVED, dt.timezone.utc)
        assert relayed_at is not None and abs(time.time() - relayed_at.timestamp()) < 60
        assert (host, outbox_id) == ("host-a", 41 + n)

    v2 = got["om_5ce6d572455d361153b7cb51da133945"]
    assert v2[1:9] == ("oc_5ce6d572455d361153b7xx51da133945", "group", "omt_d4be107c616",
                       "om_5ce6d572455d361153b7cb5xxfsdfsdfdsf", "om_5ce6d572455d361153b7cb5xxfsdfsdfdsf",
                       "ou_84aad35d084aa403a838cf73ee18467", "user", "text")
    assert v2[11][0]["name"] == "Tom"
    assert "超链接" in got["om_post_0001"][10]


def test_copy_survives_tabs_newlines_backslashes_and_quotes(target, pg_url):
    nasty = "tab\there\nnew line\r\\N \\. back\\slash 'quote' \"dq\" 😀 测试"
    m = normalize(flat(1, text=nasty, content=json.dumps({"text": nasty})))
    assert target.write(rows_of([m])) == 1
    text, content = pg_query(pg_url, "SELECT text, content FROM feishu_messages")[0]
    assert text == nasty and content == {"text": nasty}


def test_write_is_idempotent(target, pg_url):
    rows = rows_of(flats(300))
    assert target.write(rows) == 300
    assert target.write(rows) == 0                     # the whole batch again
    assert target.write(rows_of(flats(310))) == 10      # overlapping batch: only the new ones
    assert row_stats(pg_url) == (310, 310)
    assert target.count() == 310


def test_sqlite_target_writes_and_is_idempotent(tmp_path):
    t = open_target(f"sqlite:///{tmp_path}/archive.db")
    try:
        t.init_db()
        assert t.name == "sqlite" and "SQLite archive" in t.describe()
        assert t.write(rows_of(flats(50))) == 50
        assert t.write(rows_of(flats(60))) == 10
        assert t.count() == 60
        assert t.check()["server_version"].startswith("SQLite")
    finally:
        t.close()


# -- error classification, with real server errors ---------------------------------------------


def test_stopped_server_is_target_unavailable_and_the_pool_recovers(private_pg):
    private_pg.execute("CREATE DATABASE relay")
    pool_through_a_server_crash(private_pg.url("relay"), lambda: private_pg.stop(mode="immediate"), private_pg.start)


def test_unreachable_target_error_never_shows_the_password():
    port = free_port()
    t = open_target(f"postgresql://relay:s3cret-pw@127.0.0.1:{port}/db", connect_timeout=2)
    try:
        with pytest.raises(TargetUnavailable) as err:
            t.write(rows_of(flats(1)))
        assert "s3cret-pw" not in str(err.value)
        assert "s3cret-pw" not in t.display_url and "s3cret-pw" not in t.describe()
    finally:
        t.close()


def test_a_nul_character_is_stored_as_the_replacement_character(target, pg_url):
    """PostgreSQL refuses U+0000 in text and jsonb (22021 / 22P05); such a message used to be dead
    forever. It is stored with U+FFFD instead, in the text and inside the JSON columns; a literal
    backslash-u0000 typed by a person is not touched."""
    nul = normalize({"message_id": "om_nul", "chat_id": "oc_1", "text": "nul\x00inside \\u0000 typed"})
    assert target.write(rows_of(flats(5) + [nul])) == 6
    (text, raw_text, content_text), = pg_query(
        pg_url, "SELECT text, raw->>'text', content->>'text' FROM feishu_messages WHERE message_id = %s",
        (nul.message_id,))
    assert text == raw_text == content_text == "nul\ufffdinside \\u0000 typed"


def test_value_too_long_and_check_violation_are_row_rejected(target, pg_url):
    pg_query(pg_url, "ALTER TABLE feishu_messages ALTER msg_type TYPE varchar(8)")
    with pytest.raises(RowRejected) as err:
        target.write(rows_of([normalize(flat(1, msg_type="interactive"))]))
    assert err.value.sqlstate == "22001" and "character varying(8)" in str(err.value)

    pg_query(pg_url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_banned CHECK (chat_id <> 'oc_banned')")
    with pytest.raises(RowRejected) as err:
        target.write(rows_of([normalize(flat(2, chat_id="oc_banned"))]))
    assert err.value.sqlstate == "23514" and "no_banned" in str(err.value)


def test_statement_timeout_is_transient(target, pg_url):
    t = open_target(pg_url, statement_timeout=1)
    blocker = psycopg2.connect(pg_url)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE feishu_messages IN ACCESS EXCLUSIVE MODE")  # held: no commit
        started = time.monotonic()
        with pytest.raises(TargetUnavailable) as err:
            t.write(rows_of(flats(3)))
        assert err.value.sqlstate == "57014"
        assert time.monotonic() - started < 10
    finally:
        blocker.rollback()
        blocker.close()
        t.close()
    assert row_stats(pg_url) == (0, 0)


def test_role_without_privileges_is_transient_not_a_row_error(pg_server, pg_url):
    role = f"ro_{os.getpid()}"
    pg_server.execute(f'DROP ROLE IF EXISTS "{role}"')
    pg_server.create_role(role)
    try:
        setup = open_target(pg_url)
        setup.init_db()
        setup.close()
        url = pg_url.replace("postgres@", f"{role}@", 1)
        t = open_target(url)
        try:
            with pytest.raises(TargetUnavailable) as err:   # 42501: the rows are fine, the grant is not
                t.write(rows_of(flats(1)))
            assert err.value.sqlstate == "42501"
            assert t.classify(err.value) is err.value
        finally:
            t.close()
    finally:
        pg_server.terminate_backends(user=role)
        pg_query(pg_url, f'DROP OWNED BY "{role}"')
        pg_server.execute(f'DROP ROLE IF EXISTS "{role}"')


# -- the pool --------------------------------------------------------------------------------------


def test_pool_never_holds_more_than_pool_size_connections(private_pg):
    """Eight threads share one open_target(pool_size=2) under a role with CONNECTION LIMIT 2:
    they queue for the pool instead of opening connections; nothing fails."""
    private_pg.execute("CREATE DATABASE relay")
    private_pg.create_role("relay", connection_limit=2)
    private_pg.execute("GRANT ALL ON SCHEMA public TO relay", dbname="relay")
    t = open_target(private_pg.url("relay", user="relay"), pool_size=2)
    t.init_db(trigram=False)
    sampler = private_pg.connect()
    errors, counts = write_through_one_pool(t, lambda: count_on(sampler, RELAY_BACKENDS))
    sampler.close()
    try:
        assert errors == []
        assert t.count() == 8 * 10 * 50
        assert len(counts) > 10 and max(counts) <= 2, counts
        assert max(counts) >= 1
    finally:
        t.close()


def test_connection_killed_while_pooled_is_discarded_not_reused(target, pg_server, pg_url):
    assert target.write(rows_of(flats(5))) == 5
    dbname = pg_url.rsplit("/", 1)[1]
    pid_before = pg_query(pg_url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'outbox-relay'"
                                  " AND datname = %s", (dbname,))
    assert len(pid_before) == 1
    killed = pg_query(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'outbox-relay' AND datname = %s", (dbname,))
    assert killed == [(True,)]
    wait_until(lambda: relay_backends(pg_url) == 0, what="the terminated backend to go")
    assert target.write(rows_of(flats(10))) == 5          # first try: the dead one was noticed
    pid_after = pg_query(pg_url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'outbox-relay'"
                                 " AND datname = %s", (dbname,))
    assert pid_after and pid_after != pid_before


# -- schema ----------------------------------------------------------------------------------------


def test_init_db_is_idempotent_and_versioned(pg_url, monkeypatch):
    t = open_target(pg_url)
    try:
        assert t.schema_version() == 0
        report = t.init_db()
        assert {k: report[k] for k in ("from_version", "version", "dropped", "trigram", "rollup")} == \
            {"from_version": 0, "version": 2, "dropped": False, "trigram": "created", "rollup": "created"}
        assert set(report["search"].values()) == {"created"}
        assert t.init_db()["from_version"] == 2
        assert t.schema_version() == 2
        indexes = {r[0] for r in pg_query(pg_url, "SELECT indexname FROM pg_indexes"
                                                  " WHERE tablename = 'feishu_messages'")}
        assert {"feishu_messages_pkey", "feishu_messages_chat_created", "feishu_messages_created",
                "feishu_messages_text_trgm"} <= indexes
        assert t.write(rows_of(flats(3))) == 3

        # A later release adds a migration: only the missing step runs, the data stays.
        original = schema.target_migrations

        def with_v3(db, table, existing=None):
            return original(db, table, existing) + [[f"ALTER TABLE {db.quote(table)} ADD COLUMN lang varchar(16)"]]
        monkeypatch.setattr(schema, "target_migrations", with_v3)
        report = t.init_db()
        assert {k: report[k] for k in ("from_version", "version", "dropped", "trigram", "rollup")} == \
            {"from_version": 2, "version": 3, "dropped": False, "trigram": "created", "rollup": "exists"}
        assert t.init_db()["from_version"] == 3           # ADD COLUMN would fail if run twice
        assert t.schema_version() == 3 and t.count() == 3
        cols = {r[0] for r in pg_query(pg_url, "SELECT column_name FROM information_schema.columns"
                                               " WHERE table_name = 'feishu_messages'")}
        assert "lang" in cols
    finally:
        t.close()


def test_concurrent_init_db_from_many_relays(pg_url):
    """Relays on several hosts start at once against an empty database: all succeed."""
    targets = [open_target(pg_url) for _ in range(4)]
    barrier = threading.Barrier(len(targets))

    def init(t):
        barrier.wait(10)
        return t.init_db()

    results, errors = in_threads(init, targets)
    for t in targets:
        t.close()
    assert errors == []
    assert sorted(r["from_version"] for r in results) == [0, 2, 2, 2]
    assert all(r["trigram"] == "created" for r in results), results


@pytest.mark.parametrize("version_table_readable", [True, False])
def test_ddl_printed_for_the_dba_creates_a_working_table(pg_server, pg_url, tmp_outbox,
                                                         version_table_readable):
    """On RDS the app role may not run DDL: ensure_schema says so (no crash), the DBA runs
    `schema --sql`'s output and grants the app role what it needs (perhaps not even the
    version table), and the relay then writes."""
    role = f"app_{os.getpid()}"
    pg_server.execute(f'DROP ROLE IF EXISTS "{role}"')
    pg_server.create_role(role)
    url = pg_url.replace("postgres@", f"{role}@", 1)
    t = open_target(url)
    try:
        early = open_target(url)
        assert early.ensure_schema() is False              # 42501 on CREATE: warned, not raised
        early.close()
        dba = psycopg2.connect(pg_url)
        dba.autocommit = True
        with dba.cursor() as cur:
            cur.execute(schema.schema_sql(PostgresTarget, "feishu_messages"))
            cur.execute(f'GRANT SELECT, INSERT, UPDATE ON feishu_messages, feishu_message_events TO "{role}"')
            if version_table_readable:
                cur.execute(f'GRANT SELECT ON outbox_relay_schema TO "{role}"')
        dba.close()
        if version_table_readable:
            assert t.schema_version() == 2
        assert t.ensure_schema() is False                 # nothing it can or need do
        with Outbox(tmp_outbox) as outbox:
            put_all(outbox, [flat(i) for i in range(4)])
            r = Relay(outbox, t).step()
        assert (r.delivered, r.new, r.error) == (4, 4, None)
    finally:
        t.close()
        pg_server.terminate_backends(user=role)
        pg_query(pg_url, f'DROP OWNED BY "{role}"')
        pg_server.execute(f'DROP ROLE IF EXISTS "{role}"')


# -- diagnostics -----------------------------------------------------------------------------------


def test_check_reports_version_latency_and_connections(private_pg):
    private_pg.execute("CREATE DATABASE relay")
    private_pg.create_role("relay", connection_limit=2)
    private_pg.execute("GRANT ALL ON SCHEMA public TO relay", dbname="relay")
    t = open_target(private_pg.url("relay", user="relay"), pool_size=2)
    try:
        t.init_db(trigram=False)
        info = t.check()
    finally:
        t.close()
    assert info["dialect"] == "postgresql"
    assert info["server_version"].split(".")[0].isdigit()
    assert 0 < info["latency_ms"] < 1000
    assert info["max_connections"] == 100 and info["reserved_connections"] >= 0
    assert info["user"] == "relay" and info["role_connection_limit"] == 2
    assert info["relay_connections"] >= 1 and info["role_connections_in_use"] >= 1
    assert info["connections_in_use"] >= 1 and info["pool_size"] == 2
    assert info["schema_version"] == 2 and info["table"] == "feishu_messages"
