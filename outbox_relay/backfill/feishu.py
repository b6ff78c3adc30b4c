"""`backfill feishu`: read chat history back from Feishu and commit what the archive lacks.

chats -> pages -> Messages -> outbox. The chats are the bot's groups (the chat list) plus every
chat the target already holds a message of, or exactly the `--chat` ones. Each chat's messages in
[since, until) are read oldest first, 50 a page; a message that starts a thread (topic) has its
replies read from the thread, since the chat's list leaves them out. A page is normalized (shape
"feishu.history"), ids the target already holds are skipped, the rest go through `put_many`
(the outbox dedupes on message_id; the target's conflict clause does the rest).

Checkpoints: per chat, the outbox's meta table keeps the time ranges (epoch seconds, half-open)
already read into the outbox. What is unread is read in windows (next_window sizes them), and a
window is recorded only after every page of it, and the thread replies of its messages, are
committed: never up to the last message of a page, since a listing whose pages are out of order
would have a gap recorded as read. Ranges, not one position per (chat, since, until), because
`--since 30d` means a different range at every run: a rerun after a crash or a stop reads only
what no earlier run covered, one window again at most. `recheck=True` reads the whole range again.
"""

import dataclasses
import logging
import time

from ..errors import FeishuApiError, FeishuUnavailable, InvalidMessage, Stopped, TargetError
from ..message import normalize
from ..message.events import from_history
from ..progress import NO_PROGRESS
from ..timeconv import now_ms, s_to_datetime
from .commit import Committer

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "backfill.feishu.chat:"
# A range is never read closer to now than this: a message sent a moment ago may not be listed
# yet, and the range would be recorded as read without it. The next run reads that minute.
SETTLE_MS = 60_000
# A range is read in windows, each recorded as read once all of it is: the first a day long, then
# doubled after a window of one page and halved after one of more than WINDOW_PAGES.
WINDOW_S = 86_400
MIN_WINDOW_S, MAX_WINDOW_S = 60, 8 * 86_400
WINDOW_PAGES = 8
MAX_INVALID_SHOWN = 20  # invalid items listed in the report per chat (all are counted)


@dataclasses.dataclass
class ChatReport:
    """What one chat's backfill did; `status` is complete, up to date, failed, stopped or not started."""

    chat_id: str
    name: str | None = None
    chat_type: str | None = None
    status: str = "not started"
    seen: int = 0
    new: int = 0
    already_stored: int = 0
    recalled: int = 0
    edited: int = 0
    events: int = 0  # recalls and edits new to the archive (the history API's deleted/updated flags)
    invalid: int = 0
    threads: int = 0
    pages: int = 0
    error: str | None = None
    invalid_items: list = dataclasses.field(default_factory=list)
    unavailable: bool = dataclasses.field(default=False, repr=False)  # failed for an outage, not the chat


@dataclasses.dataclass
class _Run:
    client: object
    outbox: object
    committer: Committer
    start: int  # epoch seconds, inclusive
    end: int  # epoch seconds, exclusive
    dry_run: bool
    progress: object
    feishu_clock: bool = True  # Feishu told its time (_end): else a checkpoint ends at the newest message
    task: object = NO_PROGRESS  # the current chat's progress bar
    threads_read: set = dataclasses.field(default_factory=set)  # listed once a run, however often seen
    on_window: object = None  # on_window(chat, read_to): after each window is committed and recorded
    on_page: object = None  # on_page(chat): after each page's messages and events are committed


