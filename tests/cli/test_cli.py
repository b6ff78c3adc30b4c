"""cli.py: `put`, `status --no-target`, `--version`, and --help on every command.

Through click.testing.CliRunner (fast, in-process) and through the installed
`outbox-relay` script in a real subprocess. Every test runs in its own
directory with no OUTBOX_RELAY_* variables, so neither a developer's
environment nor an outbox-relay.toml can leak in.
"""

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from outbox_relay import __version__
from outbox_relay.cli import cli
from outbox_relay.outbox import Outbox

from cliutil import EXE, clean_env
from factories import SAMPLES, sample_bytes
from relayutil import outbox_counts

EMPTY = {"pending": 0, "delivered": 0, "parked": 0, "dead": 0}


@pytest.fixture
def workdir(hermetic, tmp_path):
    return tmp_path


@pytest.fixture
def run(workdir):
    """run("put", ..., input=...) -> click Result, with --outbox pointing into the test's directory."""
    outbox = str(workdir / "data" / "outbox.db")

    def invoke(*args, input=None, outbox_flag=True):
        args = list(args)
        if outbox_flag:
            args += ["--outbox", outbox]
        return CliRunner().invoke(cli, args, input=input, catch_exceptions=False)

    invoke.outbox = outbox
    return invoke


def one_line_error(result):
    """Exit 1, and stderr is one line (no traceback) starting with 'Error: '."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


# -- put ------------------------------------------------------------------------------------------

def test_put_one_object_from_stdin(run):
    result = run("put", input=sample_bytes("v2_text.json"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "stored\tom_5ce6d572455d361153b7cb51da133945\tpending\n"
    assert outbox_counts(run.outbox) == {**EMPTY, "pending": 1}


def test_put_one_object_from_a_file(run, workdir):
    result = run("put", str(SAMPLES / "v2_post.json"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "stored\tom_post_0001\tpending\n"
    again = run("put", str(SAMPLES / "v2_post.json"))
    assert again.stdout == "duplicate\tom_post_0001\tpending\n"
    assert outbox_counts(run.outbox) == {**EMPTY, "pending": 1}


def test_put_every_sample(run):
    messages = [p for p in sorted(SAMPLES.glob("*.json")) if p.name != "url_verification.json"]
    assert len(messages) >= 8
    for path in messages:
        result = run("put", str(path))
        assert result.exit_code == 0, (path.name, result.output)
    assert outbox_counts(run.outbox)["pending"] == len(messages)  # each sample has its own message_id


def test_put_json_lines_from_a_file_and_stdin(run, workdir):
    lines = [json.dumps({"message_id": f"om_{i}", "chat_id": "oc_1", "text": f"第 {i} 条 🎉"}, ensure_ascii=False)
             for i in range(5)]
    (workdir / "in.jsonl").write_text("\n".join(lines[:3]) + "\n\n", encoding="utf-8")
    result = run("put", str(workdir / "in.jsonl"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"stored\tom_{i}\tpending" for i in range(3)]
    result = run("put", "--json", input="\n".join(lines[2:]) + "\n")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["message_id"], r["duplicate"]) for r in report] == [
        ("om_2", True), ("om_3", False), ("om_4", False)]
    assert outbox_counts(run.outbox) == {**EMPTY, "pending": 5}
    with Outbox(run.outbox) as o:
        assert json.loads(o.get("om_4")["payload"])["text"] == "第 4 条 🎉"


def test_put_a_pretty_printed_object(run):
    result = run("put", input=json.dumps({"message_id": "om_pretty", "chat_id": "oc_1", "text": "hi"}, indent=2))
    assert result.exit_code == 0, result.output
    assert outbox_counts(run.outbox)["pending"] == 1


BAD_INPUT = [
    ("not-json", "hello there\n", "not valid JSON"),
    ("empty", "", "no input"),
    ("array", '[{"message_id": "om_1", "chat_id": "oc_1"}]', "must be a JSON object, not an array"),
    ("string", '"om_1"', "must be a JSON object, not a string"),
    ("missing-message_id", '{"chat_id": "oc_1", "text": "hi"}', "no message_id"),
    ("content-not-json", '{"message_id": "om_1", "chat_id": "oc_1", "content": "{oops"}', "content is not valid JSON"),
    ("wrong-type", '{"message_id": {"id": 1}}', "message_id must be a string"),
    ("unknown-event", '{"type": "card.action.trigger"}', "unsupported event type"),
    ("url-verification", (SAMPLES / "url_verification.json").read_text(), "url_verification"),
    ("bad-second-line", '{"message_id": "om_1", "chat_id": "oc_1"}\n{"message_id": \n', "line 2: "),
    ("invalid-second-item", '{"message_id": "om_1", "chat_id": "oc_1"}\n{"text": "no id"}\n', "no message_id"),
    ("nested", '{"message_id": "om_1", "chat_id": "oc_1", "x": ' + "[" * 100 + "]" * 100 + "}", "nested too deeply"),
    ("NaN", '{"message_id": "om_1", "chat_id": "oc_1", "x": NaN}', "NaN is not valid JSON"),
    ("lone-surrogate", '{"message_id": "om_1", "chat_id": "oc_1", "text": "\\udc00"}', "lone surrogate"),
]


@pytest.mark.parametrize("data,words", [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_put_invalid_input_is_one_line_exit_1_and_stores_nothing(run, data, words):
    line = one_line_error(run("put", input=data))
    assert words in line
    assert outbox_counts(run.outbox) == EMPTY  # not even the good first line of a batch


def test_put_too_large_input(run):
    huge = '{"message_id": "om_1", "chat_id": "oc_1", "text": "' + "x" * 10_000_000 + '"}'
    line = one_line_error(run("put", input=huge))
    assert "too large" in line
    assert outbox_counts(run.outbox) == EMPTY


def test_put_invalid_utf8_is_one_line_exit_1(workdir):
    result = CliRunner().invoke(cli, ["put", "--outbox", str(workdir / "o.db")],
                                input=b'{"message_id": "om_1", "chat_id": "oc_1", "text": "\xff"}')
    line = one_line_error(result)
    assert "UTF-8" in line
    assert outbox_counts(str(workdir / "o.db")) == EMPTY


def test_put_missing_file_is_a_usage_error(run):
    result = run("put", "no-such-file.json")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr or "No such file" in result.stderr


def test_put_honours_the_outbox_environment_variable(workdir):
    path = str(workdir / "env" / "o.db")
    result = CliRunner().invoke(cli, ["put"], input='{"message_id": "om_env", "chat_id": "oc_1"}',
                                env={"OUTBOX_RELAY_OUTBOX": path})
    assert result.exit_code == 0, result.output
    assert outbox_counts(path)["pending"] == 1


def test_put_under_reject_when_full(run):
    for i in range(2):
        assert run("put", "--max-pending", "2", "--overflow", "reject",
                   input=json.dumps({"message_id": f"om_{i}", "chat_id": "oc_1"})).exit_code == 0
    line = one_line_error(run("put", "--max-pending", "2", "--overflow", "reject",
                              input='{"message_id": "om_2", "chat_id": "oc_1"}'))
    assert "outbox is full" in line
    assert outbox_counts(run.outbox) == {**EMPTY, "pending": 2}


# -- status --------------------------------------------------------------------------------------

def test_status_no_target_json(run):
    lines = "\n".join(json.dumps({"message_id": f"om_{i}", "chat_id": "oc_1"}) for i in range(5))
    assert run("put", "--max-pending", "3", input=lines).exit_code == 0
    result = run("status", "--no-target", "--json", "--max-pending", "3")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outbox"]["counts"] == {**EMPTY, "pending": 3, "parked": 2}
    age = report["outbox"]["oldest_pending_age_s"]
    assert isinstance(age, (int, float)) and 0 <= age < 60
    assert report["outbox"]["schema_version"] >= 1
    assert report["target"] is None


def test_status_no_target_text(run):
    assert run("put", input='{"message_id": "om_1", "chat_id": "oc_1", "text": "hi"}').exit_code == 0
    result = run("status", "--no-target")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for state, n in (("pending", 1), ("delivered", 0), ("parked", 0), ("dead", 0)):
        assert any(line.split() == [state, str(n)] for line in out.splitlines()), out
    assert "oldest pending: " in out
    assert "oldest pending: -" not in out
    assert "Traceback" not in result.output


def test_status_of_a_missing_outbox_is_an_error_and_creates_nothing(run, workdir):
    """Run from the wrong directory, a reading command must not invent an empty, healthy outbox."""
    for command in (["status", "--no-target"], ["dead"], ["replay", "--all"]):
        result = run(*command)
        assert result.exit_code == 1
        assert "does not exist: run this where the service runs" in one_line_error(result)
    result = run("health")
    assert result.exit_code == 2 and result.stdout.startswith("DOWN: outbox ")
    assert not os.path.exists(run.outbox) and not (workdir / "data").exists()


def test_status_of_an_empty_outbox(run):
    Outbox(run.outbox).close()
    result = run("status", "--no-target", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outbox"]["counts"] == EMPTY
    assert report["outbox"]["oldest_pending_age_s"] is None
    assert "oldest pending: -" in run("status", "--no-target").stdout


def test_status_on_a_file_that_is_not_an_outbox(run, workdir):
    bad = workdir / "junk.db"
    bad.write_bytes(b"not a database" * 100)
    line = one_line_error(CliRunner().invoke(cli, ["status", "--no-target", "--outbox", str(bad)]))
    assert "not a database" in line


def test_bad_setting_is_a_usage_error(run):
    result = run("put", "--synchronous", "off", input='{"message_id": "om_1", "chat_id": "oc_1"}')
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- version and help ------------------------------------------------------------------------------

def test_version(run):
    result = run("--version", outbox_flag=False)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"outbox-relay, version {__version__}"


def test_group_help_lists_every_command(run):
    result = run("--help", outbox_flag=False)
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_and_a_docstring(run, name):
    command = cli.commands[name]
    assert command.callback.__doc__ and command.callback.__doc__.strip()
    assert command.help and command.help.strip()
    result = run(name, "--help", outbox_flag=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {name} ") or result.stdout.startswith("Usage: ")
    summary = command.help.strip().splitlines()[0]
    assert summary.split()[0] in result.stdout


def test_commands_that_use_the_outbox_take_the_settings_flags(run):
    for name in ("put", "status", "sync", "dead", "replay", "search", "stats", "health"):
        out = run(name, "--help", outbox_flag=False).stdout
        assert "--outbox PATH" in out and "--target URL" in out, name


# -- the installed script, in a real subprocess ------------------------------------------------------

@pytest.fixture
def script(workdir):
    assert os.path.exists(EXE), f"{EXE} is not installed (pip install -e .)"
    env = clean_env()
    outbox = str(workdir / "data" / "outbox.db")

    def call(*args, input=None, outbox_flag=True):
        args = [EXE, *args] + (["--outbox", outbox] if outbox_flag else [])
        return subprocess.run(args, input=input, capture_output=True, env=env, cwd=workdir, timeout=60)

    call.outbox = outbox
    return call


def test_script_put_from_stdin_and_file_then_status(script):
    p = script("put", input=sample_bytes("v2_text.json"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "stored\tom_5ce6d572455d361153b7cb51da133945\tpending\n"
    p = script("put", str(SAMPLES / "flat_message.json"))
    assert p.returncode == 0, p.stderr
    lines = (b'{"message_id": "om_a", "chat_id": "oc_1"}\n'
             b'{"message_id": "om_b", "chat_id": "oc_1", "text": "\xe4\xbd\xa0\xe5\xa5\xbd"}\n')
    p = script("put", input=lines)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 2

    p = script("status", "--no-target", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["outbox"]["counts"] == {**EMPTY, "pending": 4}
    assert report["outbox"]["oldest_pending_age_s"] >= 0
    p = script("status", "--no-target")
    assert p.returncode == 0, p.stderr
    assert "pending    4" in p.stdout.decode()


def test_script_invalid_input_exit_1_one_line_nothing_stored(script):
    p = script("put", input=b'{"message_id": "om_1", "chat_id": "oc_1", "content": "{not json"}')
    assert p.returncode == 1
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "content is not valid JSON" in err[0]
    assert b"Traceback" not in p.stderr
    assert p.stdout == b""
    assert outbox_counts(script.outbox) == EMPTY


def test_script_version_and_help(script):
    p = script("--version", outbox_flag=False)
    assert p.returncode == 0
    assert p.stdout.decode().strip() == f"outbox-relay, version {__version__}"
    p = script("--help", outbox_flag=False)
    assert p.returncode == 0
    assert b"Usage: outbox-relay" in p.stdout


def test_import_json_of_a_deeply_nested_file_is_one_line(run, tmp_path):
    """Issue 24, item 16: a file nested past Python's recursion limit is a bad file, not a traceback."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = run("import-json", str(deep))
    assert result.exit_code == 1, result.output
    assert one_line_error(result) == f"Error: {deep} is nested too deeply to be a queue of messages"
    assert outbox_counts(run.outbox) == EMPTY
