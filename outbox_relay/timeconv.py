"""Every conversion between epoch time and dates, in one place. Pure: no I/O.

Messages carry `created_at` as integer epoch milliseconds (UTC); the outbox keeps `received_at` as
epoch seconds (float); target databases hold timestamps. All arithmetic on milliseconds is integer
arithmetic on timedeltas: `ms / 1000` as a float is a millisecond off for dates after ~2242 (and
`timestamp() * 1000` can be too), so neither appears anywhere.
"""

import datetime as dt
import email.utils
import re
import time

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MS = dt.timedelta(milliseconds=1)

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def ms_to_datetime(ms):
    """Epoch ms -> an aware UTC datetime."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def ms_to_iso(ms):
    """Epoch ms -> '2026-11-01T08:00:00.123+00:00'."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds")


def s_to_datetime(seconds):
    """Epoch seconds (a float, as time.time() gives) -> an aware UTC datetime."""
    return dt.datetime.fromtimestamp(seconds, UTC)


def s_to_iso(seconds):
    """Epoch seconds -> ISO with microseconds, UTC."""
    return s_to_datetime(seconds).isoformat(timespec="microseconds")


def s_to_ms(seconds):
    """Epoch seconds (a float) -> integer epoch ms, as the outbox's received_at becomes a created_at."""
    return int(seconds * 1000)


def datetime_to_ms(value):
    """A datetime (naive means UTC, as the databases hand them back) -> epoch ms."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MS


def iso_to_ms(text):
    """ISO-8601 text (naive means UTC; 'Z' accepted) -> epoch ms, or None if it is not a date."""
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return datetime_to_ms(parsed)


def http_date_to_ms(text):
    """An HTTP Date header ('Fri, 04 Dec 2026 17:11:41 GMT') -> epoch ms, or None if it is not one."""
    try:
        return datetime_to_ms(email.utils.parsedate_to_datetime(text))
    except (TypeError, ValueError):
        return None


def to_ms(value):
    """A timestamp as a database returns it (datetime, or ISO text from SQLite) -> epoch ms."""
    if value is None:
        return None
    if isinstance(value, str):
        ms = iso_to_ms(value)
        if ms is None:
            raise ValueError(f"not a timestamp: {value[:40]!r}")
        return ms
    return datetime_to_ms(value)


def day_start_ms(ms):
    """Midnight UTC of the day that holds `ms`, as epoch ms."""
    return datetime_to_ms(dt.datetime.combine(ms_to_datetime(ms).date(), dt.time(), UTC))


def now_ms(now=None):
    """Epoch ms of `now` (epoch seconds, for a caller that fixes the moment), by default the clock's."""
    return time.time_ns() // 1_000_000 if now is None else s_to_ms(now)


def parse_when(value, option="--since", now=None):
    """'7d', '12h', '2026-11-01', '2026-11-01T08:00' (UTC unless an offset is given) -> epoch ms.
    Raises ValueError with a sentence naming `option`."""
    if value is None:
        return None
    m = _RELATIVE.match(value)
    if m:
        return now_ms(now) - int(m.group(1)) * _UNITS[m.group(2).lower()] * 1000
    ms = iso_to_ms(value)
    if ms is None:
        raise ValueError(f"{option} {value!r}: use a date (2026-11-01), a date-time "
                         "(2026-11-01T08:00) or an age (30m, 12h, 7d, 2w)")
    return ms
