"""The local SQLite outbox: put, claim, mark, prune.

Every accepted message is committed here before the caller is answered; the
relay (sync/) moves rows on to the target. The hot path is one short
`BEGIN IMMEDIATE` transaction per put, written with the stdlib sqlite3 module
so the pragmas and the transaction boundaries are exactly what we say they are.

States: pending -> delivered (-> pruned); pending -> parked (overflow, kept);
pending -> dead (the target refused the row itself; `replay` requeues).

Longer than most modules, on purpose: every change of a row's state is a method of this one class,
so the rules that keep the states consistent (the count triggers, overflow parking, the file
generation a batch was claimed from) are read in one place.
"""

import collections
import dataclasses
import json
import logging
import os
import time

from ..errors import InvalidMessage, OutboxError, OutboxFull, OutboxUnavailable
from ..message import normalize, restore
from ..message.events import EDITED
from ..message.model import gap_fills
from ..schema.outbox import OUTBOX_MIGRATIONS, OUTBOX_VERSION, row_columns
from .siblings import Siblings
from .sqlitefile import SqliteFile

log = logging.getLogger(__name__)

STATES = ("pending", "delivered", "parked", "dead")
# Pruned rows between two reclaims while the relay is busy (and at once when it idles): giving
# space back after every batch cost more than the batch's own bookkeeping.
RECLAIM_EVERY = 200_000
OVERFLOW_POLICIES = ("park", "reject")
SYNCHRONOUS = ("full", "normal")

PutResult = collections.namedtuple("PutResult", "message_id duplicate id state differs replayed",
                                   defaults=(False, False))
Row = collections.namedtuple("Row", "id message_id payload received_at attempts kind")


