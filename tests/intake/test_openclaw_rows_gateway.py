"""One message, one row (issue 23), against the real gateway (openclaw@2026.9.6 + @openclaw/feishu@2026.9.5)
installed on a fresh host as the README says, with outbox-relay's service ingesting its hook's spool into
PostgreSQL.

One gateway start for the module (~35 s). Each way in writes its own PostgreSQL database, so that the rows
can be compared field by field: the webhook (the same encrypted, signed events posted to outbox-relay), the
hook (through the gateway), `backfill openclaw` (the gateway's own state, found the way the README says:
no DIR, the gateway user's HOME) and `backfill feishu` (the Feishu stand-in's history API). tests/wayin.py
says what each way must hold; the README's table says the same.
"""

import json
import threading
import time
import uuid

import pytest

import openclawgateway as og
import wayin
from cliutil import run_exe
from relayutil import pg_query
from serverproc import wait_until
from serviceutil import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("hermetic")]

KINDS = list(og.event_builders())  # every type but the reply, which answers "text"
COLUMNS = wayin.FIELDS
BURST = 200


class World:
    """The gateway, the services and the four databases of the module."""

    def __init__(self, work, gw, dbs, spool):
        self.work, self.gw, self.dbs, self.spool = work, gw, dbs, spool
        self.hook = self.webhook = None
        self.events = {}  # kind -> the event of the four-way test

    def start_hook_service(self):
        # The gateway's host: `outbox-relay run` ingests the hook's spool; it takes Feishu's events too
        # (the encrypt key), for the gap-filling test.
        self.hook = ServiceProcess(self.work / "hook", "run", target=self.dbs["hook"], spool=self.spool,
                                   feishu_encrypt_key=og.ENCRYPT_KEY)
        return self.hook

    def rows(self, way, ids=None):
        sql = f"SELECT {', '.join(COLUMNS)} FROM feishu_messages"
        got = pg_query(self.dbs[way], sql)
        rows = {r[0]: wayin.row_of(dict(zip(COLUMNS, r))) for r in got}
        return rows if ids is None else {i: rows.get(i) for i in ids}


