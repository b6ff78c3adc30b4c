"""Issue 9: the outbox file's own faults, made real on real processes and files: the file deleted
or replaced under `run`, pages overwritten with garbage, a full disk (tmpfs), a read-only
directory (root without CAP_DAC_OVERRIDE), a disk that never got its space back; and the
operator-facing mistakes around them (a symlinked outbox, a port in use, a password in a URL)."""

import contextlib
import glob
import json
import os
import socket
import sqlite3
import subprocess

import pytest

from outbox_relay.outbox import Outbox
from outbox_relay.outbox.siblings import Siblings
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from cliutil import EXE, clean_env, run_exe, without_dac_override
from factories import flat
from relayutil import pg_query, put_all, row_stats
from serverproc import wait_until
from serviceutil import health, post, scrape, service_process
from skiputil import unavailable


def archive_ids(tmp_path):
    conn = sqlite3.connect(tmp_path / "archive.db")
    try:
        return [r[0] for r in conn.execute("SELECT message_id FROM feishu_messages")]
    finally:
        conn.close()


def post_all(url, prefix, n):
    """POST n messages; -> the ids answered 200 (acknowledged), and every status seen."""
    acked, statuses = [], []
    for i in range(n):
        message = flat(i, prefix=prefix)
        r = post(url, message)
        statuses.append(r.status)
        if r.status == 200:
            acked.append(message["message_id"])
    return acked, statuses


def kept_copies(path):
    """The full copies written beside a replaced outbox (not the old -wal/-shm moved with them)."""
    return [f for f in glob.glob(path + ".orphan-*") if not f.endswith(("-wal", "-shm"))]


