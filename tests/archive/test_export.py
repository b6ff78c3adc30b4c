"""Issue 22, export: the archive as JSON lines that `put` reads back into another archive (the same rows),
and as CSV that Python's csv module (and Excel) reads, Chinese and line breaks kept; in constant memory
(the 1,000,000-row figure is in `make bench`; here 40,000 rows, against the same bound)."""

import csv
import json
import subprocess
import sys
import uuid

import pytest

from cliutil import clean_env
from factories import feishu_edit, feishu_message, feishu_reaction, feishu_recall, flat, sample
from relayutil import pg_query, relay_cmd

# Every column a relay writes from the message itself: what must be equal after a round trip. Not what
# the relay stamps on its way in (received_at, relayed_at, outbox_host, outbox_id).
SAME = ("message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id", "sender_id", "sender_type",
        "msg_type", "content", "text", "mentions", "created_at", "source", "raw", "edited_at", "recalled_at",
        "recall_type", "original_text", "original_content")
SAME_EVENTS = ("event_id", "message_id", "kind", "fact", "happened_at", "chat_id", "operator_id", "operator_type",
               "msg_type", "content", "text", "mentions", "emoji", "recall_type", "source", "raw")
T0 = 1_780_000_000_000


@pytest.fixture
def second_pg_url(pg_server):
    name = pg_server.create_database(f"t_export_copy_{uuid.uuid4().hex[:8]}")
    yield pg_server.url(name)
    pg_server.drop_database(name, force=True)


def archive_of(payloads, invoke, tmp_path, url, name):
    """An archive at url holding payloads, delivered through an outbox and `sync`."""
    src = tmp_path / f"{name}.jsonl"
    src.write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in payloads) + "\n", encoding="utf-8")
    outbox = tmp_path / f"{name}.db"
    assert invoke("put", src, "--outbox", outbox).exit_code == 0
    result = invoke("sync", "--outbox", outbox, "--target", url)
    assert result.exit_code == 0, result.output


def mixed_payloads():
    """Messages of every way in, Chinese and line breaks, an edited, a recalled and a reacted one."""
    hook = sample("openclaw_message_received.json")
    payloads = [
        feishu_message("om_zh", "你好，世界\n第二行, with \"quotes\" and a comma", T0),
        feishu_message("om_edited", "原来的话", T0 + 1000),
        feishu_edit("om_edited", "ev_edit_1", "改过的话\r\n两行", T0 + 5000),
        feishu_edit("om_edited", "ev_edit_0", "第一次改", T0 + 3000),
        feishu_message("om_recalled", "撤回的", T0 + 2000),
        feishu_recall("om_recalled", "ev_recall", T0 + 9000),
        feishu_reaction("om_zh", "ev_like", T0 + 4000),
        feishu_reaction("om_zh", "ev_unlike", T0 + 6000, added=False),
        hook,
        sample("v2_post.json"),
        sample("v1_text.json"),
    ]
    payloads += [flat(i, text=f"第{i}条\n消息") for i in range(20)]
    payloads.append(flat(99, create_time="0"))  # 1970
    return payloads


def table_rows(url, table, columns, key):
    return pg_query(url, f"SELECT {', '.join(columns)} FROM {table} ORDER BY {key}")


def test_jsonl_put_into_a_fresh_archive_gives_the_same_rows(invoke, tmp_path, pg_url, second_pg_url):
    archive_of(mixed_payloads(), invoke, tmp_path, pg_url, "first")
    out = tmp_path / "export.jsonl"
    result = invoke("export", "--target", pg_url, "--format", "jsonl", "--output", out)
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    messages = table_rows(pg_url, "feishu_messages", SAME, "message_id")
    assert len(lines) == len(messages) == 27
    edited = next(json.loads(line) for line in lines if '"om_edited"' in line)
    assert [e["event_id"] for e in edited["history"]] == ["ev_edit_0", "ev_edit_1"]  # Feishu's order

    result = invoke("put", out, "--outbox", tmp_path / "copy.db")
    assert result.exit_code == 0, result.output
    assert invoke("sync", "--outbox", tmp_path / "copy.db", "--target", second_pg_url).exit_code == 0

    assert table_rows(second_pg_url, "feishu_messages", SAME, "message_id") == messages
    events = table_rows(pg_url, "feishu_message_events", SAME_EVENTS, "event_id")
    assert len(events) == 5
    assert table_rows(second_pg_url, "feishu_message_events", SAME_EVENTS, "event_id") == events
    row = dict(zip(SAME, next(r for r in messages if r[0] == "om_edited")))
    assert (row["text"], row["original_text"]) == ("改过的话\r\n两行", "原来的话")


