"""Issue 5, the read side: `search` and `stats` against a real PostgreSQL server.

The corpus is filled the way production fills it (Outbox.put_many, then
Relay.drain into a table made by Target.init_db), with some messages left
pending in the outbox. Every expectation is computed here, in Python, from the
corpus itself (plain substring tests and counting), never by asking the code
under test.
"""

import datetime as dt
import json
import os
import sqlite3
import time

import psycopg2
import pytest

from outbox_relay.archive.search import search_messages, search_query
from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from cliutil import run_cli
from factories import flat_message, sample
from relayutil import archive_with, pg_query
from skiputil import unavailable

HOUR, DAY = 3600 * 1000, 86400 * 1000
NOW = int(time.time() * 1000)

pytestmark = pytest.mark.usefixtures("hermetic")


def iso_ms(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


# -- the search corpus ------------------------------------------------------------------------

def post(mid, title, body, chat, sender, at, locale="zh_cn"):
    content = {locale: {"title": title, "content": [
        [{"tag": "text", "text": body}, {"tag": "at", "user_id": "@_user_1", "user_name": "Tom"}],
        [{"tag": "img", "image_key": "img_x"}]]}}
    return {"message_id": mid, "chat_id": chat, "sender_id": sender, "msg_type": "post",
            "content": json.dumps(content, ensure_ascii=False), "create_time": str(at)}


# (payload, delivered?) -- created times are distinct and hours away from any filter boundary.
CORPUS = [
    (flat_message("d_zh", "今天测试一下系统", "oc_a", "ou_1", NOW - 1 * HOUR), True),
    (flat_message("d_one", "测", "oc_b", "ou_2", NOW - 2 * DAY), True),
    (post("d_post", "周报", "本周测试进展", "oc_a", "ou_2", NOW - 3 * DAY), True),
    (sample("v2_post.json"), True),  # om_post_0001: 周报 / 第一行 超链接 @Tom, 2023-11-14, oc_group_1, ou_aaa
    (flat_message("d_pct", "完成 100% 测试", "oc_b", "ou_1", NOW - 8 * DAY), True),
    (flat_message("d_nopct", "完成 100 测试", "oc_b", "ou_1", NOW - 9 * DAY), True),
    (flat_message("d_us", "file_name 已上传", "oc_c", "ou_3", NOW - 4 * DAY), True),
    (flat_message("d_nous", "filexname 已上传", "oc_c", "ou_3", NOW - 5 * DAY), True),
    (flat_message("d_quote", "it's 测试", "oc_a", "ou_3", NOW - 6 * DAY), True),
    (flat_message("d_noquote", "its 测", "oc_a", "ou_3", NOW - 6 * DAY - 2 * HOUR), True),
    (flat_message("d_bs", "路径 C:\\temp\\测试", "oc_c", "ou_1", 1704873600000), True),  # 2024-01-10T08:00Z
    (flat_message("d_nobs", "路径 C:temp", "oc_c", "ou_1", 1704960000000), True),        # 2024-01-11T08:00Z
    (flat_message("d_emoji", "好的👍 mixed English 测试", "oc_b", "ou_2", NOW - HOUR // 2), True),
    (sample("v2_image.json"), True),  # om_image_0001: "[image]"
    (flat_message("p_zh", "待发送的测试消息", "oc_a", "ou_1", NOW - 10 * 60 * 1000), False),
    (post("p_post", "草稿", "测试计划", "oc_c", "ou_2", NOW - DAY - 3 * HOUR, locale="en_us"), False),
    (flat_message("p_pct", "打折 50% off", "oc_b", "ou_2", NOW - 2 * DAY - HOUR), False),
    (flat_message("p_nopct", "打折 50 off", "oc_b", "ou_2", NOW - 2 * DAY - 2 * HOUR), False),
    (flat_message("p_us", "a_b 待定", "oc_a", "ou_3", NOW - 3 * DAY - HOUR), False),
    (flat_message("p_nous", "axb 待定", "oc_a", "ou_3", NOW - 3 * DAY - 2 * HOUR), False),
    (flat_message("p_quote", "don't 测", "oc_c", "ou_1", NOW - 20 * DAY), False),
    (flat_message("p_noquote", "dont", "oc_c", "ou_1", NOW - 21 * DAY), False),
    (flat_message("p_bs", "D:\\dir 测", "oc_b", "ou_3", NOW - HOUR - 30 * 60 * 1000), False),
    (flat_message("p_nobs", "D:dir", "oc_b", "ou_3", NOW - HOUR - 40 * 60 * 1000), False),
]
MESSAGES = [(normalize(p), delivered) for p, delivered in CORPUS]


def expected(keyword, chat=None, sender=None, msg_type=None, since=None, until=None, limit=1000):
    """The oracle: [(message_id, where)] newest first, by a plain Python substring test."""
    hits = [(m, d) for m, d in MESSAGES if keyword in m.text
            and (chat is None or m.chat_id == chat) and (sender is None or m.sender_id == sender)
            and (msg_type is None or m.msg_type == msg_type)
            and (since is None or m.created_at >= since) and (until is None or m.created_at < until)]
    hits.sort(key=lambda md: md[0].created_at, reverse=True)
    return [(m.message_id, "target" if d else "outbox (pending)") for m, d in hits[:limit]]


@pytest.fixture
def corpus(pg_url, tmp_outbox):
    """The target holds the delivered part of CORPUS; the outbox still holds the rest, pending."""
    return archive_with(pg_url, tmp_outbox, [p for p, delivered in CORPUS if delivered],
                        [p for p, delivered in CORPUS if not delivered])


def search_json(corpus, keyword, *options):
    result = run_cli("search", keyword, "--json", "--limit", "1000", *options,
                     "--outbox", corpus["outbox"], "--target", corpus["url"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target_error"] is None
    return data


def found(data):
    return [(r["message_id"], r["where"]) for r in data["results"]]


# -- search --------------------------------------------------------------------------------------

# Chinese (a word, one character, inside a post, in a sample post), emoji, mixed scripts,
# and LIKE's and SQL's special characters, which must all be plain characters.
KEYWORDS = ["测试", "测", "进展", "超链接", "草稿", "计划", "👍", "好的👍 mixed", "English",
            "%", "100%", "50%", "_", "e_n", "a_b", "'", "it's", "don't", "\\", "C:\\t", "D:\\",
            "%_", "\\%", "'; DROP TABLE feishu_messages; --", "没有这个词"]


def test_search_keywords_match_literally_in_target_and_outbox(corpus):
    for keyword in KEYWORDS:
        data = search_json(corpus, keyword)
        assert found(data) == expected(keyword), keyword
        assert data["count"] == len(data["results"])
    # The named cases, spelled out (the oracle above covers them too):
    assert {"d_zh", "d_post", "p_zh", "p_post"} <= {m for m, _ in found(search_json(corpus, "测试"))}
    assert ("d_one", "target") in found(search_json(corpus, "测"))        # a one-character message
    assert found(search_json(corpus, "进展")) == [("d_post", "target")]   # inside a delivered post
    assert found(search_json(corpus, "超链接")) == [("om_post_0001", "target")]  # the Feishu sample post
    assert found(search_json(corpus, "计划")) == [("p_post", "outbox (pending)")]  # inside a pending post
    assert found(search_json(corpus, "%")) == [("p_pct", "outbox (pending)"), ("d_pct", "target")]
    assert found(search_json(corpus, "_")) == [("p_us", "outbox (pending)"), ("d_us", "target")]
    assert found(search_json(corpus, "'")) == [("d_quote", "target"), ("p_quote", "outbox (pending)")]
    assert found(search_json(corpus, "\\")) == [("p_bs", "outbox (pending)"), ("d_bs", "target")]
    assert found(search_json(corpus, "\\%")) == []


FILTERS = [
    # (options, oracle filters) -- every one has hits on both sides unless noted
    (["--chat", "oc_a"], {"chat": "oc_a"}),
    (["--sender", "ou_2"], {"sender": "ou_2"}),
    (["--type", "post"], {"msg_type": "post"}),
    (["--since", "7d"], {"since": NOW - 7 * DAY}),
    (["--since", "36h"], {"since": NOW - 36 * HOUR}),
    (["--until", "1d"], {"until": NOW - DAY}),
    (["--since", "7d", "--until", "2h"], {"since": NOW - 7 * DAY, "until": NOW - 2 * HOUR}),
    (["--since", "2024-01-01", "--until", "2024-01-11"], {"since": 1704067200000, "until": 1704931200000}),
    (["--since", "2024-01-10T07:59:59Z"], {"since": 1704873599000}),
    # Absolute dates around now (a date, then a date-time with an offset): both sides again.
    (["--since", iso_ms(NOW - 2 * DAY)[:10], "--until", iso_ms(NOW - 5 * 60 * 1000)],
     {"since": (NOW - 2 * DAY) // DAY * DAY, "until": NOW - 5 * 60 * 1000}),
    (["--chat", "oc_a", "--sender", "ou_1", "--type", "text", "--since", "1w"],
     {"chat": "oc_a", "sender": "ou_1", "msg_type": "text", "since": NOW - 7 * DAY}),
]


def test_search_every_filter_on_both_sides(corpus):
    for options, filters in FILTERS:
        want = expected("测", **filters)
        got = found(search_json(corpus, "测", *options))
        assert got == want, options
        if "2024-01-01" not in options:  # that window holds delivered messages only
            assert {w for _, w in got} == {"target", "outbox (pending)"}, options
    # --limit keeps the newest N over both sides together.
    for limit in (1, 3, 5):
        want = expected("测", limit=limit)
        got = found(search_json(corpus, "测", "--limit", limit))
        assert got == want
    assert {w for _, w in expected("测", limit=3)} == {"target", "outbox (pending)"}
    # Absolute dates on the Feishu sample (2023-11-14T22:13:20Z) and the image placeholder.
    assert found(search_json(corpus, "超链接", "--since", "2023-11-14", "--until", "2023-11-15")) == \
        [("om_post_0001", "target")]
    assert found(search_json(corpus, "超链接", "--until", "2023-11-14")) == []
    assert found(search_json(corpus, "[image]", "--type", "image")) == [("om_image_0001", "target")]


def test_search_json_fields_and_human_table(corpus):
    data = search_json(corpus, "测试", "--chat", "oc_a")
    rows = {r["message_id"]: r for r in data["results"]}
    assert rows["d_zh"] == {"message_id": "d_zh", "chat_id": "oc_a", "sender_id": "ou_1", "msg_type": "text",
                            "text": "今天测试一下系统", "created_at": iso_ms(NOW - HOUR), "source": "api",
                            "where": "target", "edited_at": None, "recalled_at": None}
    assert rows["p_zh"]["where"] == "outbox (pending)"
    assert rows["p_zh"]["created_at"] == iso_ms(NOW - 10 * 60 * 1000)
    result = run_cli("search", "测试", "--outbox", corpus["outbox"], "--target", corpus["url"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["created", "(UTC)"]
    assert any("待发送的测试消息" in line and "outbox (pending)" in line for line in lines)
    assert any("今天测试一下系统" in line and "target" in line for line in lines)
    assert lines[-1] == f"{min(20, len(expected('测试')))} message(s)"
    # Not found: one plain sentence, exit 0.
    result = run_cli("search", "没有这个词", "--outbox", corpus["outbox"], "--target", corpus["url"])
    assert (result.exit_code, result.stdout) == (0, "no message contains '没有这个词'\n")


def test_search_bad_dates_and_empty_keyword_are_usage_errors(corpus):
    for args in (["x", "--since", "yesterday"], ["x", "--until", "7x"], [""]):
        result = run_cli("search", *args, "--outbox", corpus["outbox"], "--target", corpus["url"])
        assert result.exit_code == 2
        assert "Traceback" not in result.output


def test_search_with_target_down_still_finds_pending(corpus):
    """The outbox is local: an unreachable target costs a warning, not the undelivered messages."""
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/postgres?connect_timeout=2"
    result = run_cli("search", "测试", "--json", "--outbox", corpus["outbox"], "--target", dead_url)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["target_error"]
    assert found(data) == [(m, w) for m, w in expected("测试") if w != "target"]


def test_search_gives_the_same_answer_before_and_after_delivery(pg_url, tmp_outbox):
    """Whether a message is found must not depend on whether the relay has moved it yet:
    ASCII case is ignored on both sides (the target's ILIKE does; so must the outbox)."""
    target = open_target(pg_url)
    target.init_db()
    outbox = Outbox(tmp_outbox)
    try:
        outbox.put(flat_message("delivered", "Deploy DONE 测试", "oc_a", "ou_1", NOW - HOUR))
        Relay(outbox, target).drain()
        outbox.put(flat_message("pending", "Deploy DONE 测试", "oc_a", "ou_1", NOW - 2 * HOUR))
        for keyword in ("deploy done", "DEPLOY", "Done 测试"):
            result = search_messages(outbox, target, keyword)
            assert [r["message_id"] for r in result["results"]] == ["delivered", "pending"], keyword
    finally:
        outbox.close()
        target.close()


# -- search on 100,000 rows with pg_trgm ------------------------------------------------------------

NEEDLE_EVERY = 10_000


def bulk_fill(url, rows=100_000):
    """The table, rows generated inside the server, then init_db again for pg_trgm + the GIN index
    (as when a DBA adds the index to a full table; building it once is faster than maintaining it)."""
    target = open_target(url)
    target.init_db(trigram=False)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(
            "INSERT INTO feishu_messages (message_id, chat_id, sender_id, msg_type, text, created_at,"
            " source, received_at)"
            " SELECT 'bulk_' || g, 'oc_' || mod(g, 50), 'ou_' || mod(g, 200), 'text',"
            "  'message ' || g || ' 消息内容 ' || md5(g::text)"
            "   || CASE WHEN mod(g, %s) = 0 THEN ' zqxjneedle 罕见词语' ELSE '' END,"
            "  now() - g * interval '1 minute', 'api', now()"
            " FROM generate_series(1, %s) g", (NEEDLE_EVERY, rows))
        report = target.init_db()
        target.close()
        assert report["trigram"] == "created"
        cur.execute("ANALYZE feishu_messages")  # what autovacuum does to any real table
        print(f"\nbulk load of {rows} rows + init_db (pg_trgm, GIN index) + ANALYZE: "
              f"{time.perf_counter() - started:.2f} s")
        cur.execute("SHOW lc_ctype")
        ctype = cur.fetchone()[0]
    conn.close()
    return ctype


def explain(url, sql, params):
    return "\n".join(r[0] for r in pg_query(url, "EXPLAIN (ANALYZE) " + sql, params))


def timed_search(url, outbox_path, keyword):
    target = open_target(url)
    outbox = Outbox(outbox_path)
    try:
        started = time.perf_counter()
        result = search_messages(outbox, target, keyword, limit=20)
        elapsed = time.perf_counter() - started
        with target.transaction() as tx:  # the very statement search ran
            sql, params = search_query(target, tx, keyword, limit=21)
    finally:
        outbox.close()
        target.close()
    assert result["target_error"] is None
    return result, elapsed, explain(url, sql, params)


def uses_an_index(plan):
    """The text branch went through the n-gram index or pg_trgm's (the planner picks), never a scan."""
    return ("Bitmap Index Scan on feishu_messages_text_grams" in plan
            or "Bitmap Index Scan on feishu_messages_text_trgm" in plan) and "Seq Scan on feishu_messages " not in plan


def check_large_search(url, outbox_path):
    ctype = bulk_fill(url)
    needles = [f"bulk_{g}" for g in range(100_000, 0, -NEEDLE_EVERY)]  # newest (smallest g) last
    # ASCII, and Chinese of 4, 2 and 1 characters: every one through an index (issue 20: the n-gram
    # index needs no locale and no extension), whatever lc_ctype says of CJK.
    for keyword in ("zqxjneedle", "罕见词语", "罕见", "罕"):
        result, elapsed, plan = timed_search(url, outbox_path, keyword)
        print(f"lc_ctype={ctype}: search {keyword!r} on 100,000 rows: {elapsed * 1000:.1f} ms\n{plan}")
        assert [r["message_id"] for r in result["results"]] == needles[::-1]
        assert uses_an_index(plan), plan
    # A common word: newest first through the created_at index, LIMIT stops early.
    result, elapsed, _ = timed_search(url, outbox_path, "消息内容")
    print(f"lc_ctype={ctype}: search '消息内容' (every row): {elapsed * 1000:.1f} ms")
    assert [r["message_id"] for r in result["results"]] == [f"bulk_{g}" for g in range(1, 21)]
    # stats over the same table, through the CLI (connection set-up included).
    started = time.perf_counter()
    result = run_cli("stats", "--json", "--top", 3, "--outbox", outbox_path, "--target", url)
    elapsed = time.perf_counter() - started
    print(f"stats on 100,000 rows: {elapsed * 1000:.0f} ms")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["total"] == 100_000
    assert s["top_chats"] == [{"chat_id": c, "count": 2000} for c in ("oc_0", "oc_1", "oc_10")]
    assert s["top_senders"] == [{"sender_id": c, "count": 500} for c in ("ou_0", "ou_1", "ou_10")]
    assert s["by_type"] == [{"msg_type": "text", "count": 100_000}]
    assert sum(d["count"] for d in s["per_day"]) in range(6 * 1440, 7 * 1440 + 1)  # one row a minute


@pytest.mark.slow
def test_search_100k_rows_uses_trigram_index(pg_url, tmp_outbox):
    """The test cluster is initdb --locale=C: pg_trgm makes no CJK trigrams there, the n-gram index serves them."""
    check_large_search(pg_url, tmp_outbox)


@pytest.fixture
def utf8_ctype_url(pg_server):
    """A database whose lc_ctype is C.UTF-8, as on RDS (en_US.UTF-8 / zh_CN.UTF-8) for CJK classes."""
    name = f"t_utf8_ctype_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    for locale in ("C.UTF-8", "C.utf8"):
        try:
            pg_server.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"
                              f" LC_CTYPE '{locale}' LC_COLLATE 'C'")
            break
        except psycopg2.Error:
            continue
    else:
        unavailable("the test server has no C.UTF-8 locale")
    yield pg_server.url(name)
    pg_server.drop_database(name, force=True)


@pytest.mark.slow
def test_search_100k_rows_cjk_uses_trigram_index_with_utf8_ctype(utf8_ctype_url, tmp_outbox):
    check_large_search(utf8_ctype_url, tmp_outbox)


# -- stats ----------------------------------------------------------------------------------------------

def stats_corpus():
    """65 messages: skewed chats, tied senders, four types, spread over ~11 days, two old, one future."""
    out = []
    for i in range(60):
        chat = "oc_" + "01234"[sum(i >= b for b in (25, 40, 50, 56))]  # 25, 15, 10, 6, 4 messages
        sender = f"ou_{(i * 7) % 5}"                                      # 12 each: a five-way tie
        msg_type = {0: "post", 1: "image", 2: "file"}.get(i % 10, "text")
        at = NOW - int(i * 4.3 * HOUR)
        if msg_type == "post":
            out.append(post(f"s{i}", "周报", f"第{i}条", chat, sender, at))
        elif msg_type == "file":
            out.append({"message_id": f"s{i}", "chat_id": chat, "sender_id": sender, "msg_type": "file",
                        "content": json.dumps({"file_key": "k", "file_name": f"f{i}.pdf"}),
                        "create_time": str(at)})
        else:
            out.append(flat_message(f"s{i}", f"消息 {i}", chat, sender, at, msg_type))
    out.append(flat_message("s_old1", "旧", "oc_9", "ou_9", NOW - 400 * DAY))
    out.append(flat_message("s_old2", "旧", "oc_9", "ou_9", NOW - 401 * DAY))
    out.append(flat_message("s_future", "时钟快了", "oc_0", "ou_0", NOW + DAY))  # a sender with a fast clock
    return out


def top(values, key, n):
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return [{key: k, "count": c} for k, c in sorted(counts.items(), key=lambda kc: (-kc[1], kc[0]))][:n]


def test_stats_match_independent_counts(pg_url, tmp_outbox):
    payloads = stats_corpus()
    messages = [normalize(p) for p in payloads]
    target = open_target(pg_url)
    target.init_db()
    # the target refuses this one message: a real dead row
    pg_query(pg_url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_poison CHECK (text <> 'POISON')")
    outbox = Outbox(tmp_outbox)
    outbox.put_many(payloads + [flat_message("poison", "POISON", "oc_x", "ou_x", NOW)])
    totals = Relay(outbox, target, batch_size=20).drain()
    assert (totals["delivered"], totals["dead"]) == (len(payloads), 1)
    outbox.close()
    target.close()
    small = Outbox(tmp_outbox, max_pending=2)  # 5 more with room for 2: 2 pending + 3 parked
    small.put_many([flat_message(f"late{i}", "后来的", "oc_0", "ou_0", NOW) for i in range(5)])
    small.close()

    days, n_top = 12, 3
    result = run_cli("stats", "--json", "--days", days, "--top", n_top,
                     "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    today = dt.datetime.now(dt.timezone.utc).date()

    assert s["target_error"] is None
    assert s["total"] == len(messages)
    created = [m.created_at for m in messages]
    assert s["first_message"] == iso_ms(min(created))
    assert s["last_message"] == iso_ms(max(created))
    day_of = [dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date() for ms in created]
    want_days = [(today - dt.timedelta(days=k)) for k in range(days - 1, -1, -1)]
    assert s["per_day"] == [{"day": d.isoformat(), "count": day_of.count(d)} for d in want_days]
    assert sum(d["count"] for d in s["per_day"]) == len(messages) - 3  # not the old two, not the future one
    assert s["top_chats"] == top([m.chat_id for m in messages], "chat_id", n_top)
    assert s["top_chats"][0] == {"chat_id": "oc_0", "count": 26}
    assert s["top_senders"] == top([m.sender_id for m in messages], "sender_id", n_top)
    assert s["by_type"] == top([m.msg_type for m in messages], "msg_type", 100)
    assert s["relayed_last_hour"] == len(messages)

    # Outbox side, counted straight from the SQLite file.
    with sqlite3.connect(tmp_outbox) as db:
        states = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    assert s["outbox"]["counts"] == {"pending": 2, "delivered": len(messages), "parked": 3, "dead": 1}
    assert s["outbox"]["counts"] == {k: states.get(k, 0) for k in s["outbox"]["counts"]}
    assert 0 <= s["outbox"]["oldest_pending_age_s"] < 60
    assert s["outbox"]["delivered_last_hour"] == len(messages)
    c = s["connections"]
    assert c["pool_size"] == 2 and c["relay_connections"] >= 1
    assert c["max_connections"] >= c["connections_in_use"] >= c["relay_connections"]

    # The human form shows the same numbers.
    result = run_cli("stats", "--days", days, "--top", n_top, "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0
    text = result.stdout
    assert f": {len(messages)} messages (" in text
    assert f"pending 2, delivered {len(messages)}, parked 3, dead 1" in text
    assert "oc_0" in text and today.isoformat() in text


def test_stats_on_an_empty_table(pg_url, tmp_outbox):
    t = open_target(pg_url)
    t.init_db()
    t.close()
    Outbox(tmp_outbox).close()
    result = run_cli("stats", "--json", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["total"], s["first_message"], s["top_chats"], s["by_type"]) == (0, None, [], [])
    assert [d["count"] for d in s["per_day"]] == [0] * 7
    assert s["outbox"]["counts"] == {"pending": 0, "delivered": 0, "parked": 0, "dead": 0}
    assert s["outbox"]["oldest_pending_age_s"] is None