def remove_outbox(path):
    """What `rm data/outbox.db*` does."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


# -- 1. the file deleted or replaced under a running service ---------------------------------------


def test_outbox_deleted_under_run_loses_no_acknowledged_message(tmp_path):
    with service_process(tmp_path) as p:
        before, _ = post_all(p.url, "before", 30)
        wait_until(lambda: len(archive_ids(tmp_path)) == 30, timeout=20, what="the first 30 delivered")
        more, _ = post_all(p.url, "pending", 20)
        remove_outbox(p.outbox)
        after, statuses = post_all(p.url, "after", 30)
        assert statuses == [200] * 30  # each answered only once committed in the file at the path
        acked = before + more + after
        wait_until(lambda: sorted(archive_ids(tmp_path)) == sorted(acked), timeout=30,
                   what="every acknowledged message in the archive")
        h = health(p.url)
        assert h.status == 200 and h.json()["status"] == "degraded", h
        assert "deleted or moved away" in " ".join(h.json()["reasons"])
        assert len(kept_copies(p.outbox)) == 1 and os.path.exists(p.outbox)
        assert p.stop() == 0
        assert "deleted or moved away while in use" in p.log()
    ids = archive_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 80


def test_outbox_replaced_by_another_outbox_under_run_keeps_both(tmp_path, private_pg):
    """The messages waiting in the old file (the target is down) and the ones the new file brought
    with it all arrive, exactly once."""
    url = private_pg.url()
    other = str(tmp_path / "restored.db")
    with Outbox(other) as box:
        put_all(box, [flat(i, prefix="restored") for i in range(10)])
    with service_process(tmp_path, target=url, connect_timeout=2) as p:
        wait_until(lambda: health(p.url).status == 200, timeout=20, what="healthy")
        private_pg.stop(mode="immediate")
        waiting, _ = post_all(p.url, "waiting", 40)
        os.replace(other, p.outbox)
        later, statuses = post_all(p.url, "later", 10)
        assert statuses == [200] * 10 and len(waiting) == 40
        private_pg.start()
        expected = sorted(waiting + later + [f"restored_{i:06d}" for i in range(10)])
        wait_until(lambda: row_stats(url) == (60, 60), timeout=60, what="all 60 in PostgreSQL")
        assert sorted(r[0] for r in pg_query(url, "SELECT message_id FROM feishu_messages")) == expected
        assert p.stop() == 0


def test_outbox_replaced_by_a_file_that_is_not_an_outbox_refuses_and_keeps_everything(tmp_path):
    with service_process(tmp_path, target="postgresql://u@127.0.0.1:1/x", connect_timeout=1) as p:
        acked, _ = post_all(p.url, "acked", 20)  # the target never answers: all stay pending
        stranger = sqlite3.connect(tmp_path / "stranger.db")
        stranger.execute("CREATE TABLE notes (body text)")
        stranger.commit()
        stranger.close()
        os.replace(tmp_path / "stranger.db", p.outbox)
        r = post(p.url, flat(99, prefix="refused"))
        assert r.status == 503 and "not an outbox" in r.json()["error"], r
        h = health(p.url)
        assert h.status == 503 and "not an outbox" in " ".join(h.json()["reasons"])
        (kept,) = kept_copies(p.outbox)
        conn = sqlite3.connect(kept)
        # The refused message had been committed into the old file before the change was noticed: it
        # is kept too (and the sender, answered 503, sends it again).
        kept_ids = sorted(r[0] for r in conn.execute("SELECT message_id FROM outbox"))
        assert kept_ids == sorted(acked + ["refused_000099"])
        conn.close()
        assert sqlite3.connect(p.outbox).execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]


# -- 2. space given back ------------------------------------------------------------------------


def outbox_bytes(path):
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def test_space_is_given_back_after_a_backlog_drains(tmp_path):
    """After a backlog drains, the file and its WAL are within 2x of what 2,000 rows need (the
    issue's 1,000,000-row figure is measured by `make bench`; 40,000 here)."""
    payloads = [flat(i, text="backlog message " * 20) for i in range(40_000)]
    reference = str(tmp_path / "reference.db")
    with Outbox(reference) as box:
        put_all(box, payloads[:2000])
        box.file.checkpoint()
    need = outbox_bytes(reference)
    path, target = str(tmp_path / "outbox.db"), open_target(f"sqlite:///{tmp_path / 'archive.db'}")
    with Outbox(path) as box:
        put_all(box, payloads)
        grown = outbox_bytes(path)
        assert Relay(box, target, batch_size=1000).drain()["delivered"] == 40_000
        assert box.counts()["delivered"] == 1000
        drained = outbox_bytes(path)
    target.close()
    assert grown > 10 * need  # the backlog really took space …
    assert drained <= 2 * need, (drained, need)  # … and it was given back


def test_status_and_metrics_show_the_file_and_wal_sizes(tmp_path):
    with service_process(tmp_path) as p:
        post_all(p.url, "size", 5)
        samples = scrape(p.url)
        assert samples[("outbox_relay_outbox_bytes", (("file", "db"),))] > 0
        assert ("outbox_relay_outbox_bytes", (("file", "wal"),)) in samples
        assert samples[("outbox_relay_outbox_disk_free_bytes", ())] > 0
        result = run_exe("status", "--no-target", "--json", "--outbox", p.outbox)
        report = json.loads(result.stdout)["outbox"]
        assert report["file"] == os.path.getsize(p.outbox) and report["free_bytes"] > 0
        assert "WAL" in run_exe("status", "--no-target", "--outbox", p.outbox).stdout


# -- 3. a damaged file --------------------------------------------------------------------------


def overwrite_pages(path, first, count, page=4096):
    with open(path, "r+b") as f:
        f.seek(first * page)
        f.write(os.urandom(count * page))
        f.flush()
        os.fsync(f.fileno())


def test_a_damaged_outbox_is_reported_down_and_recover_keeps_every_readable_row(tmp_path, private_pg):
    url = private_pg.url()
    private_pg.stop(mode="immediate")  # everything stays in the outbox
    with service_process(tmp_path, target=url, connect_timeout=1, check_interval=1) as p:
        acked, _ = post_all(p.url, "msg", 400)
        assert len(acked) == 400
        checkpoint = sqlite3.connect(p.outbox)
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpoint.close()
        pages = os.path.getsize(p.outbox) // 4096
        overwrite_pages(p.outbox, pages // 2, 3)
        h = wait_until(lambda: (lambda h: h.status == 503 and h)(health(p.url)), timeout=20,
                       what="/healthz to report the damage")
        assert "damaged" in " ".join(h.json()["reasons"]) and "outbox-relay recover" in h.body.decode()
        r = post(p.url, flat(1000, prefix="refused"))
        assert r.status == 503 and "damaged" in r.json()["error"]
        result = run_exe("health", "--outbox", p.outbox, "--target", url, "--connect-timeout", 1)
        assert result.returncode == 2 and result.stdout.startswith("DOWN: ") and "damaged" in result.stdout
        wait_until(lambda: "outbox problem, the relay waits" in p.log(), timeout=40,
                   what="the relay to name the outbox (not the target) as its problem")
        assert "target unavailable, messages stay in the outbox: outbox" not in p.log()
        assert p.stop() == 0
    result = run_exe("recover", "--outbox", p.outbox, "--json")
    assert result.returncode in (0, 1), result
    report = json.loads(result.stdout)
    unreadable = sum(b - a + 1 for a, b in report["unreadable_ids"])
    assert report["recovered"] + unreadable == 400
    assert os.path.exists(report["damaged_copy"]) and report["recovered"] >= 300
    private_pg.start()
    synced = run_exe("sync", "--outbox", p.outbox, "--target", url, "--timeout", 60)
    assert synced.returncode == 0, synced
    stored = {r[0] for r in pg_query(url, "SELECT message_id FROM feishu_messages")}
    assert len(stored) == report["recovered"] and stored <= set(acked)


def test_recover_leaves_an_intact_outbox_alone(tmp_path):
    path = str(tmp_path / "outbox.db")
    with Outbox(path) as box:
        box.put(flat(1))
    result = run_exe("recover", "--outbox", path)
    assert result.returncode == 0 and "intact" in result.stdout
    assert not glob.glob(path + ".damaged-*")



def test_recover_reads_an_outbox_whose_directory_name_looks_like_uri_syntax(tmp_path):
    # SQLite opens these files by URI: '#', '?' and '%' in a directory name are names, not syntax.
    folder = tmp_path / "a#b?c%41 d"
    folder.mkdir()
    path = str(folder / "outbox.db")
    with Outbox(path) as box:
        box.put_many([flat(i) for i in range(3)])
    result = run_exe("recover", "--outbox", path, "--force", "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert (report["recovered"], report["unreadable_ids"]) == (3, [])
    assert report["damaged_copy"].startswith(str(folder))
    with Outbox(path) as box:
        assert box.counts()["pending"] == 3

# -- 4. a full disk, a read-only directory ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs for a full disk: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_reading_commands_work_on_a_full_disk_and_puts_say_it_is_full(small_disk):
    path = str(small_disk / "outbox.db")
    n = 0
    with Outbox(path) as box:
        with pytest.raises(Exception) as full:
            while True:
                box.put(flat(n, text="fill the disk " * 60))
                n += 1
    assert "disk is full" in str(full.value)
    with open(small_disk / "ballast", "wb", buffering=0) as f:  # whatever closing the outbox gave back
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    # A put may still fit into WAL space a failed write had allocated: stored is stored. Then it is full.
    for _ in range(50):
        put = subprocess.run([EXE, "put", "--outbox", path], input=json.dumps(flat(n)), capture_output=True,
                             text=True)
        if put.returncode != 0:
            break
        n += 1
    assert put.returncode == 1 and "disk is full" in put.stderr, put
    assert len(put.stderr.strip().splitlines()) == 1 and "Traceback" not in put.stderr
    status = run_exe("status", "--no-target", "--json", "--outbox", path)
    assert status.returncode == 0, status
    report = json.loads(status.stdout)["outbox"]
    assert report["counts"]["pending"] + report["counts"]["parked"] == n and report["free_bytes"] < 4096
    assert run_exe("dead", "--outbox", path).returncode == 0


def test_a_read_only_directory_and_a_read_only_file_are_named_as_such(tmp_path):
    data = tmp_path / "data"
    path = str(data / "outbox.db")
    with Outbox(path) as box:
        put_all(box, [flat(i) for i in range(5)])
    os.chmod(data, 0o555)
    try:
        status = without_dac_override("status", "--no-target", "--json", "--outbox", path)
        assert status.returncode == 0, status
        assert json.loads(status.stdout)["outbox"]["counts"]["pending"] == 5
        dead = without_dac_override("dead", "--outbox", path)
        assert dead.returncode == 0 and "no dead rows" in dead.stdout
        put = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", EXE, "put",
                              "--outbox", path], input=json.dumps(flat(9)), capture_output=True, text=True)
        assert put.returncode == 1 and f"its directory {data} is not writable" in put.stderr, put.stderr
    finally:
        os.chmod(data, 0o755)
    os.chmod(path, 0o444)
    put = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", EXE, "put",
                          "--outbox", path], input=json.dumps(flat(9)), capture_output=True, text=True)
    assert put.returncode == 1 and "the file is read-only" in put.stderr, put.stderr


