"""`outbox-relay openclaw install-hook` and where `backfill openclaw` looks (issue 23): the hooks
directory is made when missing (a `cp -r` onto a missing one made hooks/ the hook itself), the
state directory is OpenClaw's own (OPENCLAW_STATE_DIR, OPENCLAW_HOME, ~), the .env lines say the
spool and never a secret. Installing it into a real gateway and seeing `openclaw hooks list` say
ready is tests/intake/test_openclaw_gateway.py."""

import filecmp
import os

import pytest

from cliutil import run_exe
from serverproc import REPO

HOOK = os.path.join(REPO, "integrations", "openclaw", "outbox-relay")


def installed_as_shipped(directory):
    return all(filecmp.cmp(os.path.join(HOOK, f), os.path.join(directory, f), shallow=False)
               for f in ("HOOK.md", "handler.js", "package.json"))


@pytest.mark.parametrize("where", ["home", "openclaw_home", "state_dir", "dir"])
def test_install_hook_makes_the_hooks_directory_where_openclaw_looks(tmp_path, where):
    home, spool = tmp_path / "home", tmp_path / "spool"
    home.mkdir()
    spool.mkdir()
    env = {"OPENCLAW_STATE_DIR": "", "OPENCLAW_HOME": "", "HOME": str(home), "OUTBOX_RELAY_SPOOL": str(spool),
           "OUTBOX_RELAY_AUTH_TOKEN": "s3cret-token"}
    args = ["openclaw", "install-hook"]
    expected = {"home": home / ".openclaw" / "hooks", "openclaw_home": tmp_path / "oh" / ".openclaw" / "hooks",
                "state_dir": tmp_path / "state" / "hooks", "dir": tmp_path / "a" / "b" / "hooks"}[where]
    if where == "openclaw_home":
        env["OPENCLAW_HOME"] = str(tmp_path / "oh")
    elif where == "state_dir":
        env["OPENCLAW_STATE_DIR"] = str(tmp_path / "state")
        env["OPENCLAW_HOME"] = str(tmp_path / "oh")  # the state directory wins, as in the gateway
    elif where == "dir":
        args += ["--dir", str(expected)]
    res = run_exe(*args, env=env)
    assert res.returncode == 0, res.stderr
    assert installed_as_shipped(expected / "outbox-relay")
    assert f"installed the hook into {expected / 'outbox-relay'}" in res.stdout
    assert f"OUTBOX_RELAY_SPOOL={spool}" in res.stdout and "openclaw hooks enable outbox-relay" in res.stdout
    assert "OUTBOX_RELAY_AUTH_TOKEN=<the service's auth_token>" in res.stdout
    assert "s3cret-token" not in res.stdout + res.stderr
    # Again: the files are replaced, nothing else changes.
    assert run_exe(*args, env=env).returncode == 0 and sorted(os.listdir(expected)) == ["outbox-relay"]


def test_install_hook_says_what_is_wrong_in_one_line(tmp_path):
    blocker = tmp_path / "hooks"
    blocker.write_text("not a directory")
    res = run_exe("openclaw", "install-hook", "--dir", blocker, env={"HOME": str(tmp_path)})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and f"cannot install the hook into {blocker}" in res.stderr
    # A hooks directory that an earlier `cp -r` made into the hook itself, and a spool not made yet.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "HOOK.md").write_text("---\nname: outbox-relay\n---\n")
    res = run_exe("openclaw", "install-hook", "--dir", broken, env={"OUTBOX_RELAY_SPOOL": str(tmp_path / "nope")})
    assert res.returncode == 0 and installed_as_shipped(broken / "outbox-relay")
    assert "itself holds a hook's HOOK.md" in res.stderr and "does not exist yet" in res.stderr


def test_backfill_openclaw_reads_the_state_directory_openclaw_uses(tmp_path):
    """Without DIR: OPENCLAW_STATE_DIR, else OPENCLAW_HOME/.openclaw (the error names the one it read)."""
    for env, where in (({"OPENCLAW_STATE_DIR": str(tmp_path / "st")}, tmp_path / "st"),
                       ({"OPENCLAW_HOME": str(tmp_path / "oh")}, tmp_path / "oh" / ".openclaw"),
                       ({"HOME": str(tmp_path / "h")}, tmp_path / "h" / ".openclaw")):
        res = run_exe("backfill", "openclaw", "--dry-run", "--outbox", tmp_path / "outbox.db",
                      env={"OPENCLAW_STATE_DIR": "", "OPENCLAW_HOME": "", **env, "OUTBOX_RELAY_TARGET": f"sqlite:///{tmp_path}/archive.db"})
        assert res.returncode == 2 and f"{where} is not a directory" in res.stderr, res.stderr
    (tmp_path / "st" / "agents").mkdir(parents=True)
    res = run_exe("backfill", "openclaw", "--dry-run", "--json", "--outbox", tmp_path / "outbox.db",
                  env={"OPENCLAW_STATE_DIR": str(tmp_path / "st"), "OUTBOX_RELAY_TARGET": f"sqlite:///{tmp_path}/a.db"})
    assert res.returncode == 0, res.stderr
