"""Issue 5, configuration: every setting by flag, environment and TOML file, in that order.

Generic over config.SETTINGS, so a setting added later is covered without a new
test. Everything goes through `outbox-relay config` (values from `--json`, the
origin of each value from the table), the way a user would check it.
"""

import json
import re
import subprocess

import pytest
from click.testing import CliRunner

from outbox_relay.cli import cli
from outbox_relay.config import SETTINGS, Config
from outbox_relay.logs import mask_url

from cliutil import EXE, clean_env

LAYERS = ("file", "env", "flag")
pytestmark = pytest.mark.usefixtures("hermetic")


def value_for(s, layer):
    """A valid value for setting `s` that differs between the layers (and from the default where it can)."""
    n = LAYERS.index(layer) + 1
    if s.kind == "int":
        return int(max(s.default or 0, s.minimum or 0)) + n
    if s.kind == "float":
        return float(max(s.default or 0, s.minimum or 0)) + n + 0.5
    if s.kind == "choice":
        # Two choices, three layers: file and flag take the non-default, env the default, so each
        # step of the precedence changes the value.
        other = [c for c in s.choices if c != s.default][0]
        return s.default if layer == "env" else other
    if s.kind == "url":
        return f"postgresql://relay:{layer}-pw-XYZZY@{layer}.db.example:5432/feishu?sslmode=require"
    if s.kind == "http_url":
        return f"https://{layer}.feishu.example"
    if s.kind == "hostport":
        return f"127.0.0.1:{8100 + n}"
    if s.kind == "table":
        return f"{layer}_messages"
    if s.kind == "duration":
        return f"{n}y"
    if s.secret:
        return f"{layer}-secret-XYZZY"
    return f"{layer}/outbox.db"


def shown(s, value):
    """What `config` must print for a value: secrets and URL passwords masked."""
    if value is None:
        return None
    if s.secret:
        return "***"
    if s.kind == "url":
        return mask_url(value)
    return value


def toml_value(value):
    return json.dumps(value, ensure_ascii=False)  # a JSON string/number is a TOML one too


