"""Issue 9, item 5: a DBA changes the table under a running relay. When the table is what refuses
the rows, the rows stay pending (none goes dead), the error names the real table, and `check` /
`init-db` say what the table lacks. Real ALTER TABLE on a real server."""

import json

import pytest

from outbox_relay.errors import TargetUnavailable
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from cliutil import run_exe
from relayutil import flat, pg_query, put_all, row_stats


@pytest.fixture
def table(pg_archive):
    return pg_archive


def step_refused(outbox, target):
    with pytest.raises(TargetUnavailable) as err:
        Relay(outbox, target).step()
    assert outbox.counts()["dead"] == 0 and outbox.counts()["pending"] == 30
    return str(err.value)


def check_lines(url):
    result = run_exe("check", "--target", url, "--json")
    return result.returncode, json.loads(result.stdout)["table_problems"]


def test_a_not_null_column_without_a_default_keeps_the_rows_pending(table, pg_url, tmp_outbox):
    pg_query(pg_url, "ALTER TABLE feishu_messages ADD COLUMN lang text NOT NULL")
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i) for i in range(30)])
        error = step_refused(outbox, table)
        assert "table feishu_messages has a NOT NULL column lang without a default" in error
        assert "outbox_relay_batch" not in error
        code, problems = check_lines(pg_url)
        assert code == 1 and problems == [
            "table feishu_messages has a NOT NULL column lang without a default, which outbox-relay does not"
            " fill: every message is refused (add a default or drop NOT NULL)"]
        init = run_exe("init-db", "--target", pg_url)
        assert init.returncode == 1 and "NOT NULL column lang" in init.stderr
        pg_query(pg_url, "ALTER TABLE feishu_messages ALTER lang SET DEFAULT 'zh'")
        assert check_lines(pg_url) == (0, [])
        assert Relay(outbox, table).drain()["delivered"] == 30
    assert row_stats(pg_url) == (30, 30)


def test_a_dropped_column_names_the_real_table(table, pg_url, tmp_outbox):
    pg_query(pg_url, "ALTER TABLE feishu_messages DROP COLUMN chat_type")
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i) for i in range(30)])
        error = step_refused(outbox, table)
        assert '"feishu_messages"' in error and "outbox_relay_batch" not in error
        assert check_lines(pg_url) == (1, ["table feishu_messages lacks column chat_type"])


def test_a_table_that_refuses_every_row_is_the_tables_fault(table, pg_url, tmp_outbox):
    """A CHECK no message meets: not 30 dead rows, one outage that names the constraint."""
    pg_query(pg_url, "ALTER TABLE feishu_messages ADD CONSTRAINT typed CHECK (chat_type IS NOT NULL)")
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i) for i in range(30)])
        error = step_refused(outbox, table)
        assert "refuses every message (30 of 30" in error and 'check constraint "typed"' in error
        pg_query(pg_url, "ALTER TABLE feishu_messages DROP CONSTRAINT typed")
        assert Relay(outbox, table).drain()["delivered"] == 30


def test_a_few_bad_rows_among_good_ones_still_go_dead_alone(table, pg_url, tmp_outbox):
    pg_query(pg_url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_banned CHECK (chat_id <> 'oc_banned')")
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i, chat_id="oc_banned" if i in (3, 4) else f"oc_{i}") for i in range(30)])
        result = Relay(outbox, table).step()
        assert (result.delivered, result.dead) == (28, 2)


def test_mariadb_a_not_null_column_without_a_default_keeps_the_rows_pending(maria_url, tmp_outbox):
    from mariaharness import query
    target = open_target(maria_url)
    target.init_db()
    try:
        query(maria_url, "ALTER TABLE feishu_messages ADD COLUMN lang varchar(8) NOT NULL")
        with Outbox(tmp_outbox) as outbox:
            put_all(outbox, [flat(i) for i in range(30)])
            error = step_refused(outbox, target)
            assert "table feishu_messages has a NOT NULL column lang without a default" in error
            assert target.table_problems() == [
                "table feishu_messages has a NOT NULL column lang without a default, which outbox-relay does"
                " not fill: every message is refused (add a default or drop NOT NULL)"]
            query(maria_url, "ALTER TABLE feishu_messages ALTER lang SET DEFAULT 'zh'")
            assert target.table_problems() == []
            assert Relay(outbox, target).drain()["delivered"] == 30
    finally:
        target.close()