@pytest.fixture(scope="module")
def world(openclaw_install, pg_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("openclaw-rows")
    for name in ("hook", "webhook", "bo", "bf"):
        (work / name).mkdir()
    names = {way: pg_server.create_database(f"t_oc_rows_{way.replace(' ', '_')}_{uuid.uuid4().hex[:8]}")
             for way in wayin.WAYS}
    dbs = {way: pg_server.url(name) for way, name in names.items()}
    spool = work / "spool"
    spool.mkdir()
    chats = {og.GROUP: og.GROUP_NAME, og.OTHER_GROUP: "另一个群"}
    try:
        # No model: each agent run fails right after OpenClaw has written the user line, which is all
        # the hook and the transcript need, and a turn takes a fraction of a completed one's time.
        with og.FeishuStandIn(work / "feishu", chats=chats) as feishu:
            gw = og.ReadmeGateway(openclaw_install, feishu, work / "gateway", spool=spool)
            try:
                gw.start()
            except RuntimeError as exc:
                pytest.fail(f"the OpenClaw gateway did not start: {exc}", pytrace=False)
            w = World(work, gw, dbs, spool)
            w.start_hook_service()
            w.webhook = ServiceProcess(work / "webhook", "run", target=dbs["webhook"],
                                       feishu_encrypt_key=og.ENCRYPT_KEY)
            try:
                yield w
            finally:
                for service in (w.hook, w.webhook):
                    service.close()
                gw.stop()
    finally:
        for name in names.values():
            pg_server.drop_database(name, force=True)


def post_to_relay(service, event):
    status, body = og.post_encrypted(service.port, "/webhook/feishu-message", event)
    assert status == 200, body


def deliver(w, event, wait_processed=True):
    """The event to the gateway (its hook hands it to the spool, the service to PostgreSQL) and to
    outbox-relay's webhook."""
    for item in og.api_items(event):
        w.gw.feishu.add_message(item)
    mid = event["event"]["message"]["message_id"]
    # The gateway's webhook takes 120 requests a minute from one client address (the Feishu plugin's
    # fixed window, loopback counted as one): refused ones are sent again, as Feishu retries.
    status, body = wait_until(lambda: (lambda r: r if r[0] != 429 else None)(w.gw.post_event(event)),
                              timeout=90, interval=0.5, what=f"the gateway to take {mid}")
    assert status == 200, body
    post_to_relay(w.webhook, event)
    if wait_processed:  # the next message must not arrive during this one's agent turn (one transcript line)
        wait_until(lambda: w.gw.logged("message processed:", f"messageId={mid}"), timeout=60,
                   what=f"the gateway's dispatch of {mid}")


def test_a_fresh_host_installs_as_the_readme_says(world):
    """`outbox-relay openclaw install-hook` made ~/.openclaw/hooks in a HOME that had none, printed the
    .env line the gateway then read, and `openclaw hooks list` shows the hook ready; a message reaches
    PostgreSQL through it."""
    gw = world.gw
    assert f"installed the hook into {gw.state / 'hooks' / 'outbox-relay'}" in gw.install_output
    assert (gw.state / "hooks" / "outbox-relay" / "handler.js").is_file()
    assert (gw.state / ".env").read_text() == f"OUTBOX_RELAY_SPOOL={world.spool}\n"
    listed = [line for line in gw.hooks_list.splitlines() if "outbox-relay" in line]
    assert listed and "ready" in listed[0].lower(), gw.hooks_list
    event = og.event_builders(prefix="fresh-")["text"]()
    deliver(world, event)
    mid = event["event"]["message"]["message_id"]
    wait_until(lambda: world.rows("hook", [mid])[mid], timeout=30, what="the message in PostgreSQL")


def test_every_type_gives_the_same_row_whichever_way_it_came(world):
    created = int(time.time() * 1000) - 300_000  # backfill feishu reads up to a minute before Feishu's now
    builders = og.event_builders(created_ms=created, prefix="way-")
    for kind in KINDS + ["reply"]:
        event = (og.reply_event(world.events["text"], prefix="way-", create_time=created + 20_000)
                 if kind == "reply" else builders[kind]())
        world.events[kind] = event
        deliver(world, event)
    ids = {kind: e["event"]["message"]["message_id"] for kind, e in world.events.items()}
    wait_until(lambda: all(world.rows("hook", ids.values()).values()), timeout=60, what="every hook row")
    wait_until(lambda: all(world.rows("webhook", ids.values()).values()), timeout=30, what="every webhook row")
    # backfill openclaw as the gateway's user, without DIR: ~/.openclaw of its HOME.
    bo = {"HOME": str(world.gw.home), "OPENCLAW_STATE_DIR": "", "OPENCLAW_HOME": "",
          "OUTBOX_RELAY_OUTBOX": str(world.work / "bo" / "outbox.db"),
          "OUTBOX_RELAY_TARGET": world.dbs["backfill openclaw"]}
    res = run_exe("backfill", "openclaw", "--json", env=bo, timeout=120)
    assert res.returncode == 0, res.stderr
    assert run_exe("sync", env=bo, timeout=120).returncode == 0
    # backfill feishu: the bot's groups (listed), then the direct chat by its id.
    bf = {"OUTBOX_RELAY_OUTBOX": str(world.work / "bf" / "outbox.db"),
          "OUTBOX_RELAY_TARGET": world.dbs["backfill feishu"],
          "OUTBOX_RELAY_FEISHU_APP_ID": og.APP_ID, "OUTBOX_RELAY_FEISHU_APP_SECRET": og.APP_SECRET,
          "OUTBOX_RELAY_FEISHU_API_BASE": world.gw.feishu.url, "SSL_CERT_FILE": str(world.gw.feishu.cert_path)}
    for extra in ([], ["--chat", og.P2P]):
        res = run_exe("backfill", "feishu", "--since", "1d", *extra, env=bf, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    assert run_exe("sync", env=bf, timeout=120).returncode == 0
    rows = {way: world.rows(way, ids.values()) for way in wayin.WAYS}
    problems = []
    for kind, mid in ids.items():
        webhook = rows["webhook"][mid]
        assert webhook is not None, kind
        for way in wayin.WAYS[1:]:
            got = rows[way][mid]
            if got is None:
                problems.append(f"{kind} by {way}: no row")
                continue
            problems += [f"{kind} by {way}: {f} is {g!r}, expected {e!r}"
                         for f, e, g in wayin.differences(kind, way, got, webhook, og.BOT_OPEN_ID)]
    assert not problems, "\n".join(problems)


def test_the_webhook_after_the_hook_fills_the_rows_gaps(world):
    """The same events posted to the service that took the hook's copies: the rows get the ids the
    hook did not know (a reply's parent and root, a thread, a direct chat's oc_ id) and nothing else."""
    assert world.events, "runs after the four-way test"
    ids = [e["event"]["message"]["message_id"] for e in world.events.values()]
    before = world.rows("hook", ids)
    for event in world.events.values():
        post_to_relay(world.hook, event)
    webhook = world.rows("webhook", ids)

    def filled():
        now = world.rows("hook", ids)
        return all(now[i][f] == webhook[i][f] for i in ids for f in ("chat_id", "parent_id", "root_id", "thread_id"))
    wait_until(filled, timeout=30, what="the gaps filled")
    after = world.rows("hook", ids)
    for i in ids:
        for f in ("message_id", "chat_type", "sender_id", "msg_type", "text", "mentions", "created_at"):
            assert after[i][f] == before[i][f], (i, f)
    assert sum(before[i] != after[i] for i in ids) >= 4  # reply, group (thread), p2p, p2p_image


def test_a_burst_through_the_gateway_with_the_relay_killed_twice(world):
    """200 messages of every type through the real gateway while `outbox-relay run` is killed -9 twice:
    200 rows, each the webhook's row for the same event (or its documented difference)."""
    kinds, base = [k for k in KINDS], int(time.time() * 1000) - 200_000
    # Groups spread over four chats: OpenClaw handles one chat's messages one after another.
    groups = [og.GROUP, og.OTHER_GROUP, "oc_b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1", "oc_b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"]
    events = []
    for i in range(BURST):
        kind = kinds[i % len(kinds)]
        event = og.event_builders(prefix=f"burst{i}-")[kind]()
        m = event["event"]["message"]
        m["create_time"] = m["update_time"] = str(base + i * 10)
        if m["chat_type"] == "group":
            m["chat_id"] = groups[i % len(groups)]
        events.append((kind, event))
    kills, sent = [], []

    def killer():
        for at in (60, 130):
            wait_until(lambda at=at: len(sent) >= at, timeout=300, what=f"{at} posted")
            world.hook.proc.kill()  # SIGKILL
            world.hook.proc.wait(10)
            kills.append(at)
            # The relay stays down while more messages come: the hook keeps writing the spool meanwhile.
            wait_until(lambda at=at: len(sent) >= at + 5, timeout=300, what=f"{at + 5} posted with the relay down")
            world.start_hook_service()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    for kind, event in events:
        deliver(world, event, wait_processed=False)
        sent.append(kind)
    thread.join(timeout=300)
    assert kills == [60, 130]
    ids = {e["event"]["message"]["message_id"]: kind for kind, e in events}
    wait_until(lambda: all(world.rows("hook", ids).values()), timeout=300, what="every burst row in PostgreSQL")
    wait_until(lambda: all(world.rows("webhook", ids).values()), timeout=60, what="every webhook row")
    hook, webhook = world.rows("hook", ids), world.rows("webhook", ids)
    count = pg_query(world.dbs["hook"], "SELECT count(*), count(DISTINCT message_id) FROM feishu_messages"
                                         " WHERE message_id = ANY(%s)", (list(ids),))[0]
    assert count == (BURST, BURST)
    problems = [f"{ids[mid]} {mid}: {f} is {g!r}, expected {e!r}" for mid in ids
                for f, e, g in wayin.differences(ids[mid], "hook", hook[mid], webhook[mid], og.BOT_OPEN_ID)]
    assert not problems, "\n".join(problems[:20])
    assert json.dumps(sorted(ids)) == json.dumps(sorted(hook))
