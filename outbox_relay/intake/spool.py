"""The local durable handoff: a Maildir-style spool directory any process can write without Python.

    <spool>/tmp/       a writer creates its file here, writes it whole and fsyncs it,
    <spool>/new/       then renames it here and fsyncs the directory: now it is handed over;
    <spool>/rejected/  items that are not messages, each beside NAME.reason (JSON), never deleted.

A rename is atomic, so new/ only ever holds complete files; a writer that dies half-way leaves a
file in tmp/, which is never read as a message (after STALE_TMP it is moved to rejected/ as an
"incomplete write"). Any language with open/write/fsync/rename can hand a message over, and it
works whether or not outbox-relay runs (the OpenClaw hook does exactly this).

Ingestion (`Spool.ingest`, run by `run` every POLL seconds and by `sync` before it drains): oldest
first (names start with the epoch milliseconds), each file normalized by the one normalizer,
committed with put_many in chunks, and unlinked only after that commit. A crash between the commit
and the unlink re-puts the file next time: the outbox calls it a duplicate. The unlinks are not
fsynced for the same reason: one undone by a power cut is a harmless duplicate.

Ingestion lists new/ once, keeps only the oldest LISTING names (bounded memory) and takes them chunk
by chunk, listing again only when they are used up: its time grows with the items taken, not with
what waits (sorting all of a million names for every chunk of 500 took it down to 217 items/s).
What arrives meanwhile is taken at the next listing, oldest first (`sync` takes as many items as
waited when it began). `status` reads no more than SCAN_LIMIT entries of each directory and says
"at least N" beyond them.

One file, on purpose: it is the whole contract with writers in other languages (the layout, how to
write, what is read, what is set aside and why), for a hook's author to read in one place.
"""

import collections
import dataclasses
import heapq
import itertools
import json
import logging
import os
import secrets
import stat
import threading
import time

from .. import jsonio
from ..errors import InvalidMessage, OutboxError, SpoolError
from ..message import MAX_MESSAGE_BYTES, Message, normalize
from ..timeconv import now_ms

log = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "rejected")
REASON = ".reason"
CHUNK = 500  # items per outbox transaction
LISTING = 50_000  # oldest names kept from one listing of new/ (~5 MB): 1,000,000 waiting take 20 listings
SCAN_LIMIT = 10_000  # entries `status` reads of each directory (~10 ms): constant whatever the spool holds
POLL = 0.1  # seconds between looks at new/ while idle: a handed-over message reaches the target in < 1 s
STALE_TMP = 3600.0  # a tmp/ file this old belongs to a writer that died
SWEEP_EVERY = 60.0
ERROR_PAUSE = 1.0  # seconds between passes while the outbox refuses (full under overflow=reject, locked)
BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass
class IngestReport:
    """What one ingest pass did. `error`: why it stopped early (outbox full or unavailable);
    the items it did not reach stay in new/ for the next pass."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None
    # {(message source, "stored" | "duplicate" | "rejected"): n}, for /metrics.
    by_source: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def seen(self):
        return self.stored + self.duplicates + self.rejected

    def add(self, other):
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.error = other.error or self.error
        self.by_source.update(other.by_source)


def item_name(now=None):
    """`<epoch ms, 13 digits>.<pid>_<random>.json`: sorting names sorts by hand-over time (to the
    millisecond); pid and 64 random bits keep concurrent writers apart. The hook uses the same form."""
    return f"{now_ms(now):013d}.{os.getpid()}_{secrets.token_hex(8)}.json"


class Spool:
    """One spool directory: write (for Python callers), ingest into an Outbox, and what status shows."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.tmp, self.new, self.rejected = (os.path.join(self.path, d) for d in SUBDIRS)
        self._next_sweep = 0.0
        self._warned = set()  # names we could not move: said once, not every POLL
        self._listed = collections.deque()  # the oldest names of the last listing of new/, not yet taken

    def exists(self):
        """Whether the spool is there (its new/). SpoolError when that cannot be known (permission
        denied, a symlink loop): a spool we may not look into is not a spool that does not exist."""
        return _is_dir(self.new)

    def ensure(self):
        """Create the spool and its three directories (the service does this at start). Each
        directory created here takes the spool's own mode, so an operator who made the spool
        group-writable for the gateway's user (2770) gets tmp/, new/, rejected/ the same."""
        try:
            os.makedirs(self.path, exist_ok=True)
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
            for d in (self.tmp, self.new, self.rejected):
                if not _is_dir(d):
                    os.makedirs(d, exist_ok=True)
                    os.chmod(d, mode)
        except OSError as e:
            raise SpoolError(f"cannot create the spool {self.path}: {e.strerror}") from None
        return self

    # -- writing ------------------------------------------------------------------------------

    def write(self, payload):
        """Hand one message over, durably; returns the item's name. The payload is normalized first,
        so bad input raises InvalidMessage and writes nothing; SpoolError if the spool cannot take it."""
        message = normalize(payload)
        data = _payload_bytes(payload)
        name = item_name()
        tmp = os.path.join(self.tmp, name)
        try:
            if not os.path.isdir(self.tmp) and os.path.isdir(self.path):
                self.ensure()  # as the hook does: the spool must exist, its parts are made
            _write_synced(tmp, data)
            os.rename(tmp, os.path.join(self.new, name))
            _fsync_dir(self.new)
        except (OSError, SpoolError) as e:
            _unlink_quietly(tmp)
            raise SpoolError(f"cannot hand message {message.message_id} over to the spool {self.path}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        return name

    # -- ingesting ----------------------------------------------------------------------------

    def ingest(self, outbox, limit=None, stop=None):
        """Move up to `limit` waiting items (default: as many as wait now) into `outbox`, oldest first,
        one outbox transaction per chunk; `stop()` returning true ends it between chunks (sync's
        Ctrl-C). Never raises for the outbox's state: a full or unavailable outbox ends the pass with
        report.error. SpoolError if the spool cannot be read."""
        report = IngestReport()
        self.ensure()
        self.sweep_tmp()
        size = max(1, min(CHUNK, outbox.max_pending))  # a chunk must fit an empty outbox (overflow=reject)
        if limit is None:
            # Counted, not "until new/ is empty": an item that cannot be removed (new/ not writable)
            # is in every listing, and sync would take it again and again.
            limit = self._list()
        taken = 0
        while taken < limit and not (stop is not None and stop()):
            names = self._next(min(size, limit - taken))
            if not names:
                break
            chunk = self._ingest_chunk(outbox, names)
            report.add(chunk)
            if chunk.error:
                break  # these names stay first in line for the next pass
            for _ in names:
                self._listed.popleft()
            taken += len(names)
        return report

    def _next(self, n):
        """The next n names to ingest: from the last listing of new/ while it lasts, else a new one."""
        if not self._listed:
            self._list()
        return list(itertools.islice(self._listed, n))

    def _list(self):
        """List new/ afresh, keeping its oldest LISTING names to take; returns how many it holds."""
        total = 0

        def names():
            nonlocal total
            for entry in _entries(self.new):
                total += 1
                yield entry.name
        self._listed = collections.deque(heapq.nsmallest(LISTING, names()))
        return total

    def _ingest_chunk(self, outbox, names):
        report = IngestReport()
        good = []
        for name in names:
            try:
                good.append((name, normalize(self._read(name))))
            except InvalidMessage as e:
                moved = self._reject(self.new, name, str(e))
                report.rejected += moved
                report.by_source["unknown", "rejected"] += moved
            except FileNotFoundError:
                continue  # gone since the listing (an operator moved it)
        if not good:
            return report
        try:
            results = outbox.put_many([m for _, m in good])
        except OutboxError as e:  # full (overflow=reject), locked, disk full: all stay in new/
            report.error = str(e)
            return report
        for (name, message), result in zip(good, results):
            self._remove(name)  # only now: the commit is done
            if result.duplicate:
                report.duplicates += 1
            else:
                report.stored += 1
            report.by_source[message.source, "duplicate" if result.duplicate else "stored"] += 1
        return report

    def _read(self, name):
        """The bytes of new/NAME, or InvalidMessage saying why it cannot be a message."""
        path = os.path.join(self.new, name)
        try:
            # O_NOFOLLOW: a symlink could point anywhere (a key file); O_NONBLOCK: a FIFO must not hang us.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise InvalidMessage(_open_error(path, e)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidMessage("not a regular file")
            if info.st_size > MAX_MESSAGE_BYTES:
                raise InvalidMessage(f"too large: {info.st_size} bytes, limit {MAX_MESSAGE_BYTES}")
            data = _read_all(fd, MAX_MESSAGE_BYTES + 1)
        except OSError as e:
            raise InvalidMessage(f"cannot be read: {e.strerror}") from None
        finally:
            os.close(fd)
        return data[len(BOM):] if data.startswith(BOM) else data

    def sweep_tmp(self, now=None, force=False):
        """Move tmp/ files older than STALE_TMP to rejected/ ("incomplete write"). At most once a
        minute unless forced: a live writer's file is only seconds old. Returns how many moved."""
        now = time.time() if now is None else now
        if not force and now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY
        moved = 0
        for entry in list(_entries(self.tmp)):
            age = now - _mtime(entry)
            if age > STALE_TMP:
                moved += self._reject(self.tmp, entry.name, "incomplete write: the writer stopped before "
                                      f"handing it over (in tmp/ for {age / 3600:.1f} h)")
        return moved

    def _reject(self, where, name, reason):
        """Move where/NAME to rejected/, its reason beside it. Returns 1 if moved, else 0."""
        kept = name + ".item" if name.endswith(REASON) else name  # never mistaken for a reason file
        record = {"reason": reason, "rejected_at": time.time(), "from": os.path.basename(where),
                  "size": _size(os.path.join(where, name))}
        try:
            # The reason first: a crash in between leaves an unused reason, never an item without one.
            _write_file(os.path.join(self.rejected, kept + REASON), json.dumps(record, ensure_ascii=False))
            os.rename(os.path.join(where, name), os.path.join(self.rejected, kept))
        except OSError as e:
            if not os.path.lexists(os.path.join(where, name)):
                return 0  # gone since the listing (an operator moved it)
            self._warn_once(name, f"spool item {name} is not a message ({reason}) but cannot be moved to "
                                  f"{self.rejected}: {e.strerror}; it stays in {where}")
            return 0
        log.warning("spool item %s set aside in %s: %s", kept, self.rejected, reason)
        return 1

    def _remove(self, name):
        try:
            os.unlink(os.path.join(self.new, name))
        except FileNotFoundError:
            pass
        except OSError as e:  # stored, but it will be put again (a duplicate) until it can go
            self._warn_once(name, f"spool item {name} is stored but cannot be removed from {self.new}: "
                                  f"{e.strerror}")

    def _warn_once(self, key, text):
        if key not in self._warned:
            self._warned.add(key)
            log.error("%s", text)

    # -- looking ------------------------------------------------------------------------------

    def waiting(self, limit=None):
        """Names in new/, oldest first: all of them, or the oldest `limit` (one pass over new/ that
        holds no more than `limit` names). Dot files are ignored, as Maildir readers do."""
        names = (e.name for e in _entries(self.new))
        return sorted(names) if limit is None else heapq.nsmallest(limit, names)

    def status(self, now=None):
        """What `status`, `health`, `top` and /healthz show, in constant time and memory whatever the
        spool holds: items waiting, set aside (rejected), being written (tmp/), the oldest waiting
        item's age. Each directory is read up to SCAN_LIMIT entries: a count that reached it is a
        lower bound, named in "at_least" (the age is then the oldest of the items looked at).
        "error": why the spool cannot be read, where "exists" false means it is not there."""
        now = time.time() if now is None else now
        report = {"path": os.path.abspath(self.path), "exists": False, "error": None, "waiting": None,
                  "rejected": None, "writing": None, "oldest_waiting_age_s": None, "at_least": []}
        try:
            report["exists"] = self.exists()
            surveys = {"waiting": _survey(self.new), "rejected": _survey(self.rejected, _is_item),
                       "writing": _survey(self.tmp)}
        except SpoolError as e:
            report["error"] = str(e)
            return report
        for key, survey in surveys.items():
            report[key] = survey.count
            if survey.more:
                report["at_least"].append(key)
        oldest = surveys["waiting"].smallest
        mtime = _mtime_of(os.path.join(self.new, oldest)) if oldest else None
        report["oldest_waiting_age_s"] = round(max(0.0, now - mtime), 3) if mtime else None
        return report

    def _rejected_names(self):
        return sorted(e.name for e in _entries(self.rejected) if _is_item(e.name))

    def rejected_items(self, limit=None):
        """[{name, size, rejected_at, from, reason}] of what was set aside, oldest first."""
        items = [self._describe(name) for name in self._rejected_names()]
        items.sort(key=lambda item: (item["rejected_at"] or 0, item["name"]))
        return items[:limit] if limit is not None else items

    def _describe(self, name):
        try:
            with open(os.path.join(self.rejected, name + REASON), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {"reason": "unknown (its reason file is missing or unreadable)"}
        return {"name": name, "size": _size(os.path.join(self.rejected, name)),
                "rejected_at": record.get("rejected_at"), "from": record.get("from"),
                "reason": record.get("reason")}

    def retry(self, names=None):
        """Move rejected items (these names, or all) back to new/ for another try, after a fix.
        Returns the names moved; a name that matches no rejected item is skipped. SpoolError, and
        nothing moved, if any name cannot be an item's name at all (see bad_item_name)."""
        bad = [f"{name!r} {why}" for name in names or () if (why := bad_item_name(name))]
        if bad:
            raise SpoolError(f"not the name of a spool item: {'; '.join(bad)}; nothing moved")
        wanted = self._rejected_names() if names is None else names
        moved = []
        for name in wanted:
            try:
                os.rename(os.path.join(self.rejected, name), os.path.join(self.new, name))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise SpoolError(f"cannot move {name} back to {self.new}: {e.strerror}") from None
            _unlink_quietly(os.path.join(self.rejected, name + REASON))
            moved.append(name)
        return moved


class SpoolIngester:
    """`run`'s ingestion: Spool.ingest on a thread of its own, looking at new/ every POLL seconds.
    The relay is woken by the outbox commit itself, so a handed-over message reaches the target
    within about POLL plus one batch."""

    def __init__(self, spool, outbox, poll=POLL):
        self.spool = spool
        self.outbox = outbox
        self.poll = poll
        self.totals = IngestReport()
        self.observers = []  # callables(IngestReport) after every pass that moved something: metrics
        self._stop = threading.Event()
        self._said = None
        self.thread = threading.Thread(target=self._main, name="outbox-relay-spool", daemon=True)

    def start(self):
        log.info("ingesting the handoff spool %s every %.1f s", os.path.abspath(self.spool.path), self.poll)
        self.thread.start()
        return self

    def stop(self, timeout=10.0):
        self._stop.set()
        if self.thread.ident is not None:  # started at all (start-up may fail before)
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _main(self):
        while not self._stop.is_set():
            try:
                pause = self.step()
            except SpoolError as e:  # missing, unreadable: said once, tried again
                self._say(str(e))
                pause = ERROR_PAUSE
            except Exception as e:  # a bug must not end ingestion: the items stay in new/
                self._say(f"spool ingestion failed: {type(e).__name__}: {e}", exc=True)
                pause = ERROR_PAUSE
            if pause:
                self._stop.wait(pause)

    def step(self):
        """One pass. Returns how long to wait before the next: 0 when it moved something (there may
        be more), POLL when idle, ERROR_PAUSE when the outbox cannot take more (full, locked)."""
        report = self.spool.ingest(self.outbox, limit=CHUNK)
        self.totals.add(report)
        if report.seen:
            self._observe(report)
        if report.error:
            # Each failed pass reads and normalizes a chunk again: not ten times a second.
            self._say(f"spool items wait in {self.spool.new}: {report.error}")
            return ERROR_PAUSE
        if self._said:
            log.info("spool ingestion resumed")
            self._said = None
        # Duplicates alone mean an item that cannot be unlinked: no reason to spin on it.
        return 0 if report.stored + report.rejected else self.poll

    def _observe(self, report):
        for observer in self.observers:
            try:
                observer(report)
            except Exception:  # counting must never stop ingestion
                log.exception("spool observer failed")

    def _say(self, text, exc=False):
        """Log a problem once, not every POLL."""
        if text != self._said:
            (log.exception if exc else log.warning)("%s", text)
            self._said = text


def bad_item_name(name):
    """Why `name` cannot name an item in one of the spool's directories, or None when it can. Every
    path made of a name the caller gave is made only after this: "" joined to rejected/ is rejected/
    itself, and renaming that into new/ once moved the whole directory."""
    if not name:
        return "is empty"
    if "/" in name or "\0" in name:
        return "is not a plain name (it holds / or a NUL byte)"
    if name.startswith("."):
        return "is a dot file, never a spool item"
    if name.endswith(REASON):
        return "is a reason file, not an item"
    return None


def _is_item(name):
    return not name.endswith(REASON)


# -- file helpers --------------------------------------------------------------------------------


def _payload_bytes(payload):
    if isinstance(payload, Message):
        if not isinstance(payload.raw, dict):
            raise InvalidMessage("a Message without its raw payload cannot be spooled: pass the payload")
        payload = payload.raw
    if isinstance(payload, dict):
        return jsonio.dumps(payload).encode("utf-8")
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


def _write_synced(path, data, mode=0o640):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path, text):
    """Small file written whole then renamed into place (no fsync: a lost one is rewritten)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(4)}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.rename(tmp, path)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_all(fd, limit):
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _open_error(path, e):
    if os.path.islink(path):
        return "a symbolic link, not a regular file (never followed)"
    return f"cannot be opened: {e.strerror}"


def _is_dir(path):
    """Whether path is a directory (False: missing, or something else); SpoolError when it cannot be
    known (permission denied, a symlink loop), never a False that means "we may not look"."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise _unreadable(path, e) from None


def _entries(directory, limit=None):
    """Entries of a directory, lazily, in its own order, up to `limit`; dot files skipped; none if it
    does not exist; SpoolError if it cannot be read (never an empty answer for a directory we may
    not look into)."""
    try:
        with os.scandir(directory) as it:
            yield from itertools.islice((e for e in it if not e.name.startswith(".")), limit)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise _unreadable(directory, e) from None


def _unreadable(path, e):
    return SpoolError(f"cannot read the spool directory {path}: {e.strerror}")


Survey = collections.namedtuple("Survey", "count more smallest")


def _survey(directory, wanted=None):
    """The first SCAN_LIMIT entries of a directory: how many are `wanted` (all by default), whether
    the directory holds more (the count is then a lower bound), and the smallest wanted name."""
    count, smallest, seen = 0, None, 0
    for seen, entry in enumerate(_entries(directory, SCAN_LIMIT + 1), 1):
        if seen > SCAN_LIMIT or not (wanted is None or wanted(entry.name)):
            continue
        count += 1
        smallest = entry.name if smallest is None else min(smallest, entry.name)
    return Survey(count, seen > SCAN_LIMIT, smallest)


def _mtime(entry):
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return time.time()


def _mtime_of(path):
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None


def _size(path):
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