class Outbox:
    """A durable local queue of messages, safe from many threads and processes at once.

    `put()` returns only after the SQLite commit (WAL, synchronous=FULL by
    default), and says whether the message was new or a duplicate of a row
    still in the outbox (same `message_id`).
    """

    def __init__(self, path, *, max_pending=1000, overflow="park", synchronous="full",
                 busy_timeout=30.0, keep_delivered=1000, readonly=False):
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        if max_pending < 1 or keep_delivered < 0 or busy_timeout < 0:
            raise ValueError("max_pending must be >= 1, keep_delivered and busy_timeout >= 0")
        self.path = os.fspath(path)
        self.max_pending = max_pending
        self.overflow = overflow
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.keep_delivered = keep_delivered
        self.file = SqliteFile(self.path, synchronous=synchronous, busy_timeout=busy_timeout, readonly=readonly)
        self._listeners = []
        self._claimed_in = None  # the file generation the relay's rows were claimed from
        self._pruned = 0  # rows pruned since the space was last given back
        self._keys_pruned_at = 0.0  # when request keys past the replay window were last deleted
        try:
            self._check_version() if readonly else self._create()
        except BaseException:
            self.close()  # the caller never gets this object, so nothing else could close it
            raise

    def _create(self):
        Siblings(self.path).refuse_aliases()  # before SQLite opens it under this name
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise OutboxUnavailable(f"cannot create the outbox directory {directory}: {e.strerror}") from None
        self._migrate()
        self.file.remember_identity()
        self.file.on_file_changed = self._adopt_file_at_path

    def close(self):
        """Close every connection this object opened (all threads)."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tx(self):
        return self.file.transaction()

    def _read(self, sql, params=()):
        return self.file.read(sql, params)

    def _migrate(self):
        if self._version() == OUTBOX_VERSION:
            return  # the common case: nothing to write, so a full disk does not stop an open
        # Both pragmas before any table; auto_vacuum only takes on an empty file.
        self.file.pragma_outside_transaction("PRAGMA auto_vacuum = INCREMENTAL")
        self.file.pragma_outside_transaction("PRAGMA journal_mode = WAL")
        with self._tx() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            self._refuse_foreign(c, version)
            for step in OUTBOX_MIGRATIONS[version:]:
                for sql in step:
                    c.execute(sql)
            if version != OUTBOX_VERSION:
                c.execute(f"PRAGMA user_version = {OUTBOX_VERSION}")
                log.debug("outbox %s migrated from schema %s to %s", self.path, version, OUTBOX_VERSION)

    def _version(self):
        return self.file.read("PRAGMA user_version")[0][0]

    def _refuse_foreign(self, c, version):
        if version > OUTBOX_VERSION:
            raise OutboxError(
                f"{self.path} has outbox schema version {version}, newer than this release "
                f"understands ({OUTBOX_VERSION}): upgrade outbox-relay")
        if version == 0 and c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # Never put our tables into somebody else's database (a wrong --outbox, a file put there).
            raise OutboxUnavailable(f"{os.path.abspath(self.path)} is a SQLite database but not an outbox")

    def _check_version(self):
        version = self._version()
        if version == 0:
            self._refuse_foreign(self.file.conn(), version)
        if version != OUTBOX_VERSION:
            raise OutboxError(f"{self.path} has outbox schema version {version}, this release reads"
                              f" {OUTBOX_VERSION}: run `outbox-relay run` (or `sync`) once to migrate it")

    def _adopt_file_at_path(self, why):
        """The file we write is no longer the one at the path (deleted, moved, replaced). Called
        after a commit, under the write lock. Keep everything: a full copy of the old file beside
        the path, then its undelivered rows committed again into the file now at the path (created
        when there is none), so what this process acknowledges is always in that file."""
        from .faults import adopt_file_at_path
        adopt_file_at_path(self, why)

    def schema_version(self):
        return self._version()

    # -- rows copied from another outbox file (faults.py: a replaced file, `recover`) -----------

    def reopen_at_path(self):
        """Point every connection at the file now at the path (created when there is none)."""
        self.file.reopen()
        self._create()

    def restore_rows(self, rows, meta=()):
        """Commit rows read from another outbox file (schema.outbox.row_columns() order, their states
        and attempts as they were) and its meta entries; a message_id already here is kept as it is,
        and overflow is parked as for any put. Returns how many rows were new."""
        columns = row_columns()
        insert = (f"INSERT INTO outbox ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                  " ON CONFLICT (message_id) DO NOTHING")
        with self._tx() as c:
            before = c.total_changes
            c.executemany(insert, rows)
            copied = c.total_changes - before
            c.executemany("INSERT INTO outbox_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", meta)
            if self.overflow == "park":
                self._park_overflow(c)
        if copied:
            self._notify()
        return copied

    # -- writing -----------------------------------------------------------------

    def add_listener(self, callback):
        """Call `callback()` after every commit that added pending rows (wakes an in-process relay)."""
        self._listeners.append(callback)

    def put(self, payload):
        """Normalize and commit one message. Returns PutResult(message_id, duplicate, id, state).

        Raises InvalidMessage (nothing stored), OutboxFull (overflow=reject and
        max_pending rows pending), OutboxUnavailable (cannot commit now).
        """
        return self.put_many([payload])[0]

    def put_many(self, payloads):
        """Commit many messages in one transaction: all are stored, or none (any invalid -> none)."""
        payloads = list(payloads)  # a generator too: len() below, on the error path
        messages = []
        for i, payload in enumerate(payloads):
            try:
                messages.append(normalize(payload))
            except InvalidMessage as e:
                if len(payloads) == 1:
                    raise
                raise (type(e)(f"item {i}: {e}") if type(e) is InvalidMessage else e) from None
        return self._commit(messages, each=False)

    def put_each(self, messages, request_keys=None, key_ttl=None):
        """Commit Messages from many senders in one transaction (group commit): each gets its own
        answer, a PutResult or the OutboxFull that refused it alone (overflow=reject). An error
        of the transaction itself (OutboxUnavailable) is raised: then nothing was stored.

        `request_keys` (one per message, or None): what identifies the signed request that carried
        it. A key committed before (within `key_ttl` seconds) is a replay: its message is not stored
        again (PutResult.replayed). The key is committed with the message, so a request that was
        refused (503) is taken when it comes again."""
        return self._commit(messages, each=True, keys=request_keys, key_ttl=key_ttl)

    def _commit(self, messages, each, keys=None, key_ttl=None):
        if not messages:
            return []
        now = time.time()
        results = []
        added = 0
        keys = keys or [None] * len(messages)
        with self._tx() as c:
            pending = _count(c, "pending") if self.overflow == "reject" else None
            if any(keys):
                self._forget_old_keys(c, now, key_ttl)
            for m, key in zip(messages, keys):
                if key is not None and not self._first_time(c, key, now):
                    results.append(PutResult(m.message_id, True, None, None, replayed=True))
                    continue
                full = pending is not None and pending >= self.max_pending
                if full and each and not self._stored(c, m.key):
                    results.append(self._full(pending))
                    continue
                cur = c.execute(
                    "INSERT INTO outbox (message_id, kind, chat_id, sender_id, msg_type, text, created_at,"
                    " received_at, updated_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (message_id) DO NOTHING", _row_values(m, now))
                if cur.rowcount == 1:
                    if full:
                        raise self._full(pending)  # put_many: all or nothing
                    pending = None if pending is None else pending + 1
                    results.append(PutResult(m.message_id, False, cur.lastrowid, "pending"))
                    added += 1
                else:
                    results.append(self._duplicate(c, m))
            if added and self.overflow == "park" and self._park_overflow(c):
                # A batch bigger than the room parks some of its own rows: report their real state.
                ids = [r.id for r in results if isinstance(r, PutResult)]
                states = dict(c.execute("SELECT id, state FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
                                        (json.dumps(ids),)).fetchall())
                results = [r._replace(state=states.get(r.id, r.state)) if isinstance(r, PutResult) else r
                           for r in results]
        if added:
            self._notify()
        return results

    @staticmethod
    def _first_time(c, key, now):
        return c.execute("INSERT INTO request_keys (key, seen_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                         (key, now)).rowcount == 1

    def _forget_old_keys(self, c, now, ttl):
        """Keys older than the replay window go (at most once a minute: the index makes it cheap,
        but not free); a request that old is refused by its timestamp anyway."""
        if ttl is not None and now >= self._keys_pruned_at + 60:
            c.execute("DELETE FROM request_keys WHERE seen_at < ?", (now - ttl,))
            self._keys_pruned_at = now

    def _full(self, pending):
        return OutboxFull(f"outbox is full: {pending} messages pending (max_pending {self.max_pending},"
                          " overflow=reject); retry later")

    @staticmethod
    def _stored(c, key):
        return c.execute("SELECT 1 FROM outbox WHERE message_id = ?", (key,)).fetchone() is not None

    def _duplicate(self, c, m):
        """The row already stored under m's key (a message's id, an event's). Feishu re-delivers the
        very same event; one that comes back with other words is worth a log line (the first version
        is kept)."""
        row_id, state, kind, payload = c.execute("SELECT id, state, kind, payload FROM outbox WHERE message_id = ?",
                                                 (m.key,)).fetchone()
        stored = restore(kind, payload)
        differs = (stored.text, stored.content) != (m.text, m.content)
        if differs:
            log.warning("message %s arrived again with different content (source %s, first from %s);"
                        " the first version is kept", m.message_id, m.source, stored.source)
        fills = gap_fills(stored, m) if kind == "message" else {}
        if fills:
            state = self._fill(c, row_id, state, dataclasses.replace(stored, **fills))
        return PutResult(m.message_id, True, row_id, state, differs)

    @staticmethod
    def _fill(c, row_id, state, filled):
        """A later copy knows ids the stored one lacks (OpenClaw's hook names no parent, and a direct
        chat only by the sender's ou_ id): the stored payload takes them, and a row already delivered
        goes out again, so that the target's upsert fills its row too (which changes nothing else)."""
        new_state = "pending" if state == "delivered" else state
        c.execute("UPDATE outbox SET payload = ?, chat_id = ?, state = ?, updated_at = ? WHERE id = ?",
                  (filled.to_json(), filled.chat_id, new_state, time.time(), row_id))
        return new_state

    def _park_overflow(self, c):
        """Park the oldest pending rows beyond max_pending (the design card: oldest first; the relay
        takes them oldest first too). One statement, the count read from outbox_counts inside it:
        this runs on every put. Returns how many were parked."""
        return c.execute(
            "UPDATE outbox SET state = 'parked', updated_at = ? WHERE id IN"
            " (SELECT id FROM outbox WHERE state = 'pending' ORDER BY id"
            "  LIMIT max(0, (SELECT n FROM outbox_counts WHERE state = 'pending') - ?))",
            (time.time(), self.max_pending)).rowcount

    def _notify(self):
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # a listener must never turn a committed put into an error
                log.exception("outbox listener failed")

    # -- the relay's side ------------------------------------------------------------

    @property
    def generation(self):
        """Which file at the path the rows come from (changes when it was replaced under us)."""
        return self.file.generation

    def claim_oldest(self, limit, exclude=(), kinds=None):
        """The relay's claim: the oldest undelivered rows, parked ones included. Parked rows are
        the oldest (overflow parks from the front), so they go first, straight to the target: moving
        them back to pending first (refill) cost a quarter of a drain's outbox work. `kinds`: only
        rows of these kinds (message, event), when the target cannot take the others yet."""
        return self._claim(("parked", "pending"), limit, exclude, kinds)

    def _claim(self, states, limit, exclude, kinds=None):
        generation = self.file.generation
        where = ""
        params = []
        if kinds is not None:
            where += f" AND kind IN ({', '.join(repr(str(k)) for k in kinds)})"
        if exclude:
            where += " AND id NOT IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(exclude)))
        # One ordered index range per state (UNION ALL), not `state IN (…) ORDER BY id`, which
        # would sort every parked row of a large backlog to return the first few hundred.
        parts = [f"SELECT * FROM (SELECT id, message_id, payload, received_at, attempts, kind FROM outbox"
                 f" WHERE state = '{state}'{where} ORDER BY id LIMIT ?)" for state in states]
        sql = " UNION ALL ".join(parts) + " ORDER BY id LIMIT ?"
        args = [a for _ in states for a in (*params, limit)] + [limit]
        rows = [Row(*r) for r in self._read(sql, args)]
        if self.file.generation != generation:
            return []  # the file changed during the read: the next claim reads the new one
        self._claimed_in = generation
        return rows

    def _same_file(self, generation=None):
        """Row ids belong to one file: after the file at the path changed, ids of the rows claimed
        before name other rows (or none) in the new one. The relay retries; the rows were
        committed again as pending, and the target's conflict clause makes the re-send harmless."""
        generation = self._claimed_in if generation is None else generation
        if generation is not None and generation != self.file.generation:
            raise OutboxUnavailable(f"outbox {self.path} was replaced during the batch: it is sent again")

    def finish_batch(self, ids, generation=None):
        """The target committed these rows: mark them delivered and prune delivered rows beyond
        keep_delivered, in one transaction. -> (delivered, pruned)."""
        with self._tx() as c:
            self._same_file(generation)
            delivered = self._mark_delivered(c, ids, time.time())
            pruned = self._prune(c, self.keep_delivered)
        self._pruned += pruned
        if self._pruned >= RECLAIM_EVERY:
            self.reclaim()
        return delivered, pruned

    def _mark_delivered(self, c, ids, now):
        if not ids:
            return 0
        return c.execute(
            "UPDATE outbox SET state = 'delivered', delivered_at = ?, updated_at = ?,"
            " attempts = attempts + 1, last_error = NULL"
            " WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('pending', 'parked')",
            (now, now, json.dumps(list(ids)))).rowcount

    def mark_dead(self, row_id, error, generation=None):
        with self._tx() as c:
            self._same_file(generation)
            c.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?,"
                " updated_at = ? WHERE id = ?", (str(error)[:4000], time.time(), row_id))

    def record_error(self, ids, error, generation=None):
        """A transient failure: the rows stay pending; remember why and how often."""
        if not ids:
            return
        with self._tx() as c:
            self._same_file(generation)
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending'",
                (str(error)[:4000], time.time(), json.dumps(list(ids))))

    def prune(self, keep=None):
        """Delete delivered rows beyond the newest `keep` (default keep_delivered), and give their
        space back. Returns how many."""
        with self._tx() as c:
            deleted = self._prune(c, self.keep_delivered if keep is None else keep)
        self._pruned += deleted
        self.reclaim_if_due()
        return deleted

    def _prune(self, c, keep):
        cutoff = c.execute("SELECT id FROM outbox WHERE state = 'delivered' ORDER BY id DESC LIMIT 1 OFFSET ?",
                           (keep,)).fetchone()
        if cutoff is None:
            return 0
        return c.execute("DELETE FROM outbox WHERE state = 'delivered' AND id <= ?", (cutoff[0],)).rowcount

    def reclaim_if_due(self):
        """Reclaim once anything was pruned since the last time (the relay calls this when idle)."""
        if self._pruned:
            self.reclaim()

    def reclaim(self):
        """Give the pages of deleted rows back to the file system (auto_vacuum=INCREMENTAL) and
        truncate the WAL: after a 100,000-row backlog drained the file stayed at 107 MB for 1,000
        rows. Best effort: a busy moment leaves it to the next time."""
        try:
            with self.file.write_lock:
                self.file.script("PRAGMA incremental_vacuum;")
                self.file.checkpoint()
            self._pruned = 0
        except OutboxError as e:
            log.debug("space not reclaimed now: %s", e)

    def replay(self, ids=None, states=("dead",)):
        """Requeue rows (by outbox id or message_id, or all in `states`) as pending. Returns the outbox
        ids of the rows it requeued, oldest first (`replay --wait` follows exactly these)."""
        for s in states:
            if s not in ("dead", "parked"):
                raise ValueError(f"replay takes dead or parked rows, not {s!r}")
        where, params = f"state IN ({','.join('?' * len(states))})", list(states)
        if ids is not None:
            keys = json.dumps([str(i) for i in ids])
            where += (" AND (CAST(id AS TEXT) IN (SELECT value FROM json_each(?))"
                      " OR message_id IN (SELECT value FROM json_each(?)))")
            params += [keys, keys]
        with self._tx() as c:
            found = [r[0] for r in c.execute(f"SELECT id FROM outbox WHERE {where} ORDER BY id", params)]
            if found:
                c.execute(f"UPDATE outbox SET state = 'pending', updated_at = ? WHERE {where}",
                          (time.time(), *params))
                if self.overflow == "park":
                    self._park_overflow(c)
        if found:
            self._notify()
        return found

    # -- reading -----------------------------------------------------------------------

    def counts(self):
        """Rows per state, every state present (0 when none)."""
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._read("SELECT state, n FROM outbox_counts"))
        return counts

    def has_pending(self, kinds=None):
        """Is anything waiting (of these kinds)?"""
        where = "" if kinds is None else f" AND kind IN ({', '.join(repr(str(k)) for k in kinds)})"
        return bool(self._read(f"SELECT 1 FROM outbox WHERE state IN ('pending', 'parked'){where} LIMIT 1"))

    def oldest_pending_age(self, now=None):
        """Seconds since the oldest undelivered (pending or parked) row was committed, or None."""
        # The first row of each state by id (the index), not min(received_at) over every row: ids
        # follow arrival, and a scan of a million parked rows cost a status call a second.
        row = self._read("SELECT min(received_at) FROM ("
                         "SELECT * FROM (SELECT received_at FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 1)"
                         " UNION ALL"
                         " SELECT * FROM (SELECT received_at FROM outbox WHERE state = 'parked' ORDER BY id LIMIT 1))")
        if row[0][0] is None:
            return None
        return max(0.0, (now or time.time()) - row[0][0])

    def delivered_since(self, since):
        return self._read("SELECT count(*) FROM outbox WHERE state = 'delivered' AND delivered_at >= ?",
                          (since,))[0][0]

    def arrivals(self, after_id=None):
        """Rows committed after row `after_id`, by message source: ({source: n}, highest id seen).
        Ids only grow and writers are serialized, so nothing committed later can have a lower id.
        None: only the highest id now (a baseline). For `top`'s intake rates."""
        if after_id is None:
            return {}, self._read("SELECT coalesce(max(id), 0) FROM outbox")[0][0]
        rows = self._read("SELECT json_extract(payload, '$.source'), count(*), max(id) FROM outbox"
                          " WHERE id > ? GROUP BY 1", (after_id,))
        return {source or "unknown": n for source, n, _ in rows}, max([after_id] + [r[2] for r in rows])

    def recent_chats(self, since_ms):
        """{chat_id: (messages created at or after since_ms, the source of the newest row)} over the
        rows kept here: the reconciler's active chats, how busy each is and how its messages come."""
        # SQLite takes the bare column from the row max() picks: the newest row's source.
        rows = self._read("SELECT chat_id, count(*), max(id), json_extract(payload, '$.source') FROM outbox"
                          " WHERE kind = 'message' AND created_at >= ? AND chat_id IS NOT NULL GROUP BY chat_id",
                          (since_ms,))
        return {chat_id: (n, source) for chat_id, n, _, source in rows}

    def events_about(self, message_id):
        """(state, payload) of the undelivered events about one message, oldest first."""
        return self._read("SELECT state, payload FROM outbox WHERE kind = 'event' AND state != 'delivered'"
                          " AND json_extract(payload, '$.message_id') = ? ORDER BY id", (message_id,))

    def states_of(self, ids):
        """{state: rows} among these outbox ids; ids no longer present were delivered and pruned."""
        return dict(self._read("SELECT state, count(*) FROM outbox WHERE id IN (SELECT value FROM json_each(?))"
                               " GROUP BY state", (json.dumps(list(ids)),)))

    def get(self, message_id):
        """The outbox row for a message_id as a dict, or None."""
        rows = self._read(
            "SELECT id, message_id, state, attempts, last_error, received_at, updated_at, delivered_at,"
            " payload FROM outbox WHERE message_id = ?", (message_id,))
        if not rows:
            return None
        keys = ("id", "message_id", "state", "attempts", "last_error", "received_at", "updated_at",
                "delivered_at", "payload")
        return dict(zip(keys, rows[0]))

    def rows(self, state, limit=100):
        """Rows in one state, oldest first: id, message_id, attempts, last_error, received_at, text."""
        keys = ("id", "message_id", "attempts", "last_error", "received_at", "updated_at", "text")
        cur = self._read(
            "SELECT id, message_id, attempts, last_error, received_at, updated_at, text FROM outbox"
            " WHERE state = ? ORDER BY id LIMIT ?", (state, limit))
        return [dict(zip(keys, r)) for r in cur]

    def search(self, keyword, *, chat=None, sender=None, msg_type=None, since_ms=None, until_ms=None,
               limit=50, states=("pending", "parked", "dead")):
        """Undelivered messages and edits (Messages, Events) whose text contains `keyword` (literally),
        newest first (an edit by when it was made)."""
        # lower(): ASCII case ignored, as the target's ILIKE (and the SQLite target) do.
        sql = ["SELECT state, kind, payload FROM outbox WHERE (kind = 'message' OR (kind = 'event' AND msg_type = ?))"
               " AND instr(lower(text), lower(?)) > 0"]
        params = [EDITED, keyword]
        sql.append(f"AND state IN ({','.join('?' * len(states))})")
        params.extend(states)
        # An event's row keeps its kind in msg_type: the type an edit gives the message is in its payload.
        type_of = "CASE kind WHEN 'message' THEN msg_type ELSE json_extract(payload, '$.msg_type') END"
        for column, value in (("chat_id", chat), ("sender_id", sender), (type_of, msg_type)):
            if value is not None:
                sql.append(f"AND {column} = ?")
                params.append(value)
        if since_ms is not None:
            sql.append("AND created_at >= ?")
            params.append(since_ms)
        if until_ms is not None:
            sql.append("AND created_at < ?")
            params.append(until_ms)
        sql.append("ORDER BY created_at DESC, id DESC LIMIT ?")
        params.append(limit)
        return [(state, restore(kind, payload)) for state, kind, payload in self._read(" ".join(sql), params)]

    # -- small key/value store: relay heartbeat and the like -----------------------------

    def set_meta(self, key, value):
        with self._tx() as c:
            c.execute("INSERT INTO outbox_meta (key, value) VALUES (?, ?)"
                      " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                      (key, json.dumps(value)))

    def get_meta(self, key, default=None):
        rows = self._read("SELECT value FROM outbox_meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def integrity_check(self):
        return self.file.integrity_check()

    def probe_writable(self, timeout):
        """Raise OutboxUnavailable unless a commit could happen now (writes nothing)."""
        self.check_file()
        self.file.probe_writable(timeout)

    def check_file(self):
        """Notice now (not only at the next commit) that the file at the path was replaced."""
        with self.file.write_lock:
            why = self.file.identity_change()
            if why is not None:
                self._adopt_file_at_path(why)

    def quick_check(self):
        """"ok", or raise OutboxCorrupt (and every later write refuses) when the file is damaged."""
        return self.file.quick_check()

    def damaged_reason(self):
        """Why the file is known to be damaged (a marker beside it), or None."""
        return self.file.damaged_reason()

    def sizes(self):
        """Bytes of the file and its WAL, and free on the file system."""
        return self.file.sizes()


def _row_values(m, now):
    """A Message or an Event as an outbox row (message_id holds its key: an event's is event:<event_id>)."""
    return (m.key, m.outbox_kind, m.chat_id, m.sender_id, m.outbox_type, m.text or "", m.created_or(now), now,
            now, m.to_json())


def _count(c, state):
    """Rows in one state, kept by triggers (schema v2): no scan of the index."""
    return c.execute("SELECT n FROM outbox_counts WHERE state = ?", (state,)).fetchone()[0]
