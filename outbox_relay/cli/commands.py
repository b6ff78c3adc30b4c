"""`outbox-relay`: thin commands that parse options, call one library function, print.

User mistakes become a one-line `click.ClickException` (exit 1) or a usage
error (exit 2); a bad setting is a usage error naming the setting. No tracebacks
for either, and no secret is ever printed (URLs are masked).
"""

import contextlib
import functools
import json
import logging
import os
import sys
import threading
import urllib.parse

import click

from .. import __version__
from ..operate import status as ops
from ..config import SETTINGS, Config
from ..errors import ConfigError, InvalidMessage, OutboxError, OutboxRelayError, TargetError
from ..intake.spool import Spool, format_spool, ingest_for_sync
from ..logs import setup_logging
from ..progress import progress_for
from ..targets import DIALECTS
from ..timeconv import now_ms, parse_when

log = logging.getLogger(__name__)


class BadSetting(click.ClickException):
    """A wrong setting: one line naming it, exit 2 (a usage error, without the usage text)."""

    exit_code = 2


# -- shared options -------------------------------------------------------------------

def _setting_option(s):
    # Values stay strings here: Config validates them, so a wrong value is one line naming the
    # setting (exit 2), whether it came from a flag, the environment or the file.
    hint = f" ({'|'.join(s.choices)})" if s.choices else ""
    metavar = s.unit or {"url": "URL", "http_url": "URL", "hostport": "HOST:PORT", "table": "NAME", "int": "N",
                         "float": "N", "choice": "|".join(s.choices)}.get(
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
                           help="TOML file of settings [env OUTBOX_RELAY_CONFIG; default "
                                "outbox-relay.toml if present]")(wrapper)
    return wrapper


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def _emit_json(data):
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _report(data, as_json, formatter):
    """JSON for scripts, or the human table that `formatter` makes of the same data."""
    if as_json:
        _emit_json(data)
    else:
        click.echo(formatter(data))


def _open_outbox(cfg, create=True, readonly=False):
    if not create and not os.path.exists(cfg.outbox):
        # A reading command run from the wrong directory must not invent an empty, healthy-looking outbox.
        raise click.ClickException(
            f"outbox {os.path.abspath(cfg.outbox)} does not exist: run this where the service runs, "
            "or give --outbox / OUTBOX_RELAY_OUTBOX")
    try:
        return cfg.open_outbox(readonly=readonly)
    except OutboxError as e:
        raise click.ClickException(str(e)) from None


def _open_target(cfg, create=True):
    from ..targets import open_from_config
    try:
        return open_from_config(cfg, create)
    except ConfigError as e:
        raise BadSetting(str(e)) from None
    except TargetError as e:
        raise click.ClickException(str(e)) from None


@contextlib.contextmanager
def _opened(cfg, outbox=True, target=True, create=True, readonly=False):
    """(outbox, target) for one command, closed however it ends; None for what is not wanted.
    create=False: a missing outbox is an error, not a new file. readonly=True for commands that
    only look: they work on a full disk and in a read-only directory, and never write."""
    box = _open_outbox(cfg, create, readonly) if outbox else None
    try:
        tgt = _open_target(cfg, create) if target else None
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


