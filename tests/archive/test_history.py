"""Issue 19, a faithful archive: edits, recalls and reactions kept as history, whatever order Feishu
delivers them in, through a running service into real PostgreSQL and MariaDB servers."""

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
