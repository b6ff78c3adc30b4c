"""What every command shares: the settings as flags, --json, opening the outbox and the target,
and turning library errors into one line (a bad setting: exit 2; anything else: exit 1)."""

import contextlib
import functools
import json
import os

import click

from ..config import BY_NAME, CONFIG_ENV, DEFAULT_CONFIG_FILE, SETTINGS, Config
from ..errors import ConfigError, OutboxError, OutboxRelayError, TargetError
from ..targets import open_from_config
from ..timeconv import parse_when


class BadSetting(click.ClickException):
    """A wrong setting: one line naming it, exit 2 (a usage error, without the usage text)."""

    exit_code = 2


def _setting_option(s):
    # Values stay strings here: Config validates them, so a wrong value is one line naming the
    # setting (exit 2), whether it came from a flag, the environment or the file.
    hint = f" ({'|'.join(s.choices)})" if s.choices else ""
    metavar = s.unit or {"url": "URL", "http_url": "URL", "hostport": "HOST:PORT", "table": "NAME", "int": "N",
                         "float": "N", "duration": "DURATION", "choice": "|".join(s.choices)}.get(
                             s.kind, "PATH" if s.name in ("outbox", "spool") else "TEXT")
    return click.option(s.flag, s.name, default=None, metavar=metavar,
                        help=f"{s.help}{hint} [env {s.env}; default {s.default!r}]")


def settings_options(fn):
    """Every setting as a flag on the command, plus --config; the command receives `cfg`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        flags = {s.name: kwargs.pop(s.name) for s in SETTINGS}
        config_file = kwargs.pop("config_file")
        try:
            cfg = Config.load(flags, config_file=config_file)
        except ConfigError as e:
            raise BadSetting(str(e)) from None
        return fn(*args, cfg=cfg, **kwargs)

    for s in reversed(SETTINGS):
        wrapper = _setting_option(s)(wrapper)
    wrapper = click.option("--config", "config_file", metavar="PATH", default=None,
                           help=f"TOML file of settings [env {CONFIG_ENV}; default "
                                f"{DEFAULT_CONFIG_FILE} if present]")(wrapper)
    return wrapper


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def emit_json(data):
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def show(data, as_json, formatter):
    """JSON for scripts, or the human table that `formatter` makes of the same data."""
    if as_json:
        emit_json(data)
    else:
        click.echo(formatter(data))


def open_outbox(cfg, create=True, readonly=False):
    if not create and not os.path.exists(cfg.outbox):
        # A reading command run from the wrong directory must not invent an empty, healthy-looking outbox.
        raise click.ClickException(
            f"outbox {os.path.abspath(cfg.outbox)} does not exist: run this where the service runs, "
            f"or give {BY_NAME['outbox'].named}")
    try:
        return cfg.open_outbox(readonly=readonly)
    except OutboxError as e:
        raise click.ClickException(str(e)) from None


def open_target(cfg, create=True):
    try:
        return open_from_config(cfg, create)
    except ConfigError as e:
        raise BadSetting(str(e)) from None
    except TargetError as e:
        raise click.ClickException(str(e)) from None


@contextlib.contextmanager
def opened(cfg, outbox=True, target=True, create=True, readonly=False):
    """(outbox, target) for one command, closed however it ends; None for what is not wanted.
    create=False: a missing outbox is an error, not a new file. readonly=True for commands that
    only look: they work on a full disk and in a read-only directory, and never write."""
    box = open_outbox(cfg, create, readonly) if outbox else None
    try:
        tgt = open_target(cfg, create) if target else None
        try:
            yield box, tgt
        finally:
            if tgt is not None:
                tgt.close()
    finally:
        if box is not None:
            box.close()


def friendly_errors(fn):
    """Library errors -> one line and exit 1; never a traceback for a known failure."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            raise BadSetting(str(e)) from None
        except OutboxRelayError as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def time_range(since, until, until_default=None):
    """--since/--until -> epoch ms (None where not given): one line, exit 2, when a value is not a
    time or the range is empty."""
    try:
        since_ms = parse_when(since, "--since")
        until_ms = parse_when(until, "--until") if until else until_default
    except ValueError as e:
        raise BadSetting(str(e)) from None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise BadSetting("--since must be before --until")
    return since_ms, until_ms


def require(cfg, *names):
    """BadSetting naming the first of these settings that is not set."""
    for name in names:
        if not getattr(cfg, name):
            s = BY_NAME[name]
            raise BadSetting(f"{name} is not set: give {s.flag}, {s.env} or {name} in the config file")
