"""Progress where a person waits: a bar with rate and ETA on a terminal (a real pty), nothing on a
pipe; and `replay --wait`, whose bar follows the requeued rows until the running relay has
delivered them."""

import os
import pty
import select
import sqlite3
import subprocess

from outbox_relay.outbox import Outbox

from cliutil import EXE, run_cli, run_exe
from factories import flat_message
from relayutil import wait_until
from serviceutil import outbox_ids, post, running_service

REFUSE_BANNED = ("CREATE TRIGGER refuse_banned BEFORE INSERT ON feishu_messages WHEN NEW.chat_id = 'oc_banned'"
                 " BEGIN SELECT RAISE(ABORT, 'chat oc_banned is refused'); END")


def on_a_terminal(*args, timeout=60):
    """The installed script with stdout and stderr on a pty: (exit code, everything it drew)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    env.update(TERM="xterm-256color", COLUMNS="120")
    master, slave = pty.openpty()
    proc = subprocess.Popen([EXE, *map(str, args)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("no output and no exit within the timeout: " + b"".join(chunks).decode())
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")


def _dead_rows(s, archive, n):
    """n rows the archive refuses (a trigger), made dead by the running relay."""
    with sqlite3.connect(archive) as db:
        db.execute(REFUSE_BANNED)
    for i in range(n):
        assert post(s.url, flat_message(f"om_banned_{i}") | {"chat_id": "oc_banned"}).status == 200
    wait_until(lambda: list(outbox_ids(s.cfg.outbox).values()).count("dead") == n, timeout=15, what="dead rows")


def test_replay_wait_follows_the_rows_until_delivered_or_refused_again(tmp_path):
    archive = tmp_path / "archive.db"
    with running_service(tmp_path) as s:
        wait_until(lambda: archive.exists() and outbox_ids(s.cfg.outbox) is not None, timeout=10, what="started")
        assert post(s.url, flat_message("om_first")).status == 200  # the table exists once one row went in
        wait_until(lambda: outbox_ids(s.cfg.outbox).get("om_first") == "delivered", timeout=10, what="delivered")
        _dead_rows(s, archive, 3)
        common = ["--outbox", s.cfg.outbox, "--target", s.cfg.target]

        still_refused = run_cli("replay", "--all", "--wait", "--timeout", "20", *common)
        assert still_refused.exit_code == 1
        assert "3 requeued; 0 delivered, 3 refused again, 0 still waiting" in still_refused.output
        assert "3 row(s) refused again by the target: see `outbox-relay dead`" in still_refused.output

        with sqlite3.connect(archive) as db:  # the cause fixed
            db.execute("DROP TRIGGER refuse_banned")
        some = run_cli("replay", "om_banned_0", "om_nothing", "--wait", *common)
        assert "1 requeued; 1 delivered, 0 refused again, 0 still waiting" in some.output
        assert some.exit_code == 1 and "1 of the 2 given ids matched no dead row" in some.output
        rest = run_cli("replay", "--all", "--wait", *common)
        assert rest.exit_code == 0, rest.output
        assert "2 requeued; 2 delivered, 0 refused again, 0 still waiting" in rest.output
        assert set(outbox_ids(s.cfg.outbox).values()) == {"delivered"}


def test_replay_wait_without_a_relay_says_so_and_changes_nothing(tmp_path, hermetic):
    with Outbox(tmp_path / "outbox.db") as outbox:
        row = outbox.put(flat_message("om_dead"))
        outbox.mark_dead(row.id, "refused")
    result = run_cli("replay", "--all", "--wait", "--outbox", tmp_path / "outbox.db")
    assert result.exit_code == 1 and "no relay is running for this outbox" in result.output
    assert outbox_ids(str(tmp_path / "outbox.db")) == {"om_dead": "dead"}
    assert run_cli("replay", "--all", "--timeout", "3", "--outbox", tmp_path / "outbox.db").exit_code == 2


def test_replay_wait_draws_a_bar_on_a_terminal_and_nothing_on_a_pipe(tmp_path):
    archive = tmp_path / "archive.db"
    with running_service(tmp_path) as s:
        assert post(s.url, flat_message("om_first")).status == 200
        wait_until(lambda: outbox_ids(s.cfg.outbox).get("om_first") == "delivered", timeout=10, what="delivered")
        _dead_rows(s, archive, 4)
        with sqlite3.connect(archive) as db:
            db.execute("DROP TRIGGER refuse_banned")
        common = ["--outbox", s.cfg.outbox, "--target", s.cfg.target]
        code, drawn = on_a_terminal("replay", "om_banned_0", "om_banned_1", "--wait", *common)
        assert code == 0, drawn
        assert "delivering the requeued rows" in drawn and "2/2" in drawn and "\x1b[" in drawn
        piped = run_exe("replay", "--all", "--wait", *common)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout.strip() == "2 requeued; 2 delivered, 0 refused again, 0 still waiting"
        assert "delivering" not in piped.stderr and "\x1b[" not in piped.stderr


def test_sync_draws_a_bar_with_rate_on_a_terminal_and_nothing_on_a_pipe(tmp_path):
    outbox = tmp_path / "outbox.db"
    common = ["--outbox", outbox, "--target", f"sqlite:///{tmp_path / 'archive.db'}", "--batch-size", "100"]
    with Outbox(outbox) as box:
        box.put_many([flat_message(f"om_{i}") for i in range(500)])
    code, drawn = on_a_terminal("sync", *common)
    assert code == 0, drawn
    assert "syncing" in drawn and "500/500" in drawn and "/s" in drawn
    with Outbox(outbox) as box:
        box.put_many([flat_message(f"om_more_{i}") for i in range(300)])
    piped = run_exe("sync", *common)
    assert piped.returncode == 0 and "syncing" not in piped.stderr and "\x1b[" not in piped.stderr
