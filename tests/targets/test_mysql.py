"""The MySQL/MariaDB target (targets/mysql.py) against real MariaDB servers: the URL, the missing
driver, every field and character, idempotence, the PAD SPACE guard, error classification made real
(too long, a 4-byte character in utf8mb3, CHECK, a dropped table, a held lock, a killed server),
the pool under MAX_USER_CONNECTIONS 2, TLS, DDL for the DBA, and the operator commands.

The relay's own guarantees on MariaDB (10,000 exactly once, kill -9, outage, poison rows, eight
writers) are in test_mysql_relay.py.
"""

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import hypothesis
import pytest
from hypothesis import strategies as st

from outbox_relay.errors import ConfigError, InvalidMessage, RowRejected, StatementTimeout, TargetUnavailable
from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target
from outbox_relay.targets.mysql import MySQLTarget, sql_literal

from cliutil import run_cli, run_exe
from factories import flat, flats, rows_of, sample
from relayutil import clean_env, put_all
from scenarios import count_on, in_threads, pool_through_a_server_crash, write_through_one_pool
from serverproc import free_port, wait_until

mh = pytest.importorskip("mariaharness", reason="tests/mariaharness.py needs PyMySQL (the [mysql] extra)")

pytestmark = pytest.mark.usefixtures("hermetic")


@pytest.fixture
def target(maria_url, make_target):
    return make_target(maria_url)


# -- the URL and the driver ----------------------------------------------------------------------


def test_url_is_read_like_mysqls_own_client():
    args = MySQLTarget.connect_args("mysql://relay:p%40ss%3Aw%2Fd@db.example.com/chat?ssl_mode=required")
    assert (args["user"], args["password"], args["host"], args["port"], args["database"]) == (
        "relay", "p@ss:w/d", "db.example.com", 3306, "chat")
    assert args["ssl_mode"] == "REQUIRED"
    assert MySQLTarget.connect_args("mariadb://u@h:3307/d")["ssl_mode"] == "PREFERRED"
    assert MySQLTarget.connect_args("mysql://u@h/d?ssl_ca=/ca.pem")["ssl_mode"] == "VERIFY_CA"
    assert MySQLTarget.connect_args("mysql://u@h/d?charset=UTF8MB4")["port"] == 3306
    for url, words in [("mysql://u@h:3306/", "needs a database name"),
                       ("mysql://u@h/d?sslmode=require", "unknown option 'sslmode'"),
                       ("mysql://u@h/d?charset=latin1", "always utf8mb4"),
                       ("mysql://u@h/d?ssl_mode=sometimes", "is not one of DISABLED"),
                       ("mysql://u@h/d?ssl_mode=REQUIRED&ssl_ca=/x", "only used with ssl_mode=VERIFY_CA"),
                       ("mysql://u@h/d?ssl_mode=REQUIRED&ssl_cert=/c", "go together")]:
        with pytest.raises(ConfigError, match=words):
            MySQLTarget.connect_args(url)
    result = run_cli("check", "--target", "mysql://relay:hunter2@127.0.0.1/d?sslmode=require")
    assert result.exit_code == 2 and "unknown option 'sslmode'" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output
    missing = run_cli("check", "--target", "mysql://relay:hunter2@127.0.0.1/d?ssl_mode=VERIFY_CA&ssl_ca=/nope.pem")
    assert missing.exit_code == 2 and "/nope.pem does not exist" in missing.output
    ddl = run_cli("schema", "--sql", "--dialect", "mysql").output
    assert "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" in ddl


