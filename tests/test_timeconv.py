"""Time conversion has one home (outbox_relay/timeconv.py). The read side used to divide epoch ms
as a float and showed the last millisecond of 9999 as .998; these tests pin the exact values,
end to end through a real archive and the CLI's search."""

import json

import pytest

from outbox_relay import timeconv
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from cliutil import run_cli

LAST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the largest created_at a message may carry


@pytest.mark.parametrize("ms,iso", [
    (0, "1970-01-01T00:00:00.000+00:00"),
    (1_700_000_000_123, "2023-11-14T22:13:20.123+00:00"),
    (LAST_MS, "9999-12-31T23:59:59.999+00:00"),
    (-62135596800000, "0001-01-01T00:00:00.000+00:00"),
])
def test_ms_and_iso_round_trip_exactly(ms, iso):
    assert timeconv.ms_to_iso(ms) == iso
    assert timeconv.iso_to_ms(iso) == ms
    assert timeconv.to_ms(timeconv.ms_to_datetime(ms)) == ms
    assert timeconv.to_ms(iso.replace("+00:00", "Z")) == ms


def test_every_millisecond_of_a_late_second_survives():
    base = LAST_MS - 999
    assert [timeconv.iso_to_ms(timeconv.ms_to_iso(base + i)) for i in range(1000)] == [base + i for i in range(1000)]


def test_parse_when_ages_and_dates():
    now = 1_800_000_000.0
    assert timeconv.parse_when("7d", now=now) == int(now * 1000) - 7 * 86_400_000
    assert timeconv.parse_when("2026-11-01") == timeconv.iso_to_ms("2026-11-01T00:00:00+00:00")
    assert timeconv.parse_when("2026-11-01T08:00+08:00") == timeconv.iso_to_ms("2026-11-01T00:00:00Z")
    with pytest.raises(ValueError, match="--until 'soon'"):
        timeconv.parse_when("soon", "--until")


def test_an_http_date_header_is_epoch_ms_and_anything_else_is_none():
    assert timeconv.http_date_to_ms("Fri, 04 Dec 2026 17:11:41 GMT") == 1796404301000
    for text in (None, "", "yesterday", "Fri, 99 Dec 2026 17:11:41 GMT"):
        assert timeconv.http_date_to_ms(text) is None


def test_search_shows_the_exact_created_at_of_a_late_message(hermetic, tmp_path):
    outbox_path, url = str(tmp_path / "outbox.db"), f"sqlite:///{tmp_path / 'archive.db'}"
    target = open_target(url)
    with Outbox(outbox_path) as outbox:
        # ISO text: epoch numbers this large read as microseconds (the normalizer infers the unit).
        outbox.put({"message_id": "om_late", "chat_id": "oc_1", "text": "late needle",
                    "create_time": "9999-12-31T23:59:59.999Z"})
        outbox.put({"message_id": "om_wait", "chat_id": "oc_1", "text": "late needle",
                    "create_time": "9999-12-31T23:59:59.998Z"})
        Relay(outbox, target).step()  # om_late and om_wait both delivered
        outbox.put({"message_id": "om_new", "chat_id": "oc_1", "text": "late needle",
                    "create_time": "9999-12-31T23:59:59.997Z"})
    target.close()
    result = run_cli("search", "needle", "--json", "--outbox", outbox_path, "--target", url)
    assert result.exit_code == 0, result.output
    found = {r["message_id"]: (r["created_at"], r["where"]) for r in json.loads(result.output)["results"]}
    assert found == {"om_late": ("9999-12-31T23:59:59.999+00:00", "target"),
                     "om_wait": ("9999-12-31T23:59:59.998+00:00", "target"),
                     "om_new": ("9999-12-31T23:59:59.997+00:00", "outbox (pending)")}


def test_retention_periods_by_the_calendar_and_never_a_bare_m():
    import datetime as dt

    from outbox_relay.timeconv import parse_duration
    at = dt.datetime(2026, 3, 31, 12, tzinfo=dt.timezone.utc)
    assert parse_duration("400d").before(at) == at - dt.timedelta(days=400)
    assert parse_duration("18mo").before(at) == dt.datetime(2024, 9, 30, 12, tzinfo=dt.timezone.utc)
    assert parse_duration("1mo").before(at) == dt.datetime(2026, 2, 28, 12, tzinfo=dt.timezone.utc)
    assert parse_duration("3Y").before(at) == dt.datetime(2023, 3, 31, 12, tzinfo=dt.timezone.utc)
    assert str(parse_duration("2w")) == "2 weeks"
    for bad in ("3m", "18M", "0d", "3", "y", "3 years", "-1y"):
        with pytest.raises(ValueError) as e:
            parse_duration(bad)
        assert "--keep" in str(e.value)
    with pytest.raises(ValueError, match="'m' is ambiguous"):
        parse_duration("3m")
