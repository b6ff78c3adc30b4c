"""Events through the relay's real faults (issue 19): 2,000 messages and 3,000 events about them, in
a shuffled order (an edit often comes before its message), drained by a `run` killed -9 five times
while the server goes down once (PostgreSQL stopped, MariaDB killed -9). Every event ends in
feishu_message_events once, and every message's row is what its events say, as worked out here from
the events the test made."""

import random
import signal
import time

from outbox_relay.archive.history import current_reactions
from outbox_relay.timeconv import ms_to_iso, to_ms

from factories import feishu_edit, feishu_message, feishu_reaction, feishu_recall
from relayutil import SEED, assert_exactly_once, heartbeat, outbox_counts, outbox_with, pg_query
from serverproc import wait_until

MESSAGES, EVENTS = 2000, 3000
BASE = 1_790_000_000_000
EMOJIS, USERS = ("THUMBSUP", "SMILE", "OK"), ("ou_r1", "ou_r2")


def made_up_traffic(rng):
    """-> (the payloads in a shuffled order, {message_id: the final state its events give})."""
    payloads, expected = [], {}
    for i in range(MESSAGES):
        message_id = f"om_ev_{i:05d}"
        payloads.append(feishu_message(message_id, f"first words {i}", BASE + i * 1000))
        expected[message_id] = {"text": f"first words {i}", "original_text": None, "edited_at": None,
                                "recalled_at": None, "events": set(), "reactions": []}
    recalled = set()
    for n in range(EVENTS):
        message_id = f"om_ev_{rng.randrange(MESSAGES):05d}"
        state = expected[message_id]
        at = BASE + 10_000_000 + n * 7 + rng.randrange(5)  # distinct Feishu times, unrelated to the order sent
        event_id = f"ev-{n:05d}"
        kind = rng.choice(("edited", "edited", "reaction", "reaction", "recalled"))
        if kind == "recalled" and message_id in recalled:
            kind = "edited"  # Feishu recalls a message once
        if kind == "edited":
            text = f"edit {n} of {message_id}"
            payloads.append(feishu_edit(message_id, event_id, text, at))
            if state["edited_at"] is None or at > state["edited_at"]:
                state["original_text"] = f"first words {int(message_id[-5:])}"
                state.update(text=text, edited_at=at)
        elif kind == "recalled":
            recalled.add(message_id)
            payloads.append(feishu_recall(message_id, event_id, at))
            state["recalled_at"] = at
        else:
            emoji, user, added = rng.choice(EMOJIS), rng.choice(USERS), rng.random() < 0.6
            payloads.append(feishu_reaction(message_id, event_id, at, emoji=emoji, user=user, added=added))
            state["reactions"].append({"kind": "reaction_added" if added else "reaction_removed", "emoji": emoji,
                                       "operator_id": user, "happened_at": ms_to_iso(at), "event_id": event_id})
        state["events"].add(event_id)
    rng.shuffle(payloads)
    return payloads, expected


def archived_state(query):
    """{message_id: the same shape as made_up_traffic's}, read back from the target (query(sql) -> rows),
    and every event_id in it (duplicates kept, to be counted)."""
    rows = query("SELECT message_id, text, original_text, edited_at, recalled_at FROM feishu_messages")
    events = query("SELECT event_id, message_id, kind, emoji, operator_id, happened_at FROM feishu_message_events")
    state = {m: {"text": text, "original_text": original, "edited_at": to_ms(edited) if edited else None,
                 "recalled_at": to_ms(recalled) if recalled else None, "events": set(), "reactions": []}
             for m, text, original, edited, recalled in rows}
    for event_id, message_id, kind, emoji, operator_id, happened_at in events:
        state[message_id]["events"].add(event_id)
        if kind.startswith("reaction_"):
            state[message_id]["reactions"].append({"kind": kind, "emoji": emoji, "operator_id": operator_id,
                                                   "happened_at": ms_to_iso(to_ms(happened_at)),
                                                   "event_id": event_id})
    return [r[0] for r in rows], [e[0] for e in events], state