def test_csv_parses_with_the_csv_module_and_keeps_chinese_and_line_breaks(invoke, tmp_path, pg_url):
    archive_of(mixed_payloads(), invoke, tmp_path, pg_url, "first")
    out = tmp_path / "export.csv"
    result = invoke("export", "--target", pg_url, "--format", "csv", "--bom", "--output", out,
                    "--since", "2020-01-01")
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith("\ufeff".encode())  # Excel reads UTF-8 only with it
    with open(out, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = {m: t for m, t in pg_query(pg_url, "SELECT message_id, text FROM feishu_messages"
                                               " WHERE created_at >= '2020-01-01'")}
    assert {r["message_id"]: r["text"] for r in rows} == texts  # the 1970 message is before --since
    zh = next(r for r in rows if r["message_id"] == "om_zh")
    assert zh["text"] == "你好，世界\n第二行, with \"quotes\" and a comma"
    assert [e["kind"] for e in json.loads(zh["history"])] == ["reaction_added", "reaction_removed"]
    edited = next(r for r in rows if r["message_id"] == "om_edited")
    assert edited["text"] == "改过的话\r\n两行" and edited["original_text"] == "原来的话"


def test_filters_and_an_archive_without_the_events_table(invoke, tmp_path, pg_url):
    archive_of([flat(i) for i in range(30)], invoke, tmp_path, pg_url, "first")
    pg_query(pg_url, "DROP TABLE feishu_message_events")
    result = invoke("export", "--target", pg_url, "--format", "jsonl", "--chat", "oc_chat_1", "--chat", "oc_chat_2",
                    "--sender", "ou_user_1", "--sender", "ou_user_2", "--sender", "ou_user_3")
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["archived"]["message_id"] for line in result.stdout.splitlines()]
    want = [f"om_{i:06d}" for i in range(30) if i % 7 in (1, 2) and i % 11 in (1, 2, 3)]
    assert got == want and got
    assert "without history" in result.stderr


def test_a_bad_range_is_one_line(invoke, tmp_path, pg_url):
    result = invoke("export", "--target", pg_url, "--format", "csv", "--since", "next tuesday")
    assert result.exit_code == 2 and "--since" in result.output
    assert not list(tmp_path.glob("*.partial"))


def test_export_memory_stays_flat(tmp_path, pg_url):
    """40,000 rows of 1 KB made inside PostgreSQL, exported by a child process: its peak RSS stays under
    the issue's bound for 1,000,000 rows (bench/ measures that size), which only a stream can."""
    invoke_init = subprocess.run(relay_cmd() + ["init-db", "--target", pg_url], env=clean_env(), capture_output=True)
    assert invoke_init.returncode == 0, invoke_init.stderr
    pg_query(pg_url, generate_sql(40_000))
    out = tmp_path / "big.jsonl"
    peak_kb = peak_rss_kb(relay_cmd() + ["export", "--target", pg_url, "--format", "jsonl", "--output", str(out)])
    assert peak_kb < 100 * 1024, f"peak RSS {peak_kb} KB"
    assert sum(1 for _ in open(out, encoding="utf-8")) == 40_000