def open_run(client, outbox, target, *, start_s, until_ms, dry_run=False, progress=NO_PROGRESS):
    """What reading chats takes, for a reader other than backfill_feishu (the reconciler): the
    client authenticated, the end SETTLE_MS before Feishu's own time (never this host's)."""
    committer = Committer(outbox, target, dry_run=dry_run, stop=client.stop)
    run = _Run(client, outbox, committer, start_s, until_ms // 1000, dry_run, progress)
    client.authenticate()
    run.end, run.feishu_clock = _end(client, until_ms)
    return run


def read_chat_window(run, chat, start, end, on_window=None, on_page=None):
    """One chat's [start, end) (epoch s) read back again, whatever the checkpoints say, and what the
    archive lacks committed (messages, and the recalls and edits the history's flags state): the
    trailing window the reconciler checks every pass. Each window is recorded in the backfill's
    checkpoint ranges (so `backfill feishu` skips it too) and then given to on_window(chat, read_to);
    on_page(chat) follows each page's commit.
    FeishuApiError, FeishuUnavailable, Stopped and BudgetSpent go to the caller; `chat` (a
    ChatReport) counts what was read and found."""
    run.on_window, run.on_page = on_window, on_page
    _read_range(run, chat, _covered(run, chat.chat_id), start, min(end, run.end))


def backfill_feishu(client, outbox, target, *, since_ms, until_ms, chats=None, dry_run=False,
                    recheck=False, progress=NO_PROGRESS):
    """Backfill every chat; returns the report dict. A chat Feishu will not let us read is
    reported and the others go on; Feishu unavailable past the retries ends the run (every chat
    would wait out the same outage). `outbox` may be None only with dry_run."""
    began = time.monotonic()
    run = _Run(client, outbox, Committer(outbox, target, dry_run=dry_run, stop=client.stop), since_ms // 1000,
               until_ms // 1000, dry_run, progress)
    try:
        run = open_run(client, outbox, target, start_s=since_ms // 1000, until_ms=until_ms, dry_run=dry_run,
                       progress=progress)
        reports, errors = _chats(client, target, chats)
    except Stopped:
        return _report(run, [], [], True, time.monotonic() - began)
    stopped = False
    for chat in reports:
        status = _backfill_chat(run, chat, recheck)
        if status == "failed" and chat.unavailable:
            errors.append(f"stopped: {chat.error}")
            break
        if status == "stopped":
            stopped = True
            break
    return _report(run, reports, errors, stopped, time.monotonic() - began)


def _end(client, until_ms):
    """(the run's end in epoch s, whether Feishu told its time). SETTLE_MS before Feishu's time, by
    the Date of its answers, never this host's clock: one running ahead would have the future
    recorded as read, and what is sent meanwhile would never be asked for. Without Feishu's time
    the host's clock bounds the requests and each chat's newest message bounds what is recorded."""
    feishu_now = client.feishu_now_ms()
    if feishu_now is None:
        log.warning("Feishu's answers carry no Date header: checkpoints stop at each chat's newest message")
        return min(until_ms, now_ms() - SETTLE_MS) // 1000, False
    return min(until_ms, feishu_now - SETTLE_MS) // 1000, True


# -- which chats ---------------------------------------------------------------------------------

def _chats(client, target, given):
    """[ChatReport] to read, and run-level errors. Listed chats are groups (the list has no p2p)."""
    if given:
        return [ChatReport(chat_id) for chat_id in dict.fromkeys(given)], []
    reports, errors = {}, []
    try:
        for item in _listed_chats(client):
            reports[item["chat_id"]] = ChatReport(item["chat_id"], item.get("name"), "group")
    except FeishuApiError as e:  # a missing scope, say: the chats the target knows still go on
        errors.append(f"cannot list the bot's chats: {e}")
    try:
        known = target.chat_ids() if target is not None else []
    except TargetError as e:  # the listed chats still go on; the target's own are read next time
        errors.append(f"cannot list the chats the target holds: {e}")
        known = []
    for chat_id in known:
        reports.setdefault(chat_id, ChatReport(chat_id))
    return list(reports.values()), errors


def _listed_chats(client):
    for items in client.chat_pages():
        yield from (c for c in items if c.get("chat_id"))


# -- one chat -------------------------------------------------------------------------------------

def _backfill_chat(run, chat, recheck):
    """Read the chat's unread ranges; sets and returns chat.status."""
    covered = [] if recheck else _covered(run, chat.chat_id)
    todo = gaps(covered, run.start, run.end)
    if not todo:
        chat.status = "up to date"
        return chat.status
    run.task = run.progress.task(chat_label(dataclasses.asdict(chat)), total=None)
    try:
        for start, end in todo:
            covered = _read_range(run, chat, covered, start, end)
        chat.status = "complete"
        run.task.update(total=chat.seen + chat.invalid)  # the bar ends full
    except (FeishuApiError, FeishuUnavailable) as e:
        chat.status, chat.error = "failed", str(e)
        chat.unavailable = isinstance(e, FeishuUnavailable)
        log.warning("chat %s: %s", chat.chat_id, e)
    except Stopped:
        chat.status = "stopped"
    return chat.status


def _read_range(run, chat, covered, start, end):
    """[start, end) in windows, oldest first. A window is recorded as read only when every page of it
    and of its threads is committed: nothing rests on Feishu's pages being in order, and a crash or
    a page that fails re-reads one window at most."""
    size, cursor, newest = WINDOW_S, start, -1
    while cursor < end:
        until = min(end, cursor + size)
        pages, newest = _read_window(run, chat, cursor, until, newest)
        read_to = until if run.feishu_clock else min(until, (newest - SETTLE_MS) // 1000)
        covered = _checkpoint(run, chat, covered, start, read_to)
        if run.on_window is not None:
            run.on_window(chat, read_to)
        cursor, size = until, next_window(size, pages)
    return covered


def _read_window(run, chat, start, end, newest):
    """Every page of the chat's [start, end), with its threads. -> (pages, the newest create_time
    seen so far in ms: `newest` or later)."""
    pages = 0
    for items in run.client.message_pages("chat", chat.chat_id, start=start, end=end):
        kept = _within(items, start, end)
        _store(run, chat, kept)
        _read_threads(run, chat, items, start, end)
        chat.pages += 1
        pages += 1
        newest = max([newest, *map(_ms, kept)])
    return pages, newest


def next_window(size, pages):
    """The next window's span after one of `size` seconds took `pages` pages: doubled after a page
    or none (a quiet chat costs a few requests), halved after more than WINDOW_PAGES (a busy one
    re-reads little after a crash)."""
    if pages <= 1:
        return min(size * 2, MAX_WINDOW_S)
    if pages > WINDOW_PAGES:
        return max(size // 2, MIN_WINDOW_S)
    return size


def _read_threads(run, chat, items, start, end):
    """The replies of each thread a page's messages in [start, end) start: the chat's list leaves them
    out. Not filtered by time (the API cannot): a late reply to a thread in range belongs to it."""
    for item in items:
        thread_id = item.get("thread_id")
        if not isinstance(thread_id, str) or not thread_id or thread_id in run.threads_read:
            continue
        if not _in_window(item, start, end):
            continue
        chat.threads += 1
        for replies in run.client.message_pages("thread", thread_id):
            _store(run, chat, [i for i in replies if i.get("message_id") != item.get("message_id")])
        run.threads_read.add(thread_id)


def _store(run, chat, items):
    """Normalize one page, skip what the target holds, commit the rest: its messages, then what the
    page says happened to them (a recall, an edit: the same facts the webhook's events state)."""
    messages, events = [], []
    for item in items:
        try:
            message = normalize(item)
            events += from_history(message, item)
        except InvalidMessage as e:
            _note_invalid(chat, item, e)
            continue
        if message.chat_type is None and chat.chat_type:
            message = dataclasses.replace(message, chat_type=chat.chat_type)
        messages.append(message)
        chat.recalled += item.get("deleted") is True
        chat.edited += item.get("updated") is True
    chat.seen += len(messages)
    run.task.advance(len(items))
    new, already = run.committer.commit(messages)
    chat.new += new
    chat.already_stored += already
    chat.events += run.committer.commit(events)[0]
    if run.on_page is not None:
        run.on_page(chat)


def _note_invalid(chat, item, error):
    chat.invalid += 1
    message_id = item.get("message_id") if isinstance(item, dict) else None
    log.warning("chat %s: message %s skipped: %s", chat.chat_id, message_id, error)
    if len(chat.invalid_items) < MAX_INVALID_SHOWN:
        chat.invalid_items.append({"message_id": message_id, "error": str(error)})


# -- checkpoints: the ranges already read, per chat -------------------------------------------

def _covered(run, chat_id):
    if run.outbox is None:
        return []
    value = run.outbox.get_meta(CHECKPOINT_PREFIX + chat_id, {})
    ranges = value.get("read") if isinstance(value, dict) else None
    return merge(r for r in ranges or [] if _is_range(r))


def _checkpoint(run, chat, covered, start, end):
    """Record [start, end) as read, after its messages are committed. Dry runs record nothing."""
    covered = merge([*covered, (start, end)]) if end > start else covered
    if not run.dry_run and end > start:
        run.outbox.set_meta(CHECKPOINT_PREFIX + chat.chat_id,
                            {"read": [list(r) for r in covered], "updated_at": int(time.time())})
    return covered


def merge(ranges):
    """Half-open (start, end) ranges -> sorted, non-overlapping, adjacent ones joined."""
    out = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges if e > s):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def gaps(covered, start, end):
    """The parts of [start, end) that no range in `covered` (merged) holds."""
    out, cursor = [], start
    for s, e in covered:
        if e <= cursor or s >= end:
            continue
        if s > cursor:
            out.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < end:
        out.append((cursor, end))
    return out


def _is_range(value):
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


# -- small helpers ----------------------------------------------------------------------------

def _ms(item):
    """create_time in epoch ms, or -1 when the item has none a number can be read from."""
    try:
        return int(item.get("create_time"))
    except (TypeError, ValueError):
        return -1


def _in_window(item, start, end):
    return start * 1000 <= _ms(item) < end * 1000


def _within(items, start, end):
    # The API's bounds are whole seconds and may include end_time itself: keep exactly [start, end).
    # An item without a readable time stays, for the normalizer to accept or report as invalid.
    return [i for i in items if _in_window(i, start, end) or _ms(i) < 0]




def _report(run, chats, errors, stopped, elapsed):
    rows = [{k: v for k, v in dataclasses.asdict(c).items() if k != "unavailable"} for c in chats]
    totals = {k: sum(r[k] for r in rows) for k in
              ("seen", "new", "already_stored", "recalled", "edited", "events", "invalid", "threads", "pages")}
    totals["chats"] = len(rows)
    totals["failed"] = sum(r["status"] == "failed" for r in rows)
    return {"since": _iso(run.start), "until": _iso(run.end), "dry_run": run.dry_run, "chats": rows,
            "totals": totals, "errors": errors, "stopped": stopped,
            "complete": not stopped and not errors and all(r["status"] in ("complete", "up to date")
                                                           for r in rows),
            "api": dict(run.client.stats), "target_checked": run.committer.target_checked,
            "seconds": round(elapsed, 3)}


def _iso(seconds):
    return s_to_datetime(seconds).isoformat().replace("+00:00", "Z")


def chat_label(row):
    """A chat for people: its name and id, or the id alone."""
    return f"{row['name']} ({row['chat_id']})" if row["name"] else row["chat_id"]