def test_a_mysql_url_without_pymysql_is_one_line_and_exit_2(tmp_path):
    """The driver is imported only for a mysql:// target: settings and puts never load it, and a
    machine without it gets one line saying what to install."""
    blocked = "import sys; sys.modules['pymysql'] = None; "
    script = (blocked + "from outbox_relay.cli import main; sys.argv = ['outbox-relay'] + sys.argv[1:]; main()")
    env = clean_env()
    for command in (["check"], ["sync"], ["init-db"]):
        out = subprocess.run([sys.executable, "-c", script, *command, "--outbox", str(tmp_path / "o.db"),
                              "--target", "mysql://relay:hunter2@127.0.0.1:1/db"],
                             capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        assert out.returncode == 2, (command, out)
        assert "pip install 'outbox-relay[mysql]'" in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "hunter2" not in out.stderr
    lazy = subprocess.run([sys.executable, "-c", (
        "import sys; from outbox_relay.config import Config; from outbox_relay.outbox import Outbox\n"
        "cfg = Config.load({'target': 'mysql://u:p@h/db'}, environ={})\n"
        f"Outbox({str(tmp_path / 'p.db')!r}).put({{'message_id': 'm1', 'chat_id': 'oc_1', 'text': 'x'}})\n"
        "print(sorted(m for m in ('pymysql', 'peewee', 'psycopg2') if m in sys.modules))")],
        capture_output=True, text=True, timeout=60, env=env)
    assert lazy.returncode == 0 and lazy.stdout.strip() == "[]", lazy


# -- writing ----------------------------------------------------------------------------------


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.one_of(st.text(), st.none(), st.integers(min_value=-2**63, max_value=2**63 - 1)))
def test_our_sql_literals_are_the_drivers(value):
    """The batch INSERT quotes values itself (3.4x faster than PyMySQL's escaping): the same text."""
    import pymysql.converters
    assert sql_literal(value) == pymysql.converters.escape_item(value, "utf8mb4")



def test_write_maps_every_field_and_every_character(target, maria_url):
    nasty = "tab\there\nnew line\r\\N back\\slash 'quote' \"dq\" 😀 测试 𠀋 NUL\x00end ^Z\x1a %s %% _ \\'"
    messages = [normalize(sample(n)) for n in ("v2_text.json", "v2_post.json", "v2_image.json",
                                                "v1_text.json", "flat_message.json",
                                                "openclaw_message_received.json")]
    messages.append(normalize(flat(1, text=nasty, content=json.dumps({"text": nasty}))))
    assert target.write(rows_of(messages, first_id=41)) == len(messages)
    got = {r[0]: r for r in mh.query(maria_url, "SELECT message_id, chat_id, chat_type, thread_id, root_id,"
                                                " parent_id, sender_id, sender_type, msg_type, content, text,"
                                                " mentions, created_at, source, raw, received_at, relayed_at,"
                                                " outbox_host, outbox_id FROM feishu_messages")}
    assert len(got) == len(messages)
    for n, m in enumerate(messages):
        row = got[m.message_id]
        assert row[1:9] == (m.chat_id, m.chat_type, m.thread_id, m.root_id, m.parent_id, m.sender_id,
                            m.sender_type, m.msg_type)
        assert [json.loads(v) if v is not None else None for v in (row[9], row[11], row[14])] == [
            m.content, m.mentions, m.raw]
        assert (row[10], row[13], row[17], row[18]) == (m.text, m.source, "host-a", 41 + n)
        assert row[12] == dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=m.created_at)  # UTC, to the ms
        assert row[15] == dt.datetime(2025, 6, 15, 15, 6, 40, 250000)                       # RECEIVED in UTC
        assert abs((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - row[16]).total_seconds()) < 60
    assert got["om_000001"][10] == nasty


def test_created_at_reaches_mysql_to_the_millisecond_for_every_accepted_value(target, maria_url):
    """Every created_at the normalizer accepts (years 1-9999) is stored exactly (DATETIME(3) in UTC)."""
    from outbox_relay.message import Message
    from outbox_relay.timeconv import datetime_to_ms
    stamps = [0, 1, 999, 1_700_000_000_123, 8_968_034_073_564, 99_999_999_999_999, 253_402_300_799_999,
              -62_135_596_800_000, -30_610_224_000_001]
    messages = [Message(message_id=f"om_ms_{i}", source="api", created_at=ms) for i, ms in enumerate(stamps)]
    assert target.write(rows_of(messages)) == len(stamps)
    got = {mid: datetime_to_ms(at) for mid, at in mh.query(maria_url, "SELECT message_id, created_at"
                                                                      " FROM feishu_messages")}
    assert got == {f"om_ms_{i}": ms for i, ms in enumerate(stamps)}


