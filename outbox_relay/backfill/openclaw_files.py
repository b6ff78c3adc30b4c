"""Reading OpenClaw's JSONL transcripts and JSON session stores without trusting them.

A file is streamed, never read whole: a line is held only up to OpenClaw's own bound on one event
(a longer one is read past in pieces and reported), a zstd file stops inflating at MAX_INFLATED
(99 KB of zstd can make 3 GiB), a session store is read up to MAX_STORE_BYTES, and JSON nested past
Python's recursion limit is a bad line, not a crash. A line's problem is yielded as a ValueError
(or EOFError for the line being appended); a file that cannot be read at all, or not to its end,
as a SourceUnreadable.
"""

import io
import json

from ..errors import OutboxRelayError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# OpenClaw's own bound on one event (the CHECK on transcript_events.event_utf8_bytes); a longer
# JSONL line is no event OpenClaw wrote.
MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_INFLATED = 1024 ** 3  # a transcript inflating past this is a bomb
MAX_STORE_BYTES = 64 * 1024 * 1024  # sessions.json: a few hundred bytes per session
# Read buffers, and the pieces an over-long line is read past in: with io's 8 KiB, reading past a
# 2 GiB line took 14 s instead of 1.7.
CHUNK_BYTES = 1024 * 1024


class SourceUnreadable(OutboxRelayError):
    """Yielded, not raised, by a transcript's reader when its file or store cannot be read at all or
    not to its end; what was read before it stands."""


def load_json_file(path):
    """(the JSON value, None), (None, None) for no file, or (None, why it cannot be read)."""
    try:
        with open(path, "rb") as f:
            raw = _decoded(f).read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    if len(raw) > MAX_STORE_BYTES:
        return None, f"larger than {MAX_STORE_BYTES // 2 ** 20} MiB: not read"
    value = _json(raw)
    return (None, str(value)) if isinstance(value, ValueError) else (value, None)


def jsonl_lines(path):
    """(line number, object or the reason it is not one). A last line without its newline is the
    gateway's append in progress: reported as incomplete, not as a broken line."""
    try:
        f = open(path, "rb", buffering=CHUNK_BYTES)
    except OSError as e:
        yield 0, SourceUnreadable(f"cannot read: {e.strerror or e}")
        return
    number = 0
    try:
        with f:
            for number, item in _parse_lines(_decoded(f)):
                yield number, item
    except OSError as e:
        yield number + 1, SourceUnreadable(f"reading stopped: {e.strerror or e}")


def _parse_lines(stream):
    for number, raw in _lines(stream):
        if raw is None:
            yield number, ValueError(f"longer than {MAX_EVENT_BYTES // 2 ** 20} MiB: skipped")
        elif not raw.strip():
            continue
        elif not raw.endswith(b"\n"):
            value = _json(raw)
            yield number, EOFError("incomplete last line (being written)") if isinstance(value, ValueError) else value
        else:
            yield number, _json(raw)


def _lines(stream):
    """(line number, the line's bytes, or None for one longer than MAX_EVENT_BYTES: read past in
    pieces, never held whole)."""
    number = 0
    while raw := stream.readline(MAX_EVENT_BYTES + 1):
        number += 1
        if len(raw) <= MAX_EVENT_BYTES or raw.endswith(b"\n"):
            yield number, raw
            continue
        while raw and not raw.endswith(b"\n"):
            raw = stream.readline(CHUNK_BYTES)
        yield number, None


def _json(raw):
    """The JSON value of `raw`, or a ValueError saying why there is none."""
    try:
        return json.loads(raw)
    except RecursionError:
        return ValueError("not JSON: nested too deeply")
    except ValueError as e:
        return ValueError(f"not JSON: {str(e)[:80]}")


def _decoded(f):
    """A file's bytes: inflated (to MAX_INFLATED at most) if it is zstd, else the file itself."""
    head = f.read(4)
    f.seek(0)
    return io.BufferedReader(_Inflated(f, MAX_INFLATED), CHUNK_BYTES) if head == ZSTD_MAGIC else f


class _Inflated(io.RawIOBase):
    """A zstd stream's decompressed bytes, raising OSError for corrupt data and past `limit` bytes."""

    def __init__(self, f, limit):
        import zstandard
        # Every frame: a file of several (archives appended to) would otherwise end after the first.
        self._reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        self._corrupt = zstandard.ZstdError
        self._limit = self._left = limit

    def readable(self):
        return True

    def readinto(self, buffer):
        try:
            n = self._reader.readinto(buffer)
        except self._corrupt as e:
            raise OSError(str(e)) from None
        self._left -= n
        if self._left < 0:
            raise OSError(f"it decompresses to more than {self._limit // 2 ** 30} GiB")
        return n
