"""The rules every input shape reads its fields by, and the limits they hold them to: types, lengths,
timestamps, JSON strings inside JSON, nesting depth and size. Pure: no I/O."""

import json
import re

from .. import jsonio
from ..errors import InvalidMessage
from ..timeconv import iso_to_ms

# One message's payload, encoded as UTF-8 JSON. Matches the webhook's default
# body limit: anything bigger is not a chat message.
MAX_MESSAGE_BYTES = 1024 * 1024
# Real events nest 5-6 levels (post content: 4 inside the content string).
MAX_DEPTH = 32
MAX_ID_LENGTH = 128
MAX_KIND_LENGTH = 64
# created_at (epoch ms, UTC) must be a date the target can hold: years 1-9999.
MIN_CREATED_MS = -62135596800000       # 0001-01-01T00:00:00Z
MAX_CREATED_MS = 253402300799999       # 9999-12-31T23:59:59.999Z




def optional_time(value, field):
    """created_at of a shape whose time may be absent (the outbox then uses its commit time)."""
    return None if value is None else parse_timestamp(value, field)


def parse_timestamp(value, field):
    """Epoch seconds / ms / µs / ns (number or digit string) -> epoch ms. Feishu sends ms strings;
    16-digit (µs) values appear in its docs, so the unit is inferred from the magnitude."""
    if isinstance(value, bool):
        raise InvalidMessage(f"{field} must be an epoch timestamp, not a boolean")
    if isinstance(value, str):
        value = value.strip()
        if re.fullmatch(r"\d{1,19}", value):
            number = int(value)
        elif re.fullmatch(r"\d{1,12}\.\d{1,9}", value):
            number = float(value)
        elif re.fullmatch(r"\d+", value):
            # Not for fromisoformat below: it reads 20+ digits as a basic-format date (year 1111).
            raise InvalidMessage(f"{field} is out of range: {value[:40]!r}")
        else:
            iso = iso_to_ms(value)
            if iso is None:
                raise InvalidMessage(f"{field} is not a timestamp: {value[:40]!r}")
            # An offset can push a valid date out of years 1-9999 (in UTC): the relay could
            # never write such a row, and it used to stall the whole queue behind it.
            if not MIN_CREATED_MS <= iso <= MAX_CREATED_MS:
                raise InvalidMessage(f"{field} is out of range: {value[:40]!r}")
            return iso
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise InvalidMessage(f"{field} must be an epoch timestamp string or number, not {json_type(value)}")
    if number != number or number < 0:
        raise InvalidMessage(f"{field} is not a valid timestamp: {value!r}")
    for limit, scale in ((1e11, 1000), (1e14, 1), (1e17, 1e-3), (1e20, 1e-6)):
        if number < limit:
            return int(number * scale)
    raise InvalidMessage(f"{field} is out of range: {str(value)[:40]!r}")


def field(obj, key, types, *, required=False, where=""):
    value = obj.get(key)
    if value is None or (value == "" and types is not dict):
        if required:
            raise InvalidMessage(f"missing {where}{key}")
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InvalidMessage(f"{where}{key} must be {_article(expected)}, not {json_type(value)}")
    return value


def id_field(obj, key, where, *, required=False, name=None):
    value = field(obj, key, (str, int), required=required, where=where)
    if value is None:
        return None
    value = str(value)
    if required and not value.strip():
        raise InvalidMessage(f"missing {name or where + key}")
    return check_token(value, where + key, MAX_ID_LENGTH)


def kind_field(obj, key, where, default=None):
    value = field(obj, key, str, where=where)
    return check_token(value, where + key, MAX_KIND_LENGTH) if value is not None else default


def check_token(value, field, limit):
    """An id or a kind (om_…, oc_…, ou_…, text, group): bounded, and printable, so that it can be
    written into a log line or a file name as it is (a newline in an id forged whole log lines)."""
    if value is None:
        return None
    if len(value) > limit:
        raise InvalidMessage(f"{field} is longer than {limit} characters")
    if not value.isprintable():
        raise InvalidMessage(f"{field} holds a control character (a line break, a tab …): not an id")
    if value != value.strip():
        # MySQL's collations compare 'om_1 ' equal to 'om_1': two ids that are one to the archive.
        raise InvalidMessage(f"{field} starts or ends with a space: not an id")
    return value


def json_string(obj, key, where):
    value = obj.get(key)
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise InvalidMessage(f"{where}{key} must be a JSON-encoded string, not {json_type(value)}")
    decoded = loads(value, where + key)
    if not isinstance(decoded, dict):
        raise InvalidMessage(f"{where}{key} must encode a JSON object, not {json_type(decoded)}")
    check_shape(decoded, where + key)
    return decoded


def loads(text, what):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except InvalidMessage:
        raise
    except RecursionError:
        raise InvalidMessage(f"{what} is nested too deeply (limit {MAX_DEPTH})") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing 5,000-digit numbers
        raise InvalidMessage(f"{what} is not valid JSON: {str(e)[:120]}") from None


def _reject_constant(name):
    raise InvalidMessage(f"{name} is not valid JSON")


def check_shape(value, what="payload"):
    """Depth, key and value types, then encodability and size (the encoder's output measured: one
    pass in C instead of a Python walk that summed the sizes; put() spent a fifth of its time here)."""
    try:
        _walk(value, 1)
    except _Refused as e:
        raise InvalidMessage(f"{what} {e}") from None
    try:
        encoded = jsonio.dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(f"{what} contains invalid Unicode (a lone surrogate)") from None
    except ValueError as e:  # ints too long to print
        raise InvalidMessage(f"{what} cannot be encoded: {str(e)[:80]}") from None
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"{what} is too large: {len(encoded)} bytes, limit {MAX_MESSAGE_BYTES}")


class _Refused(Exception):
    """What _walk found wrong, finished into an InvalidMessage by _check_shape."""


_SCALARS = (str, int, bool, type(None))
_INFINITIES = (float("inf"), float("-inf"))


def _walk(value, depth):
    """Into containers only, so a scalar costs one type() call. Recursion is bounded by MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise _Refused(f"is nested too deeply (limit {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise _Refused("has a non-string key")
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        children = (value,)
        depth -= 1  # the value itself, checked below at its own depth
    for v in children:
        t = type(v)
        if t is dict or t is list:
            _walk(v, depth + 1)
        elif t is float:
            if v != v or v in _INFINITIES:
                raise _Refused("contains a non-finite number")
        elif t not in _SCALARS:  # subclasses of the JSON types, or not JSON at all
            if isinstance(v, (dict, list)):
                _walk(v, depth + 1)
            elif isinstance(v, float):
                _walk([float(v)], depth)
            elif not isinstance(v, _SCALARS):
                raise _Refused(f"contains a {t.__name__}, which is not JSON")


def json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _article(name):
    return {"str": "a string", "dict": "an object", "list": "an array", "int": "a number",
            "str or int": "a string", "str or int or float": "a string or number"}.get(name, name)
