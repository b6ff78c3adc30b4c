"""Issue 19: an archive made by the release before events (target schema 1, its DDL as that release's
`schema --sql` printed it: tests/samples/target_v1/) is taken to schema 2 with no row lost, on
PostgreSQL, MariaDB and the embedded SQLite default: by `run` where its role may run DDL, and by a
DBA's `init-db` under a relay whose role may not, which keeps delivering messages all along and
delivers the events that waited once the DBA has granted the new table."""

import json
import signal
import sqlite3

import pytest

from outbox_relay.outbox import Outbox

from factories import SAMPLES, feishu_edit, feishu_reaction, feishu_recall, flat, ids
from relayutil import SEED, Writer, assert_exactly_once, heartbeat, outbox_with, pg_query
from serverproc import wait_until

mh = pytest.importorskip("mariaharness", reason="tests/mariaharness.py needs PyMySQL (the [mysql] extra)")

OLD = 20_000  # rows in the archive before the upgrade
AT = 1_790_000_000_000


class Archive:
    """One server's archive as this test reads and fills it: `query(sql)` -> rows; `fill(n)` the rows
    the old release wrote, made by the server itself."""

    dialect = None
    FILL = None

    def __init__(self, url):
        self.url = url

    def make_v1(self):
        for statement in (SAMPLES / "target_v1" / f"{self.dialect}.sql").read_text().split(";\n"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                self.query("\n".join(lines))
        self.query(self.FILL.format(last=OLD - 1))
        assert self.version() == 1 and self.count() == OLD

    def version(self):
        return self.query("SELECT version FROM outbox_relay_schema WHERE table_name = 'feishu_messages'")[0][0]

    def count(self, table="feishu_messages"):
        try:
            return self.query(f"SELECT count(*) FROM {table}")[0][0]
        except Exception:  # noqa: BLE001 - not made yet
            return 0

    def rows(self):
        """{message_id: (text, original_text, recalled)}"""
        return {m: (text, original, bool(recalled)) for m, text, original, recalled in self.query(
            "SELECT message_id, text, original_text, recalled_at IS NOT NULL FROM feishu_messages")}


class PostgreSQL(Archive):
    dialect = "postgresql"
    FILL = ("INSERT INTO feishu_messages (message_id, chat_id, sender_id, msg_type, content, text, created_at,"
            " source, received_at) SELECT 'om_old_' || lpad(i::text, 5, '0'), 'oc_old', 'ou_old', 'text',"
            " jsonb_build_object('text', 'old words ' || i), 'old words ' || i, to_timestamp(1700000000 + i),"
            " 'feishu.v2', now() FROM generate_series(0, {last}) AS i")

    def query(self, sql):
        return pg_query(self.url, sql)


class MariaDB(Archive):
    dialect = "mysql"
    FILL = ("INSERT INTO feishu_messages (message_id, chat_id, sender_id, msg_type, content, text, created_at,"
            " source, received_at) SELECT CONCAT('om_old_', LPAD(seq, 5, '0')), 'oc_old', 'ou_old', 'text',"
            " JSON_OBJECT('text', CONCAT('old words ', seq)), CONCAT('old words ', seq),"
            " FROM_UNIXTIME(1700000000 + seq), 'feishu.v2', NOW(3) FROM seq_0_to_{last}")

    def query(self, sql):
        return mh.query(self.url, sql)


class SQLite(Archive):
    dialect = "sqlite"
    FILL = ("WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {last})"
            " INSERT INTO feishu_messages (message_id, chat_id, sender_id, msg_type, content, text, created_at,"
            " source, received_at) SELECT printf('om_old_%05d', i), 'oc_old', 'ou_old', 'text',"
            " json_object('text', 'old words ' || i), 'old words ' || i,"
            " strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i, 'unixepoch'), 'feishu.v2',"
            " strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM s")

    def query(self, sql):
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        try:
            with conn:
                return conn.execute(sql).fetchall()
        finally:
            conn.close()


def old_id(i):
    return f"om_old_{i:05d}"


def events_about_old_rows():
    """100 edits, 50 recalls and 100 reactions about rows the old release archived. -> (the events,
    {message_id: (text, original_text, recalled)} for the rows they change)."""
    events, changed = [], {}
    for i in range(100):
        events.append(feishu_edit(old_id(i * 7), f"mig-e{i}", f"edited {i}", AT + i))
        changed[old_id(i * 7)] = (f"edited {i}", f"old words {i * 7}", False)
    for i in range(50):
        events.append(feishu_recall(old_id(1000 + i * 11), f"mig-x{i}", AT + i))
        changed[old_id(1000 + i * 11)] = (f"old words {1000 + i * 11}", None, True)
    events += [feishu_reaction(old_id(2000 + i * 13), f"mig-r{i}", AT + i) for i in range(100)]
    return events, changed


def expected_old_rows(changed):
    return {old_id(i): changed.get(old_id(i), (f"old words {i}", None, False)) for i in range(OLD)}


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def old_archive(request, tmp_path):
    if request.param == "postgresql":
        archive = PostgreSQL(request.getfixturevalue("pg_url"))
    elif request.param == "mariadb":
        archive = MariaDB(request.getfixturevalue("maria_url"))
    else:
        archive = SQLite(f"sqlite:///{tmp_path / 'archive.db'}")
    archive.make_v1()
    return archive


def test_run_migrates_an_archive_of_the_release_before_with_no_row_lost(spawn, tmp_path, old_archive):
    events, changed = events_about_old_rows()
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i, prefix="om_new") for i in range(500)] + events)
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=old_archive.url)
    wait_until(lambda: old_archive.count("feishu_message_events") == len(events)
               and old_archive.count() == OLD + 500, timeout=60, what="the messages and events to arrive")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proc.output()
    assert old_archive.version() == 2
    rows = old_archive.rows()
    assert len(rows) == OLD + 500
    assert {m: v for m, v in rows.items() if m.startswith("om_old_")} == expected_old_rows(changed)
    assert {m for m in rows if m.startswith("om_new")} == ids(500, prefix="om_new")


