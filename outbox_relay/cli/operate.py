"""Commands for operators: status, health, top, test, config."""

import os
import sys
import urllib.parse

import click

from ..operate.human import format_status, format_table
from ..operate.status import collect_status, health_verdict
from .group import cli
from .options import emit_json, friendly_errors, json_option, open_outbox, opened, settings_options, show


@cli.command()
@settings_options
@json_option
@click.option("--no-target", is_flag=True, help="Do not contact the target (outbox only).")
@friendly_errors
def status(cfg, as_json, no_target):
    """Outbox counts per state, oldest pending age, relay heartbeat, target reachability, warnings."""
    with opened(cfg, target=not no_target, create=False, readonly=True) as (outbox, target):
        result = collect_status(cfg, outbox, target)
    show(result, as_json, format_status)


@cli.command()
@settings_options
@json_option
@friendly_errors
def health(cfg, as_json):
    """For monitors: exit 0 healthy, 1 degraded, 2 down; one line says why.

    The target counts as down when it cannot be reached and no relay is running, or when the
    running relay has not reached it for longer than --unhealthy-after; shorter than that it is
    degraded.
    """
    try:
        with opened(cfg, create=False, readonly=True) as (outbox, target):
            result = collect_status(cfg, outbox, target)
        code, line = health_verdict(result)
    except click.ClickException as e:  # no outbox, unreadable outbox: that is "down" to a monitor
        result, code, line = None, 2, f"DOWN: {e.message}"
    if as_json:
        emit_json({"code": code, "status": ("ok", "degraded", "down")[code], "line": line, "report": result})
    else:
        click.echo(line)
    sys.exit(code)


@cli.command()
@settings_options
@click.option("--url", metavar="URL",
              help="Read a running service's /metrics and /healthz (e.g. http://127.0.0.1:8080) instead of "
                   "the outbox file; the outbox is still shown while the service does not answer.")
@click.option("--interval", type=click.FloatRange(min=0.2, max=3600), default=1.0, show_default=True,
              help="Seconds between refreshes (rates are over this interval).")
@click.option("--once", is_flag=True, help="Show one refresh (rates over one interval), then exit.")
@json_option
@friendly_errors
def top(cfg, url, interval, once, as_json):
    """Live view: messages in per second by source, delivered per second, backlog, relay state.

    On a terminal it refreshes in place until q or Ctrl-C; on a pipe it prints one line per
    interval (--json: one JSON object per line). Without --url it reads the outbox (counts, the
    relay's heartbeat, the spool) and needs no running service.
    """
    from ..operate.top import run as watch
    from ..operate.topdata import MetricsSource, OutboxSource
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter("give the service's address, e.g. http://127.0.0.1:8080", param_hint="--url")
    outbox = open_outbox(cfg, create=False, readonly=True) if url is None or os.path.exists(cfg.outbox) else None
    try:
        local = OutboxSource(cfg, outbox, expect_relay=url is not None) if outbox is not None else None
        source = MetricsSource(url, fallback=local) if url is not None else local
        sys.exit(watch(source, interval=interval, once=once, as_json=as_json))
    finally:
        if outbox is not None:
            outbox.close()


@cli.command("test")
@settings_options
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the message to reach the target.")
@json_option
@friendly_errors
def test_cmd(cfg, timeout, as_json):
    """End to end: put a test message and wait until it is in the target; print the latency.

    With no relay running it delivers the message itself. Exits non-zero if it never arrives.
    The test message (chat_id outbox-relay-test) is removed from the target again where the
    role may delete; one that did not arrive stays in the outbox and is delivered later.
    """
    from ..operate.selftest import end_to_end_test
    with opened(cfg) as (outbox, target):
        ok, line = end_to_end_test(cfg, outbox, target, timeout)
    if as_json:
        emit_json({"ok": ok, "line": line})
    else:
        click.echo(line)
    sys.exit(0 if ok else 1)


@cli.command("config")
@settings_options
@json_option
def config_cmd(cfg, as_json):
    """Print the effective configuration (secrets masked) and where each value came from."""
    masked = cfg.masked()
    if as_json:
        emit_json({k: v["value"] for k, v in masked.items()})
        return
    click.echo(format_table(["setting", "value", "from"],
                            [[k, "" if v["value"] is None else v["value"], v["from"]] for k, v in masked.items()]))
    if cfg.config_file:
        click.echo(f"config file: {cfg.config_file}")

