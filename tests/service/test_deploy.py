"""Issue 5, deployment: deploy/outbox-relay.service is a unit systemd accepts and that runs the relay.

Two checks, both always run where they can:

* `systemd-analyze verify` -- systemd's own parser and checker. It does not need
  systemd as PID 1 (it loads the unit into a private manager in "test run"
  mode), so it runs in a container; `make test` installs it
  (scripts/ensure-system-deps.sh). It refuses a unit whose ExecStart binary is
  missing, and the unit names the installed path /opt/outbox-relay/.venv/...,
  which does not exist on a build machine. So we verify a copy whose ExecStart
  program is this checkout's own `outbox-relay` entry point, arguments unchanged.
  It exits 0 even for an unknown key or an unparsable value (it only warns), so
  any line it prints about our unit is a failure too.
* A structural check with our own reading of the file: the things issue 5 and
  the design require (runs `outbox-relay run`, restarts on failure, starts at
  boot after the network, no secret inline, the outbox directory writable under
  the sandboxing, enough stop time to finish a batch).
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from outbox_relay.service.run import SHUTDOWN_GRACE

from cliutil import EXE
from serverproc import REPO
from skiputil import unavailable

ROOT = REPO
UNIT = os.path.join(ROOT, "deploy", "outbox-relay.service")


def read_unit(path):
    """{section: [(key, value), ...]} -- systemd syntax: repeated keys, # and ; comments, \\ continuation."""
    sections, current, pending = {}, None, ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = pending + raw.strip()
            pending = ""
            if not line or line[0] in "#;":
                continue
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], [])
                continue
            assert current is not None, f"{line!r} outside any section"
            key, sep, value = line.partition("=")
            assert sep, f"not a key=value line: {line!r}"
            current.append((key.strip(), value.strip()))
    return sections


def values(sections, section, key):
    return [v for k, v in sections.get(section, []) if k == key]


def one(sections, section, key):
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def seconds(text):
    """systemd time span: '30', '30s', '1min 30s', '2m' -> seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def test_unit_file_structure():
    unit = read_unit(UNIT)
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert one(unit, "Unit", "Description")
    # Starts after the network is really up (the target is remote), at boot.
    assert "network-online.target" in " ".join(values(unit, "Unit", "After"))
    wants = values(unit, "Unit", "Wants") + values(unit, "Unit", "Requires")
    assert "network-online.target" in " ".join(wants)
    assert "multi-user.target" in " ".join(values(unit, "Install", "WantedBy"))

    argv = shlex.split(one(unit, "Service", "ExecStart").lstrip("@-:+!"))
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "outbox-relay", argv
    assert argv[1] == "run", argv  # relay + webhook in one process, until SIGTERM
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) >= 1  # no tight restart loop
    assert one(unit, "Service", "Type") in ("simple", "exec")
    # SIGTERM finishes the batch in flight: systemd must wait longer than the relay's grace.
    assert values(unit, "Service", "KillSignal") in ([], ["SIGTERM"], ["TERM"], ["15"])
    stop = values(unit, "Service", "TimeoutStopSec")
    assert not stop or seconds(stop[0]) > SHUTDOWN_GRACE, stop

    # Never as root.
    assert one(unit, "Service", "User") not in ("root", "0")
    # No secret inline (the unit file is world-readable): settings come from an EnvironmentFile.
    for env in values(unit, "Service", "Environment"):
        assert not re.search(r"(TOKEN|KEY|PASSWORD)=|://[^/@\s]*:[^@\s]*@", env, re.I), env
    assert values(unit, "Service", "EnvironmentFile")

    # The outbox (data/outbox.db under the working directory, by default) must stay writable
    # under the sandboxing.
    workdir = one(unit, "Service", "WorkingDirectory").lstrip("-")
    writable = ["/var/lib/" + d for v in values(unit, "Service", "StateDirectory") for d in v.split()]
    writable += [p.lstrip("-") for v in values(unit, "Service", "ReadWritePaths") for p in v.split()]
    if values(unit, "Service", "ProtectSystem") in (["strict"],):
        assert any(workdir == w or workdir.startswith(w.rstrip("/") + "/") for w in writable), \
            (workdir, writable)


@pytest.fixture(scope="module")
def analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze not installed (make test installs it via scripts/ensure-system-deps.sh)")
    return path


def test_systemd_analyze_verify(tmp_path, analyze):
    assert os.access(EXE, os.X_OK), EXE
    text = open(UNIT, encoding="utf-8").read()
    text, n = re.subn(r"^(ExecStart=[-@:+!]*)(\S+)", lambda m: m.group(1) + EXE, text, flags=re.M)
    assert n == 1
    copy = tmp_path / "outbox-relay.service"
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "outbox-relay" in line]
    assert ours == [], ours  # warnings (unknown key, bad value) do not change the exit code


def test_systemd_analyze_verify_catches_mistakes(tmp_path, analyze):
    """The check above can fail: a misspelt key and a bad value in a copy are reported."""
    text = open(UNIT, encoding="utf-8").read()
    text = re.sub(r"^ExecStart=[-@:+!]*\S+", "ExecStart=" + EXE, text, flags=re.M)
    text = text.replace("[Service]", "[Service]\nRestartt=always\nTimeoutStopSec=soon", 1)
    copy = tmp_path / "outbox-relay.service"
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "outbox-relay" in line]
    assert any("Restartt" in line for line in ours) and any("soon" in line for line in ours), ours