def peak_rss_kb(command):
    """The peak RSS (KB) of `command`, read by a fresh Python whose only child it is (RUSAGE_CHILDREN of
    this process would be the largest child any earlier test waited for)."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True);"
             " sys.stderr.write(p.stderr.decode()); sys.exit(p.returncode) if p.returncode else"
             " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, *command], env=clean_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def generate_sql(n, table="feishu_messages", months=1, words=150):
    """INSERT of n messages made by PostgreSQL itself (generate_series: fast), `words` times 消息 each
    (150: about 1 KB a message with its content), spread over `months` months before 2026-12-01."""
    return (f"INSERT INTO {table} (message_id, chat_id, sender_id, msg_type, content, text, created_at, source,"
            " received_at) SELECT 'om_gen_' || lpad(i::text, 9, '0'), 'oc_gen_' || (i % 50), 'ou_gen_' || (i % 300),"
            f" 'text', jsonb_build_object('text', repeat('消息', {words})), repeat('消息', {words}) || i,"
            f" timestamptz '2026-12-01' - (i::float / {n} * {months}) * interval '30 days', 'feishu.v2', now()"
            f" FROM generate_series(1, {n}) AS i")


def test_a_bad_exported_line_is_refused_naming_it(invoke, tmp_path):
    bad = {"archived": {"message_id": "om_1", "source": "feishu.v2", "created_at": "2026-01-01T00:00:00+00:00"},
           "history": [{"event_id": "ev_1", "kind": "exploded", "source": "feishu.v2"}]}
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"archived": {"message_id": "om_0", "source": "api"}}) + "\n" + json.dumps(bad) + "\n")
    result = invoke("put", src, "--outbox", tmp_path / "o.db")
    assert result.exit_code == 1
    assert "line 2: history[0].kind must be one of" in result.output


def test_output_to_a_device_writes_it_and_leaves_it_a_device(invoke, tmp_path, pg_url):
    """--output /dev/null (or a FIFO) is written as it is: renaming a finished file over it would replace
    the device with a regular file."""
    import os
    import stat
    archive_of([flat(i) for i in range(3)], invoke, tmp_path, pg_url, "first")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, encoding="utf-8").read()))
    reader.start()
    result = invoke("export", "--target", pg_url, "--format", "jsonl", "--output", fifo)
    reader.join(10)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and len(got[0].splitlines()) == 3


def comparable(path):
    """An export's lines without what each relay stamps on its way in."""
    out = []
    for line in open(path, encoding="utf-8"):
        data = json.loads(line)
        for stamp in ("received_at", "relayed_at"):
            data["archived"].pop(stamp)
        out.append(data)
    return out


def test_jsonl_from_mariadb_into_a_sqlite_archive_exports_the_same(invoke, tmp_path, maria_url):
    """MySQL's unbuffered cursor and SQLite's: an export, put into another archive of another database,
    exports the same lines."""
    archive_of(mixed_payloads(), invoke, tmp_path, maria_url, "first")
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert invoke("export", "--target", maria_url, "--format", "jsonl", "-o", first).exit_code == 0
    copy = f"sqlite:///{tmp_path}/copy.db"
    assert invoke("put", first, "--outbox", tmp_path / "copy-outbox.db").exit_code == 0
    assert invoke("sync", "--outbox", tmp_path / "copy-outbox.db", "--target", copy).exit_code == 0
    assert invoke("export", "--target", copy, "--format", "jsonl", "-o", second).exit_code == 0
    lines = comparable(first)
    assert len(lines) == 27 and sum(len(x["history"]) for x in lines) == 5
    assert comparable(second) == lines


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path, pg_url):
    """`outbox-relay export … | head -1`: exit 0, no traceback, the connection given back."""
    assert subprocess.run(relay_cmd() + ["init-db", "--target", pg_url], env=clean_env()).returncode == 0
    pg_query(pg_url, generate_sql(20_000))
    proc = subprocess.Popen(relay_cmd() + ["export", "--target", pg_url, "--format", "jsonl"], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["archived"]["message_id"]
    proc.stdout.close()
    assert proc.wait(60) == 0
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()