def write_toml(path, values, section=None):
    lines = [f"[{section}]"] if section else []
    lines += [f"{name} = {toml_value(v)}" for name, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def invoke(args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def effective(args, env=None):
    """({name: value} from `config --json`, {name: origin} from the `config` table)."""
    result = invoke(["config", "--json", *args], env)
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    result = invoke(["config", *args], env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]  # setting / value / from columns
    origins = {}
    for line in lines[2:]:
        name = line[:starts[1]].strip()
        if name in values:
            origins[name] = line[starts[2]:].strip()
    assert set(origins) == set(values), result.stdout
    for output in (result.stdout, json.dumps(values)):
        assert "XYZZY" not in output  # no secret and no URL password, ever
    return values, origins


def layer_inputs(tmp_path, layers_of):
    """CLI args and env for `layers_of[name]` = the layers that set that setting."""
    file_values = {s.name: value_for(s, "file") for s in SETTINGS if "file" in layers_of.get(s.name, ())}
    path = write_toml(tmp_path / "settings.toml", file_values)
    env = {s.env: str(value_for(s, "env")) for s in SETTINGS if "env" in layers_of.get(s.name, ())}
    args = ["--config", path]
    for s in SETTINGS:
        if "flag" in layers_of.get(s.name, ()):
            args += [s.flag, value_for(s, "flag")]
    return args, env, path


def test_every_setting_has_flag_env_and_file_precedence(tmp_path):
    names = [s.name for s in SETTINGS]
    scenarios = [
        {},                                        # defaults
        {n: ("file",) for n in names},             # file only
        {n: ("file", "env") for n in names},       # env beats file
        {n: ("file", "env", "flag") for n in names},  # flag beats both
        {n: ("env", "flag") for n in names},       # flag beats env, no file values
        {n: [("flag",), ("env",), ("file", "flag"), ("env", "file")][i % 4] for i, n in enumerate(names)},
    ]
    for layers_of in scenarios:
        args, env, path = layer_inputs(tmp_path, layers_of)
        values, origins = effective(args, env)
        loaded = Config.load(
            {s.name: value_for(s, "flag") for s in SETTINGS if "flag" in layers_of.get(s.name, ())},
            environ=env, config_file=str(path))
        for s in SETTINGS:
            layers = layers_of.get(s.name, ())
            winner = max(layers, key=LAYERS.index) if layers else None
            want = value_for(s, winner) if winner else s.default
            assert values[s.name] == shown(s, want), (s.name, layers)
            assert getattr(loaded, s.name) == want, (s.name, layers)  # the real value, unmasked
            where = {None: "default", "file": f"file {path}", "env": f"env {s.env}",
                     "flag": f"flag {s.flag}"}[winner]
            assert origins[s.name] == where, (s.name, layers)


def test_config_file_from_env_default_name_and_section(tmp_path):
    s = next(s for s in SETTINGS if s.name == "batch_size")
    write_toml(tmp_path / "outbox-relay.toml", {"batch_size": 11})  # found in the cwd by default
    values, origins = effective([])
    assert (values["batch_size"], origins["batch_size"]) == (11, "file outbox-relay.toml")
    other = write_toml(tmp_path / "other.toml", {"batch-size": 22}, section="outbox-relay")
    values, origins = effective([], env={"OUTBOX_RELAY_CONFIG": str(other)})
    assert (values["batch_size"], origins["batch_size"]) == (22, f"file {other}")
    values, _ = effective(["--config", other], env={s.env: "33"})
    assert values["batch_size"] == 33
    # An empty environment variable is "not set", not an empty value.
    values, origins = effective(["--config", other], env={s.env: ""})
    assert (values["batch_size"], origins["batch_size"]) == (22, f"file {other}")


def bad_values(s):
    """Values every source must refuse for setting `s`."""
    if s.kind in ("int", "float"):
        out = ["abc", str(int(s.minimum) - 1)] if s.minimum is not None else ["abc"]
        return out + (["1.5"] if s.kind == "int" else [])
    # mysql:// is a target since issue 13: its bad URL is now a libpq option it does not take.
    return {"choice": ["sometimes"], "url": ["oracle://root:XYZZY@db/x", "mysql://root:XYZZY@db/x?sslmode=require"],
            "hostport": ["8080", "host:http"],
            "http_url": ["open.feishu.cn", "ftp://open.feishu.cn", "https://", "http://h:port"],
            "table": ["drop table;"]}.get(s.kind, [""])


CASES = [(s, bad, source) for s in SETTINGS for bad in bad_values(s) for source in LAYERS
         if not (source == "env" and bad == "")]  # an empty env var means "unset"


@pytest.mark.parametrize("s,bad,source", CASES,
                         ids=[f"{s.name}-{source}-{bad!r}" for s, bad, source in CASES])
def test_a_bad_value_exits_2_with_one_line(s, bad, source, tmp_path):
    args, env = ["config"], None
    if source == "flag":
        args += [s.flag, bad]
    elif source == "env":
        env = {s.env: bad}
    else:
        args += ["--config", write_toml(tmp_path / "bad.toml", {s.name: bad})]
    result = invoke(args, env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Usage:" not in result.stderr and "Traceback" not in result.stderr
    assert s.name in lines[0] or s.flag in lines[0], lines[0]
    assert "XYZZY" not in result.output


def test_bad_config_files_exit_2_with_one_line(tmp_path):
    (tmp_path / "broken.toml").write_text("batch_size = = 3\n")
    (tmp_path / "unknown.toml").write_text("batch_sise = 3\n")
    (tmp_path / "typed.toml").write_text('outbox = 5\n')
    for args in (["--config", tmp_path / "missing.toml"], ["--config", tmp_path / "broken.toml"],
                 ["--config", tmp_path / "unknown.toml"], ["--config", tmp_path / "typed.toml"]):
        result = invoke(["config", *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and "Usage:" not in result.stderr, result.stderr


def test_every_command_takes_the_setting_flags_and_config_errors_exit_2():
    """A bad setting is refused the same way by every command that reads settings."""
    for command in ("status", "stats", "search", "health", "test", "import-json", "sync", "run"):
        extra = {"search": ["x"], "import-json": [__file__]}.get(command, [])
        result = invoke([command, *extra, "--max-pending", "0", "--target", "postgresql://u:XYZZY@localhost/x"])
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.startswith("Error: invalid max_pending"), (command, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and "XYZZY" not in result.output


def test_subprocess_bad_env_value_is_one_line_exit_2(tmp_path):
    env = clean_env(OUTBOX_RELAY_POOL_SIZE="many")
    result = subprocess.run([EXE, "config"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("Error: invalid pool_size (--pool-size / OUTBOX_RELAY_POOL_SIZE) from env "
                             "OUTBOX_RELAY_POOL_SIZE: 'many' is not an integer\n")


def test_config_masks_secrets_in_every_form(tmp_path):
    args = ["--target", "postgresql://relay:XYZZY%40pw@db.example/feishu?password=XYZZY2&sslmode=require",
            "--auth-token", "tokXYZZY", "--feishu-encrypt-key", "keyXYZZY",
            "--feishu-verification-token", "vtXYZZY"]
    values, origins = effective(args)
    assert values["target"] == "postgresql://relay:***@db.example/feishu?password=***&sslmode=require"
    for name in ("auth_token", "feishu_encrypt_key", "feishu_verification_token"):
        assert values[name] == "***"
    values, _ = effective([])
    assert values["auth_token"] is None  # an unset secret is shown as unset, not as ***


@pytest.mark.parametrize("name,toml", [
    ("batch_size", "1.5"), ("batch_size", "true"), ("max_body", "2048.9"), ("busy_timeout", "false"),
    ("outbox", "5"), ("overflow", "1"), ("http", "[1, 2]"), ("auth_token", "{a = 1}")])
def test_a_wrongly_typed_toml_value_is_refused_not_coerced(name, toml, tmp_path):
    """TOML has types: 1.5 for an integer setting is a mistake, not 1."""
    path = tmp_path / "typed.toml"
    path.write_text(f"{name} = {toml}\n")
    result = invoke(["config", "--config", path])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and name in result.stderr, result.stderr


@pytest.mark.parametrize("url,masked", [
    ("postgresql://u:pw@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # a raw @ in the password
    ("postgresql://a@b:c@host/db", "postgresql://a@b:***@host/db"),
    ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
    ("cannot reach postgresql://u:s3@cret@h/db: refused", "cannot reach postgresql://u:***@h/db: refused"),
    ("postgresql://h/db?user=u&password=pw&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("postgresql://user@host:5432/db", "postgresql://user@host:5432/db"),
    ("sqlite:///data/archive.db", "sqlite:///data/archive.db"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_a_raw_at_sign_in_the_password_is_masked_whole():
    values, _ = effective(["--target", "postgresql://relay:s3cr@XYZZY@db.example:5432/feishu"])
    assert values["target"] == "postgresql://relay:***@db.example:5432/feishu"


def test_the_feishu_api_base_is_masked_and_must_be_https_outside_this_machine(invoke):
    """Issue 24, item 13: the base URL carries the app secret's requests: shown without a password,
    and never plain http:// to another machine."""
    result = invoke("config", "--feishu-api-base", "https://ops:s3cret@open.example.com")
    assert result.exit_code == 0 and "s3cret" not in result.output
    assert "https://ops:***@open.example.com" in result.output
    result = invoke("config", "--json", "--feishu-api-base", "https://ops:s3cret@open.example.com")
    assert "s3cret" not in result.output
    result = invoke("config", "--feishu-api-base", "http://ops:s3cret@open.example.com")
    assert result.exit_code == 2 and "must be an https:// URL" in result.output and "s3cret" not in result.output
    assert invoke("config", "--feishu-api-base", "http://127.0.0.1:9000").exit_code == 0
    assert invoke("config", "--feishu-api-base", "http://[::1]:9000").exit_code == 0
