"""Every conversion between epoch time and dates, in one place. Pure: no I/O.

Messages carry `created_at` as integer epoch milliseconds (UTC); the outbox keeps `received_at` as
epoch seconds (float); target databases hold timestamps. All arithmetic on milliseconds is integer
arithmetic on timedeltas: `ms / 1000` as a float is a millisecond off for dates after ~2242 (and
`timestamp() * 1000` can be too), so neither appears anywhere.
"""

import calendar
import dataclasses
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


def minute_of_ms(ms):
    """Epoch ms -> '2026-11-01 08:00', its UTC minute: the stats rollup's name for the minute a row was
    relayed in (each database's Target.minute_of writes the same)."""
    return ms_to_datetime(ms).strftime("%Y-%m-%d %H:%M")


def minute_start_ms(ms):
    """The start of the UTC minute that holds `ms`, as epoch ms."""
    return ms - ms % 60_000


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


def add_months(month, k):
    """(year, month) `k` months later (earlier when negative)."""
    n = month[0] * 12 + month[1] - 1 + k
    return n // 12, n % 12 + 1


def month_range(month):
    """(first instant, first instant of the next month) of (year, month), as aware datetimes in UTC."""
    return dt.datetime(month[0], month[1], 1, tzinfo=UTC), dt.datetime(*add_months(month, 1), 1, tzinfo=UTC)


# A retention period: days, weeks, months or years. Never a bare "m", which reads as minutes to some
# and months to others: months are "mo".
_DURATION = re.compile(r"^\s*(\d+)\s*(d|w|mo|y)\s*$", re.I)
_DURATION_UNITS = {"d": "days", "w": "weeks", "mo": "months", "y": "years"}


@dataclasses.dataclass(frozen=True)
class Duration:
    """A calendar period (retention's --keep): `count` of `unit` (days, weeks, months, years)."""

    count: int
    unit: str

    def __str__(self):
        return f"{self.count} {self.unit if self.count != 1 else self.unit[:-1]}"

    def before(self, moment):
        """The instant this period before `moment` (an aware datetime); months and years by the calendar,
        the day clamped (31 March - 1 month = 28 or 29 February)."""
        if self.unit in ("days", "weeks"):
            return moment - dt.timedelta(**{self.unit: self.count})
        months = self.count * (12 if self.unit == "years" else 1)
        year, month = add_months((moment.year, moment.month), -months)
        last = calendar.monthrange(year, month)[1] if year >= 1 else 31
        return moment.replace(year=max(year, 1), month=month, day=min(moment.day, last))


def parse_duration(value, option="--keep"):
    """'400d', '8w', '18mo', '3y' -> Duration. Raises ValueError with a sentence naming `option`."""
    m = _DURATION.match(value or "")
    if m is None or int(m.group(1)) == 0:
        hint = (" ('m' is ambiguous: write mo for months)" if re.match(r"^\s*\d+\s*m\s*$", value or "", re.I)
                else "")
        raise ValueError(f"{option} {value!r}: use a number of days, weeks, months or years, e.g. 400d, 8w, 18mo,"
                         f" 3y{hint}")
    return Duration(int(m.group(1)), _DURATION_UNITS[m.group(2).lower()])