# -- 6-8. a password in a URL, a symlinked outbox, a port in use -------------------------------------


@pytest.mark.parametrize("password", ["s3cret#pw", "s3cret/pw", "s3cret?pw", "s3c@ret"])
def test_a_password_never_shows_whatever_it_holds(password):
    """Generated passwords hold # / ? @. The first three end the URL's authority early, so the URL
    does not parse (exit 2, and the error says to percent-encode); an @ parses (the last one counts)
    and the connection fails (exit 1). Neither line may show any part of the password."""
    result = run_exe("check", "--target", f"postgresql://relay:{password}@127.0.0.1:1/feishu",
                     "--connect-timeout", 1)
    assert "s3c" not in result.stdout + result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1
    if "@" in password:
        assert result.returncode == 1 and "127.0.0.1" in result.stderr
    else:
        assert result.returncode == 2 and "percent-encoded" in result.stderr, result


def test_one_relay_per_file_even_through_a_symlink(spawn, tmp_path):
    path = str(tmp_path / "outbox.db")
    Outbox(path).close()
    os.symlink(path, tmp_path / "alias.db")
    first = spawn("first", ["run", "--no-http"], outbox=path, target=f"sqlite:///{tmp_path / 'a.db'}")
    wait_until(lambda: os.path.exists(path + ".lock") and "relay started" in first.output(), timeout=20,
               what="the first relay")
    second = spawn("second", ["run", "--no-http"], outbox=str(tmp_path / "alias.db"),
                   target=f"sqlite:///{tmp_path / 'a.db'}")
    assert second.wait(20) != 0 and "another relay" in second.output()
    assert first.alive()