def comparable(state):
    """A message's state with its reactions as what the chat shows (each person's latest action)."""
    return {**state, "reactions": current_reactions(state["reactions"])}


class Server:
    """The target's server as the scenario needs it: a database's URL, a query, a crash and a start."""

    def __init__(self, url, query, crash, start):
        self.url, self.query, self.crash, self.start = url, query, crash, start


def test_events_exactly_once_through_kill_9_and_a_postgresql_outage(spawn, tmp_path, private_pg):
    private_pg.execute("CREATE DATABASE relay")
    url = private_pg.url("relay")
    events_through_kill_9_and_an_outage(spawn, tmp_path, Server(url, lambda sql: pg_query(url, sql),
                                                               lambda: private_pg.stop(mode="immediate"),
                                                               private_pg.start))


def test_events_exactly_once_through_kill_9_and_a_mariadb_crash(spawn, tmp_path, private_maria):
    private_maria.create_database("relay")
    events_through_kill_9_and_an_outage(spawn, tmp_path, Server(
        private_maria.url("relay"), lambda sql: [tuple(r) for r in private_maria.execute(sql, dbname="relay")],
        private_maria.kill, private_maria.start))


def events_through_kill_9_and_an_outage(spawn, tmp_path, server):
    url = server.url
    rng = random.Random(SEED)
    payloads, expected = made_up_traffic(rng)
    outbox_path = outbox_with(tmp_path / "outbox.db", payloads)

    def landed():
        try:
            return sum(server.query("SELECT (SELECT count(*) FROM feishu_messages)"
                                    " + (SELECT count(*) FROM feishu_message_events)")[0])
        except Exception:  # noqa: BLE001 - before the tables exist, or while the server is down
            return 0

    kills, seen, outage = [], 0, False
    for round_ in range(12):
        proc = spawn(f"run-{round_}", ["run", "--no-http"], outbox=outbox_path, target=url, batch_size=20)
        seen = wait_until(lambda before=seen: (lambda c: c if c > before else 0)(landed()), timeout=30,
                          what=f"progress in round {round_} (seed {SEED})")
        if not outage and len(kills) == 2:
            # The server goes down under a running relay, which keeps its rows and carries on once it is back.
            server.crash()
            stopped_at = time.time()
            wait_until(lambda t=stopped_at: (heartbeat(outbox_path).get("last_error_at") or 0) > t, timeout=20,
                       what="the relay to record the outage")
            assert proc.alive(), proc.output()
            server.start()
            outage = True
            seen = wait_until(lambda before=seen: (lambda c: c if c > before else 0)(landed()), timeout=60,
                              what="progress after the outage")
        time.sleep(rng.uniform(0, 0.1))  # a random moment: inside a batch, between, marking
        assert proc.alive(), proc.output()
        assert proc.kill9() == -signal.SIGKILL
        kills.append(landed())
        seen = kills[-1]
        if len(kills) == 5:
            break
    assert outage and len(kills) == 5 and kills[-1] < MESSAGES + EVENTS, (kills, SEED)
    final = spawn("final", ["sync", "--json"], outbox=outbox_path, target=url, batch_size=500)
    assert final.wait(120) == 0, final.output()

    message_ids, event_ids, archived = archived_state(server.query)
    assert_exactly_once(message_ids, set(expected))
    assert_exactly_once(event_ids, {e for s in expected.values() for e in s["events"]})
    wrong = {m: (comparable(archived[m]), comparable(s)) for m, s in expected.items()
             if comparable(archived[m]) != comparable(s)}
    assert not wrong, (len(wrong), list(wrong.items())[:3], SEED)
    # The test made a mix worth the name: edits before their messages, recalls, reactions left on.
    assert sum(s["recalled_at"] is not None for s in expected.values()) > 100
    assert sum(s["edited_at"] is not None for s in expected.values()) > 500
    assert sum(bool(comparable(s)["reactions"]) for s in expected.values()) > 200
    left = outbox_counts(outbox_path)
    assert left["pending"] == left["parked"] == left["dead"] == 0, left
