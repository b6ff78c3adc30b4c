"""Issue 19, a faithful archive: edits, recalls and reactions kept as history, whatever order Feishu
delivers them in, through a running service into real PostgreSQL and MariaDB servers."""

import json

import pytest

from scenarios import bad_events_beside_good_ones, every_order_of_five_events

mh = pytest.importorskip("mariaharness", reason="tests/mariaharness.py needs PyMySQL (the [mysql] extra)")


def test_every_order_of_five_events_ends_the_same_on_postgresql(tmp_path, pg_url):
    every_order_of_five_events(tmp_path, pg_url)


def test_every_order_of_five_events_ends_the_same_on_mariadb(tmp_path, maria_url):
    every_order_of_five_events(tmp_path, maria_url)


def test_bad_events_get_a_400_and_good_ones_all_arrive_on_postgresql(tmp_path, pg_url):
    bad_events_beside_good_ones(tmp_path, pg_url)


def test_bad_events_get_a_400_and_good_ones_all_arrive_on_mariadb(tmp_path, maria_url):
    bad_events_beside_good_ones(tmp_path, maria_url)


def test_history_prints_a_message_s_life_and_its_reactions(invoke, tmp_path, pg_url):
    """`outbox-relay history` on what the bad-events scenario archived: the words first archived, the
    words now, each event in Feishu's order, the reactions it has now; --json the same; an id the
    archive has never seen is one line and exit 1."""
    bad_events_beside_good_ones(tmp_path, pg_url)
    common = ["--outbox", tmp_path / "outbox.db", "--target", pg_url]
    result = invoke("history", "om_bad_events_1", *common, "--json")
    assert result.exit_code == 0, result.output
    h = json.loads(result.stdout)
    assert (h["first"]["text"], h["now"]["text"]) == ("as first sent", "edited"), h
    assert [(e["kind"], e["event_id"]) for e in h["events"]] == [("reaction_added", "good-reaction"),
                                                                ("edited", "good-edit")], h["events"]
    assert h["reactions"] == {"SMILE": ["ou_reactor_1"]}
    text = invoke("history", "om_bad_events_1", *common)
    assert text.exit_code == 0 and "as first sent" in text.output and "SMILE" in text.output, text.output
    missing = invoke("history", "om_no_such_message", *common)
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1, missing.output