def test_write_is_idempotent_exact_and_never_merges_two_ids(target, maria_url):
    rows = rows_of(flats(300))
    assert target.write(rows) == 300
    assert target.write(rows) == 0                      # the whole batch again: affected rows 0
    assert target.write(rows_of(flats(310))) == 10      # overlapping: only the new ones count
    # utf8mb4_bin: case matters, so these are two messages ...
    assert target.write(rows_of([normalize(flat(1, message_id="om_Case")),
                                 normalize(flat(2, message_id="om_case"))])) == 2
    # ... but PAD SPACE makes 'om_000001 ' equal to 'om_000001' for the key: refused, never taken
    # for a duplicate (which would lose it). The normalizer refuses such an id at the door now; a row
    # an older release stored with one still meets this guard.
    with pytest.raises(InvalidMessage, match="starts or ends with a space"):
        normalize(flat(5, message_id="om_000001 "))
    with pytest.raises(RowRejected) as err:
        target.write(rows_of([dataclasses.replace(normalize(flat(5)), message_id="om_000001 ")]))
    assert err.value.sqlstate == "23000" and "without trailing spaces" in str(err.value)
    assert mh.row_stats(maria_url) == (312, 312) and target.count() == 312
    assert mh.query(maria_url, "SELECT text FROM feishu_messages WHERE message_id = 'om_000001'") == [
        ("message 1 测试",)]


