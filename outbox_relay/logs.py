"""Logging set-up, done only by the CLI (plain lines for people, JSON lines for machines), and what
may appear in a log line or any other output: URLs without their passwords."""

import json
import logging
import re
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_url(record.getMessage()),  # json.dumps escapes line breaks: one entry, one line
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record):  # noqa: N802 - logging's name
        # What a sender or a file name put into the message cannot start a line of its own: a forged
        # "CRITICAL …" line. A traceback (formatException) keeps its line breaks.
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record):
        # Last line of defence: a URL with a password never reaches the log.
        return mask_url(super().format(record))


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text):
    """`text` with every control character written as an escape (\\n, \\x1b …): one log line stays one."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def setup_logging(level=logging.INFO, json_lines=False, stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger("outbox_relay")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # waitress logs its own start-up and queue warnings; keep them, in the same format.
    for name in ("waitress",):
        other = logging.getLogger(name)
        other.handlers = [handler]
        other.setLevel(max(level, logging.INFO))
        other.propagate = False
    # "Task queue depth is N" on every burst is noise at our request rates; /metrics shows the
    # requests in flight instead.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


# The password runs to the *last* @ of the URL, as urlsplit (and so the driver) reads it: a raw @
# in a password must not leave its tail visible. Masking too much is harmless; too little is not.
_PASSWORD = re.compile(r"(://[^\s:/?#]*:)(\S*)(@)")


def mask_url(url):
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db; password= in the query too."""
    if not isinstance(url, str):
        return url
    url = _PASSWORD.sub(r"\1***\3", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", url)
