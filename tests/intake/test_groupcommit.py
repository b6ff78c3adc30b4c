"""Group commit (the webhook's put path): concurrent puts share a transaction, and each is answered
with its own result only after the commit that holds it."""

import sqlite3
import threading

import pytest

from outbox_relay.errors import OutboxFull, OutboxUnavailable
from outbox_relay.intake.groupcommit import GroupCommit
from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox


def message(i, prefix="om"):
    return normalize({"message_id": f"{prefix}_{i:06d}", "chat_id": "oc_1", "text": f"message {i}"})


def hammer(commits, threads, per_thread, prefix="om"):
    """threads x per_thread puts at once -> [(message_id, result or exception)]."""
    out, start = [], threading.Barrier(threads)

    def worker(t):
        start.wait()
        for k in range(per_thread):
            m = message(t * per_thread + k, prefix)
            try:
                out.append((m.message_id, commits.put(m)))
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                out.append((m.message_id, e))
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return out


def stored(path):
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT message_id, id FROM outbox"))
    finally:
        conn.close()


def test_concurrent_puts_share_transactions_and_each_gets_its_own_committed_answer(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=100_000) as box:
        transactions = []
        real = box.put_each
        box.put_each = lambda messages, *keys: transactions.append(len(messages)) or real(messages, *keys)
        results = hammer(GroupCommit(box), threads=16, per_thread=100)
        assert len(results) == 1600 and all(not isinstance(r, Exception) for _, r in results)
        rows = stored(tmp_outbox)
        assert {mid: r.id for mid, r in results} == rows  # each answer is its own committed row
        assert sum(transactions) == 1600 and len(transactions) < 1600  # groups formed
        again = hammer(GroupCommit(box), threads=4, per_thread=10)
        assert all(r.duplicate for _, r in again)


def test_overflow_reject_refuses_only_the_puts_beyond_the_room(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=150, overflow="reject") as box:
        results = hammer(GroupCommit(box), threads=8, per_thread=40)
        accepted = [mid for mid, r in results if not isinstance(r, Exception)]
        refused = [mid for mid, r in results if isinstance(r, OutboxFull)]
        assert len(accepted) == 150 and len(refused) == 170
        assert sorted(stored(tmp_outbox)) == sorted(accepted)


def test_a_failed_transaction_answers_every_put_of_its_group_and_stores_nothing(tmp_outbox):
    with Outbox(tmp_outbox, busy_timeout=0.2) as box:
        blocker = sqlite3.connect(tmp_outbox, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            results = hammer(GroupCommit(box), threads=6, per_thread=3)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert len(results) == 18 and all(isinstance(r, OutboxUnavailable) for _, r in results)
        assert stored(tmp_outbox) == {}
        assert GroupCommit(box).put(message(1)).duplicate is False  # and it works again


@pytest.mark.parametrize("threads", [1, 3])
def test_a_lone_put_is_answered_at_once(tmp_outbox, threads):
    with Outbox(tmp_outbox) as box:
        results = hammer(GroupCommit(box), threads=threads, per_thread=1)
        assert len(results) == threads and all(r.state == "pending" for _, r in results)