def test_a_symlinked_outbox_keeps_every_file_beside_the_real_file(tmp_path):
    """One rule for the lock, the damage marker and the copies: the real path. A damaged outbox reached
    through a symlink is marked beside the file that is damaged, where `status` through either name
    (and `recover`) look."""
    (tmp_path / "real").mkdir()
    real = str(tmp_path / "real" / "outbox.db")
    Outbox(real).close()
    link = str(tmp_path / "link.db")
    os.symlink(real, link)
    via_link, direct = Siblings(link), Siblings(real)
    assert via_link.lock == direct.lock == real + ".lock"
    assert via_link.damage_marker == direct.damage_marker == real + ".damaged"
    assert via_link.damaged_copy().startswith(real + ".damaged-")
    assert via_link.orphan_copy().startswith(real + ".orphan-")
    with Outbox(link) as outbox:
        assert outbox.file.damage_marker == real + ".damaged"


def test_run_on_a_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([EXE, "run", "--http", f"127.0.0.1:{port}", "--outbox", tmp_path / "o.db",
                                 "--target", f"sqlite:///{tmp_path / 'a.db'}"], capture_output=True, text=True,
                                timeout=30, env=clean_env())
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: cannot listen on 127.0.0.1:{port} (--http / OUTBOX_RELAY_HTTP): Address already"
                      " in use — is another outbox-relay running there?"]
    assert "Traceback" not in result.stderr and "relay started" not in result.stderr



def test_recover_refuses_what_is_not_an_outbox_and_changes_nothing(tmp_path, hermetic):
    text, archive = tmp_path / "notes.db", tmp_path / "archive.db"
    text.write_text("not a database at all\n")
    conn = sqlite3.connect(archive)
    conn.execute("CREATE TABLE feishu_messages (message_id text)")
    conn.commit()
    conn.close()
    for path, why in ((text, "is not a SQLite database"), (archive, "is a SQLite database but not an outbox")):
        before = sorted(os.listdir(tmp_path))
        result = run_exe("recover", "--outbox", path, "--force")
        assert result.returncode == 1 and why in result.stderr and "Traceback" not in result.stderr, result
        assert sorted(os.listdir(tmp_path)) == before  # nothing moved aside, nothing created
    missing = run_exe("recover", "--outbox", tmp_path / "nowhere" / "outbox.db")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    status = run_exe("status", "--no-target", "--outbox", archive)
    assert status.returncode == 1 and "is a SQLite database but not an outbox" in status.stderr, status


def test_reading_commands_create_no_lock_file(tmp_path):
    path = str(tmp_path / "outbox.db")
    with Outbox(path) as box:
        box.put(flat(1))
    for command in (["status", "--no-target"], ["health", "--target", f"sqlite:///{tmp_path}/a.db"],
                    ["top", "--once"]):
        run_exe(*command, "--outbox", path)
    assert not os.path.exists(path + ".lock")