# -- the group --------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox-relay")
@click.option("--log-json", is_flag=True, envvar="OUTBOX_RELAY_LOG_JSON", help="Log JSON lines (for machines).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(log_json, verbose, quiet):
    """outbox-relay: every Feishu message into your database, nothing lost, nothing duplicated.

    Messages are committed to a local SQLite outbox first; a relay moves them to
    the target database in batches through a small connection pool.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    setup_logging(level=level, json_lines=log_json)


def main():
    cli(prog_name="outbox-relay")


# -- put / import -------------------------------------------------------------------------

@cli.command()
@click.argument("source", type=click.File("rb"), default="-")
@settings_options
@json_option
@friendly_errors
def put(source, cfg, as_json):
    """Commit messages to the outbox: one JSON object, or JSON lines, from SOURCE (default stdin).

    Every line is checked first; if any is invalid nothing is stored and the
    line number is reported.
    """
    data = source.read()
    payloads = _parse_put_input(data)
    with _opened(cfg, target=False) as (outbox, _):
        try:
            results = outbox.put_many(payloads)
        except InvalidMessage as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        _emit_json([r._asdict() for r in results])
        return
    for r in results:
        click.echo(f"{'duplicate' if r.duplicate else 'stored'}\t{r.message_id}\t{r.state}")


def _parse_put_input(data):
    from ..message.shapes import normalize, parse_payload
    try:
        # utf-8-sig: a file saved by an editor that writes a byte-order mark is still JSON to us.
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise click.ClickException(f"input is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise click.ClickException("no input: give a JSON object or JSON lines")
    try:
        return [parse_payload(text)]
    except InvalidMessage as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise click.ClickException(str(whole)) from None
    payloads = []
    for n, line in lines:
        try:
            payloads.append(normalize(parse_payload(line)))
        except InvalidMessage as e:
            raise click.ClickException(f"line {n}: {e}") from None
    return payloads


@cli.command("import-json")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@settings_options
@json_option
@friendly_errors
def import_json(path, cfg, as_json):
    """Move the old JSON queue file (an array of flat message dicts) into the outbox.

    Idempotent: running it twice adds nothing. Bad entries are reported by their
    index and skipped; the file itself is left untouched.
    """
    from ..intake.import_json import import_json_file
    with _opened(cfg, target=False) as (outbox, _):
        with progress_for() as progress:
            report = import_json_file(outbox, path, progress=progress)
    if as_json:
        _emit_json(report)
        return
    click.echo(f"{report['imported']} imported, {report['duplicates']} already present, "
               f"{len(report['errors'])} bad (of {report['total']})")
    for err in report["errors"]:
        click.echo(f"  entry {err['index']}: {err['error']}", err=True)


@cli.group()
def backfill():
    """Recover messages that never reached the archive (Feishu's own history, OpenClaw's transcripts).

    Each source is only read; what the target already holds is skipped, the rest is committed
    to the outbox (the relay delivers it, exactly once like any other message). Running one
    twice adds nothing.
    """


@backfill.command("openclaw")
@click.argument("directory", metavar="[DIR]", required=False)
@click.option("--since", help="Only messages from this date/time or age on (2026-11-01, 7d, 12h).")
@click.option("--until", help="Only messages before this date/time or age.")
@click.option("--dry-run", is_flag=True, help="Count what would be added; commit nothing.")
@settings_options
@json_option
@friendly_errors
def backfill_openclaw_cmd(directory, since, until, dry_run, cfg, as_json):
    """Commit the inbound Feishu messages in OpenClaw's transcripts that the archive lacks.

    DIR is OpenClaw's state directory (default ~/.openclaw): every agent's JSONL sessions
    (with reset and migration archives) and its SQLite store, opened read-only while the
    gateway runs. Assistant lines, compactions, tool output and other channels are skipped
    and counted.
    """
    from ..backfill.openclaw import backfill_openclaw, format_report
    from ..backfill.openclaw_sources import TranscriptsUnreadable, check_root
    since_ms, until_ms = _time_range(since, until)
    root = os.path.expanduser(directory or "~/.openclaw")
    try:
        check_root(root)  # before the outbox is opened: a wrong DIR changes nothing
    except TranscriptsUnreadable as e:
        raise BadSetting(str(e)) from None
    with _opened(cfg, target=False) as (outbox, _):
        target = _target_or_none(cfg)
        try:
            with progress_for() as progress:
                report = backfill_openclaw(root, outbox, target, since_ms=since_ms, until_ms=until_ms,
                                           dry_run=dry_run, progress=progress)
        finally:
            if target is not None:
                target.close()
    _report(report, as_json, format_report)


def _target_or_none(cfg):
    """The target to skip what it already holds, or None when it cannot be opened (a backfill is a
    local commit and works without it; the relay's conflict clause keeps one row)."""
    try:
        return _open_target(cfg, create=False)
    except click.ClickException as e:
        log.warning("target not checked (%s): every message found goes to the outbox", e.message)
        return None


@backfill.command("feishu")
@settings_options
@click.option("--chat", "chats", multiple=True, metavar="CHAT_ID",
              help="Only this chat (repeatable). Default: the bot's groups plus every chat the target holds.")
@click.option("--since", default="30d", show_default=True,
              help="From this date/time or relative age (2026-11-01, 30d, 12h).")
@click.option("--until", default=None, help="Before this date/time or relative age [default: now].")
@click.option("--dry-run", is_flag=True, help="Read and count, commit nothing, record no checkpoint.")
@click.option("--recheck", is_flag=True, help="Read the whole range again, even what earlier runs read.")
@json_option
@friendly_errors
def backfill_feishu(cfg, chats, since, until, dry_run, recheck, as_json):
    """Read chat history back from Feishu's Open API and commit every message the archive lacks.

    Needs --feishu-app-id and --feishu-app-secret (the bot's app; scopes im:message.history:readonly
    or im:message, im:message.group_msg, im:chat:readonly). Requests stay under --feishu-rate per
    second. SIGTERM/Ctrl-C stops after the page in flight; a rerun continues where it stopped.
    Exit 0 when every chat is complete, 1 when a chat failed or the run stopped, 2 for a setting
    (a missing app id or secret, or one Feishu refuses).
    """
    from ..backfill.feishu import backfill_feishu as run_backfill
    from ..backfill.feishu import format_report
    from ..service.run import ensure_schema_or_warn, two_signal_shutdown
    since_ms, until_ms = _time_range(since, until, until_default=now_ms())
    stop = threading.Event()
    client = _feishu_client(cfg, stop)
    with _opened(cfg, outbox=not dry_run or os.path.exists(cfg.outbox), create=not dry_run) as (outbox, target):
        if not dry_run:
            ensure_schema_or_warn(target)
        restore = two_signal_shutdown(stop.set)
        try:
            with progress_for() as progress:
                report = run_backfill(client, outbox, target, since_ms=since_ms, until_ms=until_ms,
                                      chats=list(chats), dry_run=dry_run, recheck=recheck, progress=progress)
        finally:
            restore()
            client.close()
    _report(report, as_json, format_report)
    if not report["complete"]:
        failed = report["totals"]["failed"]
        why = "stopped before the end" if report["stopped"] else f"{failed} chat(s) failed"
        raise click.ClickException(f"backfill incomplete: {why}; run it again to continue")


def _time_range(since, until, until_default=None):
    """--since/--until of a backfill -> epoch ms (None where not given): one line, exit 2, when a
    value is not a time or the range is empty."""
    try:
        since_ms = parse_when(since, "--since")
        until_ms = parse_when(until, "--until") if until else until_default
    except ValueError as e:
        raise BadSetting(str(e)) from None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise BadSetting("--since must be before --until")
    return since_ms, until_ms


def _feishu_client(cfg, stop):
    from ..backfill.feishu_api import FeishuClient
    for name in ("feishu_app_id", "feishu_app_secret"):
        if not getattr(cfg, name):
            flag, env = "--" + name.replace("_", "-"), "OUTBOX_RELAY_" + name.upper()
            raise BadSetting(f"{name} is not set: give {flag}, {env} or {name} in the config file")
    return FeishuClient(cfg.feishu_app_id, cfg.feishu_app_secret, base=cfg.feishu_api_base,
                        rate=cfg.feishu_rate, stop=stop)


# -- status ---------------------------------------------------------------------------------

@cli.command()
@settings_options
@json_option
@click.option("--no-target", is_flag=True, help="Do not contact the target (outbox only).")
@friendly_errors
def status(cfg, as_json, no_target):
    """Outbox counts per state, oldest pending age, relay heartbeat, target reachability, warnings."""
    with _opened(cfg, target=not no_target, create=False, readonly=True) as (outbox, target):
        report = ops.collect_status(cfg, outbox, target)
    _report(report, as_json, ops.format_status)


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
        with _opened(cfg, create=False, readonly=True) as (outbox, target):
            report = ops.collect_status(cfg, outbox, target)
        code, line = ops.health_verdict(report)
    except click.ClickException as e:  # no outbox, unreadable outbox: that is "down" to a monitor
        report, code, line = None, 2, f"DOWN: {e.message}"
    if as_json:
        _emit_json({"code": code, "status": ("ok", "degraded", "down")[code], "line": line, "report": report})
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
    from ..operate.top import run as show
    from ..operate.topdata import MetricsSource, OutboxSource
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter("give the service's address, e.g. http://127.0.0.1:8080", param_hint="--url")
    outbox = _open_outbox(cfg, create=False, readonly=True) if url is None or os.path.exists(cfg.outbox) else None
    try:
        local = OutboxSource(cfg, outbox, expect_relay=url is not None) if outbox is not None else None
        source = MetricsSource(url, fallback=local) if url is not None else local
        sys.exit(show(source, interval=interval, once=once, as_json=as_json))
    finally:
        if outbox is not None:
            outbox.close()


# -- relay ------------------------------------------------------------------------------------

@cli.command()
@settings_options
@click.option("--no-http", is_flag=True, help="Run the relay alone, without the HTTP server.")
@friendly_errors
def run(cfg, no_http):
    """Run the relay (and the HTTP webhook server, unless --no-http) until SIGTERM/SIGINT.

    The first signal finishes the batch in flight and exits 0; a second exits at once.
    """
    from ..service.run import Service
    service = Service(cfg, http=not no_http, relay=True)
    sys.exit(service.run_forever())


@cli.command()
@settings_options
@friendly_errors
def serve(cfg):
    """Run only the HTTP webhook server, against an outbox that a separate relay drains."""
    from ..service.run import Service
    service = Service(cfg, http=True, relay=False)
    sys.exit(service.run_forever())


@cli.command()
@settings_options
@click.option("--max-batches", type=click.IntRange(min=1), default=None,
              help="Stop after this many batches.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Give up after this many seconds (default: wait out an unavailable target).")
@json_option
@friendly_errors
def sync(cfg, max_batches, timeout, as_json):
    """Drain everything pending into the target, then exit (for cron and tests).

    Waits out an unavailable target with backoff (at most --timeout seconds); Ctrl-C stops after
    the batch in flight. Exit 0 when nothing is left pending, 1 when rows are still waiting
    (stopped, timed out, or --max-batches reached). Dead rows are reported, not retried.
    """
    from ..service.run import announce_target, ensure_schema_or_warn, two_signal_shutdown
    from ..sync.relay import Relay, RelayLock
    with _opened(cfg) as (outbox, target):
        with RelayLock(cfg.outbox):
            announce_target(cfg, target)
            ensure_schema_or_warn(target)
            relay = Relay(outbox, target, batch_size=cfg.batch_size)
            restore = two_signal_shutdown(relay.stop)
            timed_out = threading.Event()
            timer = threading.Timer(timeout, lambda: (timed_out.set(), relay.stop())) if timeout else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            spooled = ingest_for_sync(cfg.spool, outbox)
            waiting = outbox.counts()
            try:
                with progress_for() as progress:
                    task = progress.task("syncing", total=waiting["pending"] + waiting["parked"])
                    totals = relay.drain(max_batches, on_step=lambda r: task.advance(r.claimed))
            finally:
                restore()
                if timer is not None:
                    timer.cancel()
        counts = outbox.counts()
    report = {"batches": totals["batches"], "delivered": totals["delivered"], "new": totals["new"],
              "dead": totals["dead"], "pruned": totals["pruned"], "outbox": counts, "spool": spooled}
    if as_json:
        _emit_json(report)
    else:
        click.echo(f"{report['delivered']} delivered ({report['new']} new in the target) in "
                   f"{report['batches']} batches; {report['dead']} dead; outbox now: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if spooled:
            click.echo(f"spool: {spooled['stored']} stored, {spooled['duplicates']} already stored, "
                       f"{spooled['rejected']} set aside, {spooled['waiting']} waiting")
    if counts["pending"] or counts["parked"]:
        why = (f"timed out after {timeout:g} s" if timed_out.is_set()
               else "stopped" if relay.stopping else f"--max-batches {max_batches} reached")
        raise click.ClickException(f"{counts['pending'] + counts['parked']} message(s) still waiting "
                                   f"in the outbox ({why} before the drain finished)")
    if spooled and spooled["waiting"]:
        raise click.ClickException(f"{spooled['waiting']} message(s) still waiting in the spool")


# -- target tools ------------------------------------------------------------------------------

@cli.command()
@settings_options
@json_option
@friendly_errors
def check(cfg, as_json):
    """Connect to the target: server version, round-trip latency, connections in use vs limits."""
    with _opened(cfg, outbox=False, create=False) as (_, target):
        info = target.check()
    info["target"] = target.display_url
    _report(info, as_json, ops.format_check)
    if info.get("table_problems"):
        raise click.ClickException("the table cannot take messages as it is: " + "; ".join(info["table_problems"]))


@cli.command()
@settings_options
@click.option("--sql", "as_sql", is_flag=True, default=True, help="Print the DDL (the default).")
@click.option("--dialect", type=click.Choice(DIALECTS), default=None,
              help="Print for this dialect instead of the target's.")
@friendly_errors
def schema(cfg, as_sql, dialect):
    """Print the target table's DDL for a DBA (RDS users often may not run DDL themselves)."""
    from ..schema import target as schema_mod
    from ..targets import target_class
    click.echo(schema_mod.schema_sql(target_class(dialect or cfg.target), cfg.table), nl=False)


@cli.command("init-db")
@settings_options
@click.option("--no-trigram", is_flag=True, help="Do not try to create pg_trgm and its index.")
@friendly_errors
def init_db(cfg, no_trigram):
    """Create or migrate the target table (and the trigram search index where permitted)."""
    with _opened(cfg, outbox=False) as (_, target):
        report = target.init_db(trigram=not no_trigram)
        problems = target.table_problems()
    click.echo(f"{target.describe()}: schema version {report['from_version']} -> {report['version']}")
    if report["trigram"]:
        click.echo(f"trigram index: {report['trigram']}")
    if problems:
        raise click.ClickException("the table cannot take messages as it is: " + "; ".join(problems))


@cli.command()
@settings_options
@click.option("--parked", is_flag=True, help="List parked rows instead of dead ones.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@friendly_errors
def dead(cfg, parked, limit, as_json):
    """List rows the target refused (dead), with the database's error."""
    with _opened(cfg, target=False, create=False, readonly=True) as (outbox, _):
        rows = outbox.rows("parked" if parked else "dead", limit)
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("no parked rows" if parked else "no dead rows")
        return
    click.echo(ops.format_table(
        ["id", "message_id", "attempts", "error"],
        [[r["id"], r["message_id"], r["attempts"], (r["last_error"] or "")[:100]] for r in rows]))


@cli.command()
@settings_options
@click.option("--force", is_flag=True, help="Rebuild even an outbox that SQLite finds intact.")
@json_option
@friendly_errors
def recover(cfg, force, as_json):
    """Rebuild a damaged outbox: keep every row that can still be read.

    Stop the service first. The damaged file (with its -wal) is moved aside as
    OUTBOX.damaged-<time> and kept; every readable row goes into a new outbox at
    the same path, in the state it had; ids that could not be read are listed.
    """
    from ..outbox.queue import Outbox
    from ..outbox.faults import check_recoverable
    from ..outbox.faults import recover as rebuild
    from ..sync.relay import RelayLock
    path = os.path.abspath(cfg.outbox)
    if not os.path.exists(path):
        raise click.ClickException(f"outbox {path} does not exist: give --outbox / OUTBOX_RELAY_OUTBOX")
    check_recoverable(path)  # never move aside a file that was not an outbox
    with RelayLock(cfg.outbox):  # no relay may be writing the file while it is rebuilt
        if not force and _intact(cfg):
            _report({"outbox": path, "intact": True}, as_json,
                    lambda r: f"outbox {path} is intact (quick_check ok): nothing to recover")
            return
        report = rebuild(cfg.outbox, lambda p: Outbox(p, **cfg.outbox_kwargs()))
    if as_json:
        _emit_json(report)
    else:
        click.echo(f"{report['recovered']} row(s) recovered into {report['outbox']}: "
                   + ", ".join(f"{k} {v}" for k, v in report["counts"].items())
                   + f"; the damaged file is kept at {report['damaged_copy']}")
    if report["unreadable_ids"]:
        raise click.ClickException("rows that could not be read (outbox ids): "
                                   + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in report["unreadable_ids"]))


def _intact(cfg):
    try:
        with contextlib.closing(cfg.open_outbox(readonly=True)) as outbox:
            return outbox.quick_check() == "ok"
    except OutboxError:
        return False


@cli.command()
@settings_options
@click.argument("ids", nargs=-1)
@click.option("--all", "all_rows", is_flag=True, help="Requeue every dead (or parked) row.")
@click.option("--parked", is_flag=True, help="Requeue parked rows instead of dead ones.")
@click.option("--wait", is_flag=True,
              help="Then follow the rows until the running relay has delivered them (a bar on a terminal); "
                   "exit 1 if any is refused again.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="With --wait: stop waiting after this many seconds (the rows stay requeued).")
@friendly_errors
def replay(cfg, ids, all_rows, parked, wait, timeout):
    """Requeue dead (or parked) rows as pending, by outbox id or message_id, or --all.

    With --wait it then shows their delivery by the running relay (exit 0 once every one is
    delivered, 1 if one is refused again or the wait ends first).
    """
    if not ids and not all_rows:
        raise click.UsageError("give row ids / message_ids, or --all")
    if ids and all_rows:
        raise click.UsageError("give either ids or --all, not both")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    state = "parked" if parked else "dead"
    if wait:
        n = _replay_and_wait(cfg, None if all_rows else list(ids), state, timeout)
    else:
        with _opened(cfg, target=False, create=False) as (outbox, _):
            n = outbox.replay(None if all_rows else list(ids), states=(state,))
        click.echo(f"{n} requeued")
    if ids and n < len(ids):
        raise click.ClickException(f"{len(ids) - n} of the {len(ids)} given ids matched no {state} row")


def _replay_and_wait(cfg, keys, state, timeout):
    from ..operate.health import relay_running
    from ..operate.replay import replay_and_wait
    from ..service.run import two_signal_shutdown
    with _opened(cfg, target=False, create=False) as (outbox, _):
        if not relay_running(cfg.outbox):  # checked before anything changes
            raise click.ClickException("no relay is running for this outbox, so nothing would deliver the rows: "
                                       "start `outbox-relay run`, or replay without --wait and run `outbox-relay sync`")
        stop = threading.Event()
        restore = two_signal_shutdown(stop.set)
        try:
            with progress_for() as progress:
                report = replay_and_wait(outbox, keys, state, progress=progress, stop=stop, timeout=timeout)
        finally:
            restore()
    click.echo(f"{report['requeued']} requeued; {report['delivered']} delivered, {report['dead']} refused again, "
               f"{report['waiting']} still waiting")
    if report["dead"]:
        raise click.ClickException(f"{report['dead']} row(s) refused again by the target: see `outbox-relay dead`")
    if report["waiting"]:
        raise click.ClickException(f"{report['waiting']} row(s) still waiting ({report['why']}); they stay pending "
                                   "and the relay delivers them")
    return report["requeued"]


@cli.command("spool")
@settings_options
@click.option("--retry", "names", multiple=True, metavar="NAME",
              help="Move this set-aside item back to be ingested again (repeatable).")
@click.option("--retry-all", is_flag=True, help="Move every set-aside item back.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@friendly_errors
def spool_cmd(cfg, names, retry_all, limit, as_json):
    """The handoff spool: what waits, and the items set aside as not messages, each with its reason.

    --retry NAME / --retry-all move set-aside items back once their cause is fixed (an upgrade that
    reads them, a permission); one that still is not a message is set aside again.
    """
    spool = Spool(cfg.spool)
    if not spool.exists():
        raise click.ClickException(
            f"spool {os.path.abspath(cfg.spool)} does not exist: run this where the service runs, "
            "or give --spool / OUTBOX_RELAY_SPOOL")
    if names and retry_all:
        raise click.UsageError("give either --retry NAME or --retry-all, not both")
    if names or retry_all:
        _retry_spool(spool, None if retry_all else list(names), as_json)
        return
    data = {"spool": spool.status(), "rejected": spool.rejected_items(limit)}
    _report(data, as_json, format_spool)


def _retry_spool(spool, names, as_json):
    moved = spool.retry(names)
    missing = [n for n in names or () if n not in moved]
    if as_json:
        _emit_json({"moved": moved, "missing": missing})
    else:
        click.echo(f"{len(moved)} moved back to {spool.new}")
    if missing:
        raise click.ClickException(f"{len(missing)} name(s) matched no set-aside item: {', '.join(missing[:5])}")


# -- query side ----------------------------------------------------------------------------------

@cli.command()
@settings_options
@click.argument("keyword")
@click.option("--chat", help="Only this chat_id.")
@click.option("--sender", help="Only this sender_id.")
@click.option("--type", "msg_type", help="Only this msg_type (text, post, image …).")
@click.option("--since", help="From this date/time or relative age (2026-11-01, 7d, 12h).")
@click.option("--until", help="Before this date/time or relative age.")
@click.option("--limit", type=click.IntRange(min=1, max=10000), default=20, show_default=True)
@json_option
@friendly_errors
def search(cfg, keyword, chat, sender, msg_type, since, until, limit, as_json):
    """Find KEYWORD in message text, in the target and in the outbox (not yet delivered), newest first.

    The keyword is matched literally (% and _ are not wildcards); Chinese works
    without word boundaries.
    """
    from ..archive.search import search_messages
    if not keyword:
        raise click.UsageError("the keyword must not be empty")
    try:
        since_ms = parse_when(since, "--since")
        until_ms = parse_when(until, "--until")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    with _opened(cfg, create=False, readonly=True) as (outbox, target):
        result = search_messages(outbox, target, keyword, chat=chat, sender=sender, msg_type=msg_type,
                                 since_ms=since_ms, until_ms=until_ms, limit=limit)
    _report(result, as_json, ops.format_search)


@cli.command()
@settings_options
@click.option("--days", type=click.IntRange(min=1, max=3650), default=7, show_default=True,
              help="Messages per day for the last N days.")
@click.option("--top", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@json_option
@friendly_errors
def stats(cfg, days, top, as_json):
    """Totals, messages per day, top chats and senders, by type; outbox state; connections used."""
    from ..archive.search import collect_stats
    with _opened(cfg, create=False, readonly=True) as (outbox, target):
        result = collect_stats(outbox, target, days=days, top=top)
    _report(result, as_json, ops.format_stats)


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
    with _opened(cfg) as (outbox, target):
        ok, line = ops.end_to_end_test(cfg, outbox, target, timeout)
    if as_json:
        _emit_json({"ok": ok, "line": line})
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
        _emit_json({k: v["value"] for k, v in masked.items()})
        return
    click.echo(ops.format_table(["setting", "value", "from"],
                            [[k, "" if v["value"] is None else v["value"], v["from"]]
                             for k, v in masked.items()]))
    if cfg.config_file:
        click.echo(f"config file: {cfg.config_file}")


if __name__ == "__main__":  # pragma: no cover
    main()