def test_data_errors_are_row_rejected_with_the_servers_words(target, maria_url):
    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY msg_type varchar(8) NOT NULL")
    with pytest.raises(RowRejected) as err:
        target.write(rows_of(flats(5) + [normalize(flat(9, msg_type="interactive"))]))
    assert err.value.sqlstate == "22001" and "Data too long for column 'msg_type'" in str(err.value)
    assert "MySQL error 1406" in str(err.value)
    assert mh.row_stats(maria_url) == (0, 0)            # one transaction: nothing of the batch

    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb3 NOT NULL")
    with pytest.raises(RowRejected) as err:
        target.write(rows_of([normalize(flat(1, text="emoji 😀"))]))
    assert "MySQL error 1366" in str(err.value) and "Incorrect string value" in str(err.value)

    mh.query(maria_url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_banned CHECK (chat_id <> 'oc_banned')")
    with pytest.raises(RowRejected) as err:
        target.write(rows_of([normalize(flat(2, chat_id="oc_banned"))]))
    assert "no_banned" in str(err.value) and err.value.sqlstate == "23000"
    assert target.write(rows_of(flats(5))) == 5          # the connection is still fine


def test_every_session_is_strict_and_utc_whatever_the_servers_defaults(make_maria):
    """A server that truncates (sql_mode='') in a +08:00 time zone: the relay's sessions still refuse
    a value too long for its column and keep relayed_at in UTC."""
    server = make_maria(sql_mode="", default_time_zone="+08:00")
    server.create_database("relay")
    assert server.execute("SELECT @@GLOBAL.sql_mode, @@GLOBAL.time_zone") == [("", "+08:00")]
    t = open_target(server.url("relay"), statement_timeout=7)
    try:
        t.init_db()
        assert list(t.query("SELECT @@SESSION.max_statement_time, @@SESSION.innodb_lock_wait_timeout")) == [(7.0, 7)]
        server.execute("ALTER TABLE feishu_messages MODIFY msg_type varchar(8) NOT NULL", dbname="relay")
        with pytest.raises(RowRejected, match="Data too long"):
            t.write(rows_of([normalize(flat(1, msg_type="interactive"))]))
        assert t.write(rows_of([normalize(flat(2))])) == 1
        relayed = server.execute("SELECT relayed_at FROM feishu_messages", dbname="relay")[0][0]
        utc_now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        assert abs((utc_now - relayed).total_seconds()) < 60, relayed
    finally:
        t.close()


def test_a_batch_past_max_statement_time_is_a_statement_timeout(target, maria_url):
    """MariaDB's max_statement_time (the relay's statement_timeout, set in every session) stops a batch
    through a slow trigger: StatementTimeout, which the relay answers by cutting its batches."""
    mh.query(maria_url, "CREATE TRIGGER slow BEFORE INSERT ON feishu_messages FOR EACH ROW SET @slept = SLEEP(0.01)")
    t = open_target(maria_url, statement_timeout=1)
    try:
        with pytest.raises(StatementTimeout) as err:
            t.write(rows_of(flats(200)))                  # 2 s of sleeping
        assert err.value.sqlstate == "70100" and "MySQL error 1969" in str(err.value), err.value
        assert t.write(rows_of(flats(20))) == 20           # 0.2 s: passes
    finally:
        t.close()


def test_schema_and_lock_problems_are_transient(target, maria_server, maria_url):
    conn = maria_server.connect(mh.database_of(maria_url))
    t = open_target(maria_url, statement_timeout=1)
    try:
        assert target.write(rows_of(flats(1))) == 1
        conn.begin()
        with conn.cursor() as cur:                       # a row lock held, not committed
            cur.execute("UPDATE feishu_messages SET text = 'held' WHERE message_id = 'om_000000'")
        started = time.monotonic()
        with pytest.raises(TargetUnavailable) as err:     # the re-sent row waits for that lock
            t.write(rows_of(flats(2)))
        assert time.monotonic() - started < 10
        assert err.value.sqlstate in ("mysql:1205", "70100") and err.value.transient, err.value
    finally:
        conn.rollback()
        conn.close()
        t.close()
    mh.query(maria_url, "DROP TABLE feishu_messages")
    with pytest.raises(TargetUnavailable) as err:        # the rows are fine; the table is not
        target.write(rows_of(flats(1)))
    assert err.value.sqlstate == "42S02" and "doesn't exist" in str(err.value)


def test_a_killed_server_is_unavailable_and_the_pool_recovers_after_restart(private_maria):
    private_maria.create_database("relay")
    error = pool_through_a_server_crash(private_maria.url("relay"), private_maria.kill, private_maria.start)
    assert (error.sqlstate or "").startswith("mysql:20"), repr(error)


def test_pool_never_holds_more_than_pool_size_under_max_user_connections_2(maria_server, maria_url):
    """Eight threads share one target (pool_size=2) as a user WITH MAX_USER_CONNECTIONS 2: they queue
    for the pool instead of opening connections; nothing fails."""
    user = f"pool_{os.getpid()}"
    maria_server.drop_user(user)
    maria_server.create_user(user, "pool-pw", database=mh.database_of(maria_url), max_user_connections=2)
    t = open_target(mh.as_user(maria_url, user, "pool-pw"), pool_size=2)
    sampler = maria_server.connect()
    try:
        t.init_db()
        errors, counts = write_through_one_pool(t, lambda: count_on(
            sampler, "SELECT count(*) FROM information_schema.processlist WHERE user = %s", (user,)))
        assert errors == []
        assert t.count() == 8 * 10 * 50
        assert len(counts) > 10 and 1 <= max(counts) <= 2, counts
        assert t.check()["role_connection_limit"] == 2
    finally:
        sampler.close()
        t.close()
        maria_server.drop_user(user)


# -- schema ----------------------------------------------------------------------------------------


def test_concurrent_init_db_and_a_later_migration(maria_url, monkeypatch):
    targets = [open_target(maria_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def init(t):
        barrier.wait(10)
        return t.init_db()

    results, errors = in_threads(init, targets)
    assert errors == [] and sorted(r["from_version"] for r in results) == [0, 2, 2, 2]
    from outbox_relay.schema import target as schema
    original = schema.target_migrations
    monkeypatch.setattr(schema, "target_migrations", lambda db, table, existing=None: original(
        db, table, existing) + [[f"ALTER TABLE {db.quote(table)} ADD COLUMN lang varchar(16)"]])
    try:
        assert targets[0].init_db()["from_version"] == 2
        assert targets[1].init_db()["from_version"] == 3   # ADD COLUMN would fail if run twice
        # the session lock was released: another connection takes it at once
        assert mh.query(maria_url, "SELECT GET_LOCK(%s, 0)", (targets[0]._ddl_lock_name(),)) == [(1,)]
    finally:
        for t in targets:
            t.close()
    indexes = {r[0] for r in mh.query(maria_url, "SELECT DISTINCT index_name FROM information_schema.statistics"
                                                 " WHERE table_schema = DATABASE() AND table_name = 'feishu_messages'")}
    assert indexes == {"PRIMARY", "feishu_messages_chat_created", "feishu_messages_created",
                       "feishu_messages_sender_created", "feishu_messages_relayed"}


def test_the_ddl_printed_for_the_dba_runs_in_the_mariadb_client(maria_server, maria_url, tmp_outbox):
    """The app user may not run DDL: ensure_schema says so without failing; the DBA pipes
    `schema --sql` into the mariadb client and grants SELECT, INSERT; the relay then writes."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    if not client:
        pytest.fail("the mariadb client is missing (scripts/ensure-system-deps.sh installs mariadb-client)")
    user, db = f"app_{os.getpid()}", mh.database_of(maria_url)
    maria_server.drop_user(user)
    maria_server.create_user(user, "app-pw")
    url = mh.as_user(maria_url, user, "app-pw")
    try:
        early = open_target(url)
        assert early.ensure_schema() is False             # 42000 on CREATE: warned, not raised
        early.close()
        ddl = run_cli("schema", "--sql", "--target", url).output
        assert "`feishu_messages`" in ddl and "app-pw" not in ddl
        parts = urllib.parse.urlsplit(maria_url)
        out = subprocess.run([client, "-h", parts.hostname, "-P", str(parts.port), "-u", "root", db],
                             input=ddl, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for table in ("feishu_messages", "feishu_message_events"):
            maria_server.execute(f"GRANT SELECT, INSERT ON `{db}`.`{table}` TO '{user}'@'%'")
        maria_server.execute(f"GRANT SELECT ON `{db}`.`outbox_relay_schema` TO '{user}'@'%'")
        t = open_target(url)
        try:
            assert t.schema_version() == 2 and t.ensure_schema() is False
            with Outbox(tmp_outbox) as outbox:
                put_all(outbox, [flat(i) for i in range(4)])
                with pytest.raises(TargetUnavailable, match="GRANT SELECT, INSERT, UPDATE ON feishu_messages"):
                    Relay(outbox, t).step()                # ON DUPLICATE KEY UPDATE needs UPDATE too
                assert outbox.counts()["pending"] == 4 and outbox.counts()["dead"] == 0
                for table in ("feishu_messages", "feishu_message_events"):
                    maria_server.execute(f"GRANT UPDATE ON `{db}`.`{table}` TO '{user}'@'%'")
                r = Relay(outbox, t).step()
            assert (r.delivered, r.new, r.error) == (4, 4, None)
        finally:
            t.close()
    finally:
        maria_server.drop_user(user)


# -- TLS ---------------------------------------------------------------------------------------------


def test_tls_modes_against_a_server_with_a_certificate(make_maria, maria_url):
    server = make_maria(tls=True)
    server.create_database("relay")

    def cipher(url):
        t = open_target(url, connect_timeout=5)
        try:
            return t.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0][1]
        finally:
            t.close()

    base = server.url("relay")
    assert cipher(base + "?ssl_mode=REQUIRED")                       # encrypted (not verified)
    assert cipher(base)                                              # PREFERRED: TLS when offered
    assert cipher(base + "?ssl_mode=DISABLED") == ""
    assert cipher(f"{base}?ssl_mode=VERIFY_IDENTITY&ssl_ca={server.ca_path}")   # certificate for 127.0.0.1
    assert cipher(f"{base}?ssl_ca={server.ca_path}")                # VERIFY_CA
    by_name = base.replace("127.0.0.1", "localhost")
    with pytest.raises(TargetUnavailable, match="certificate|hostname|match"):
        cipher(f"{by_name}?ssl_mode=VERIFY_IDENTITY&ssl_ca={server.ca_path}")
    with pytest.raises(TargetUnavailable, match="certificate verify failed"):
        cipher(base + "?ssl_mode=VERIFY_CA")                         # the system's CAs do not know it
    # A server without TLS: REQUIRED refuses to fall back to plain text.
    result = run_cli("check", "--target", maria_url + "?ssl_mode=REQUIRED")
    assert result.exit_code == 1 and "SSL is required" in result.output


# -- operators' commands -----------------------------------------------------------------------------


def test_check_reports_version_and_the_connection_budget(maria_server, maria_url):
    user = f"chk_{os.getpid()}"
    maria_server.drop_user(user)
    maria_server.create_user(user, "chk-pw", database=mh.database_of(maria_url), max_user_connections=3)
    url = mh.as_user(maria_url, user, "chk-pw")
    try:
        assert run_cli("init-db", "--target", url).exit_code == 0
        result = run_cli("check", "--target", url)
        assert result.exit_code == 0, result.output
        for label in ("server", "round trip ms", "connections in use", "server max_connections",
                      "role connection limit", "role connections", "our pool_size", "schema version"):
            assert label in result.output
        assert "chk-pw" not in result.output and "MariaDB" in result.output
        assert "outbox-relay connections  unknown" in result.output   # performance_schema is off here
        info = json.loads(run_cli("check", "--target", url, "--json").stdout)
        assert info["dialect"] == "mysql" and "MariaDB" in info["server_version"]
        assert info["user"] == f"{user}@%" and info["role_connection_limit"] == 3
        assert info["role_connections_in_use"] >= 1 and info["connections_in_use"] >= 1
        assert info["max_connections"] >= 1 and info["pool_size"] == 2 and info["schema_version"] == 2
    finally:
        maria_server.drop_user(user)
    port = free_port()
    down = run_cli("check", "--target", f"mysql://u:pw-secret@127.0.0.1:{port}/x", "--connect-timeout", "2")
    assert down.exit_code == 1 and "Can't connect" in down.output and "pw-secret" not in down.output


def test_check_counts_the_relays_sessions_where_performance_schema_is_on(make_maria):
    server = make_maria(performance_schema="ON")
    server.create_database("relay")
    others = [open_target(server.url("relay"), pool_size=1) for _ in range(2)]
    try:
        for t in others:
            t.ping()                                     # each holds one pooled session
        info = json.loads(run_cli("check", "--target", server.url("relay"), "--json").stdout)
        assert info["relay_connections"] == 3, info    # theirs and check's own (program_name=outbox-relay)
    finally:
        for t in others:
            t.close()


def test_search_stats_health_and_test_commands(maria_url, tmp_outbox):
    common = ["--outbox", tmp_outbox, "--target", maria_url]
    texts = ["今天的测试结果", "100% done", "100 percent", "snake_case", "snakeXcase", "HELLO World", "emoji 😀",
             "emoji 😁"]
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i, text=t) for i, t in enumerate(texts)])
    assert run_cli("sync", *common).exit_code == 0

    def found(keyword):
        result = run_cli("search", keyword, *common, "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["target_error"] is None
        return sorted(r["text"] for r in data["results"])

    assert found("测试") == ["今天的测试结果"]                        # Chinese, no word boundaries
    assert found("100%") == ["100% done"]                            # % is literal
    assert found("e_c") == ["snake_case"]                            # so is _
    assert found("hello world") == ["HELLO World"]                   # ASCII case ignored
    assert found("😀") == ["emoji 😀"]                                # not every emoji alike
    with Outbox(tmp_outbox) as outbox:
        outbox.put(flat(99, text="still 测试 pending"))
    assert found("测试") == ["still 测试 pending", "今天的测试结果"]     # the outbox's too

    stats = json.loads(run_cli("stats", *common, "--json", "--days", "3").stdout)
    assert stats["target_error"] is None and stats["total"] == len(texts)
    assert stats["relayed_last_hour"] == len(texts)
    assert stats["first_message"] == "2023-11-14T22:13:20.000+00:00"
    days = [d["day"] for d in stats["per_day"]]
    assert days == sorted(days) and len(days) == 3
    assert sum(d["count"] for d in stats["per_day"]) == 0            # 2023's messages are not this week
    assert stats["by_type"] == [{"msg_type": "text", "count": len(texts)}]
    human = run_cli("stats", *common).output
    assert "top chat" in human and "outbox-relay holds an unknown number (pool_size 2)" in human

    health = run_cli("health", *common)
    assert health.exit_code == 1 and "no relay is running and messages are waiting" in health.output
    assert run_cli("sync", *common).exit_code == 0
    health = run_cli("health", *common)
    assert health.exit_code == 0 and health.output.startswith("OK: 0 pending"), health.output
    test = run_cli("test", *common, "--timeout", "20")
    assert test.exit_code == 0 and "reached MySQL" in test.output and "test row removed" in test.output
    assert mh.row_stats(maria_url) == (len(texts) + 1, len(texts) + 1)


def test_health_is_down_when_the_server_is_stopped(private_maria, tmp_outbox):
    private_maria.create_database("relay")
    url = private_maria.url("relay")
    assert run_cli("init-db", "--target", url).exit_code == 0
    Outbox(tmp_outbox).close()
    private_maria.stop()
    result = run_exe("health", "--outbox", tmp_outbox, "--target", url, "--connect-timeout", 2)
    assert result.returncode == 2 and result.stdout.startswith("DOWN: target unreachable: "), result
    assert "Traceback" not in result.stderr
    private_maria.start()
    wait_until(lambda: run_exe("health", "--outbox", tmp_outbox, "--target", url).returncode == 0, timeout=20,
               what="health to be OK again")