@pytest.fixture(params=["postgresql", "mariadb"])
def relay_without_ddl(request):
    """An old archive on a server, and -> (archive, the URL of a role that may read and write its
    rows but not change its tables, grant(table): what the DBA runs once the new table is made)."""
    name = f"relay_mig_{request.param[:2]}"
    if request.param == "postgresql":
        url, server = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_server")
        archive = PostgreSQL(url)
        archive.make_v1()
        server.execute(f'DROP ROLE IF EXISTS "{name}"')
        server.create_role(name)
        grant = lambda table, what="SELECT, INSERT, UPDATE": archive.query(f'GRANT {what} ON "{table}" TO "{name}"')  # noqa: E731
        grant("feishu_messages")
        grant("outbox_relay_schema", "SELECT")
        yield archive, url.replace("postgres@", f"{name}@", 1), grant
        server.terminate_backends(user=name)
        archive.query(f'DROP OWNED BY "{name}"')
        server.execute(f'DROP ROLE IF EXISTS "{name}"')
    else:
        url, server = request.getfixturevalue("maria_url"), request.getfixturevalue("maria_server")
        archive, db = MariaDB(url), mh.database_of(url)
        archive.make_v1()
        server.drop_user(name)
        server.create_user(name, "mig-pw")
        grant = lambda table, what="SELECT, INSERT, UPDATE": server.execute(  # noqa: E731
            f"GRANT {what} ON `{db}`.`{table}` TO '{name}'@'%'")
        grant("feishu_messages")
        grant("outbox_relay_schema", "SELECT")
        yield archive, mh.as_user(url, name, "mig-pw"), grant
        server.drop_user(name)


def test_a_dba_migrates_under_a_running_relay_which_keeps_delivering(spawn, invoke, tmp_path, relay_without_ddl):
    archive, relay_url, grant = relay_without_ddl
    events, changed = events_about_old_rows()
    outbox_path = outbox_with(tmp_path / "outbox.db", events)
    writer = Writer(outbox_path, prefix="om_live")
    writer.start()
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=relay_url, batch_size=50)
    try:
        # Messages flow; the events wait in the outbox for a table this role may not make.
        wait_until(lambda: archive.count() >= OLD + 300, timeout=30, what="messages before the upgrade")
        assert "feishu_message_events is not made yet" in proc.output()
        status = invoke("status", "--json", "--outbox", outbox_path, "--target", relay_url)
        assert status.exit_code == 0 and any("feishu_message_events is not made, or not granted" in w
                                             for w in json.loads(status.stdout)["warnings"]), status.output
        with Outbox(outbox_path) as outbox:
            assert outbox.has_pending(kinds=("event",)) and archive.version() == 1
        # The DBA upgrades the table under the running relay, then grants the new one.
        before = archive.count()
        result = invoke("init-db", "--target", archive.url)
        assert result.exit_code == 0, result.output
        assert archive.version() == 2
        grant("feishu_message_events")
        wait_until(lambda: archive.count() >= before + 500, timeout=30, what="messages after the upgrade")
        wait_until(lambda: archive.count("feishu_message_events") == len(events), timeout=30,
                   what="the events that waited, once the table is there")
        assert proc.alive(), proc.output()
        assert "feishu_message_events is ready" in proc.output()
        # The heartbeat is written at most once a second: the warning clears with the next one.
        def cleared():
            status = invoke("status", "--json", "--outbox", outbox_path, "--target", relay_url)
            return not any("not granted" in w for w in json.loads(status.stdout)["warnings"])
        wait_until(cleared, timeout=15, what="status to see the events table ready")
    finally:
        live = writer.stop()
    wait_until(lambda: archive.count() == OLD + len(live), timeout=60, what="every message written")
    assert writer.errors == [] and heartbeat(outbox_path).get("errors", 0) == 0, (writer.errors, SEED)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proc.output()
    rows = archive.rows()
    assert_exactly_once([m for m in rows if m.startswith("om_live")], live)
    assert {m: v for m, v in rows.items() if m.startswith("om_old_")} == expected_old_rows(changed)
