"""`outbox-relay backfill openclaw|feishu`: recover what never reached the archive."""

import contextlib
import os
import threading

import click

from ..operate.human import format_feishu_backfill, format_openclaw_backfill
from ..progress import progress_for
from ..timeconv import now_ms
from .group import cli
from .openclaw import openclaw_state_dir
from .options import BadSetting, friendly_errors, json_option, opened, require, settings_options, show, time_range


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

    DIR is OpenClaw's state directory (default: $OPENCLAW_STATE_DIR, else
    $OPENCLAW_HOME/.openclaw, else ~/.openclaw, as the gateway resolves it): every agent's JSONL
    sessions (with reset and migration archives) and its SQLite store, opened read-only while the
    gateway runs. Run it as the gateway's user: OpenClaw makes agents/ mode 0700. Assistant
    lines, compactions, tool output and other channels are skipped and counted, and so is a line
    that is not JSON or longer than OpenClaw's 4 MiB bound. Exit 0 when everything was read, 1
    when a file or store could not be read (the report says which).
    """
    from ..backfill.openclaw import backfill_openclaw
    from ..backfill.openclaw_sources import TranscriptsUnreadable, check_root
    since_ms, until_ms = time_range(since, until)
    root = os.path.expanduser(directory) if directory else openclaw_state_dir()
    try:
        check_root(root)  # before the outbox is opened: a wrong DIR changes nothing
    except TranscriptsUnreadable as e:
        raise BadSetting(str(e)) from None
    stop = threading.Event()
    with _backfilling(cfg, dry_run, stop) as (outbox, target):
        with progress_for() as progress:
            result = backfill_openclaw(root, outbox, target, since_ms=since_ms, until_ms=until_ms,
                                       dry_run=dry_run, progress=progress, stop=stop)
    show(result, as_json, format_openclaw_backfill)
    if result["unreadable_sources"]:
        raise click.ClickException(
            f"{len(result['unreadable_sources'])} source(s) could not be read (listed above): the messages in them"
            " are not committed; fix or move them, then run the backfill again")


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
    second. The first SIGTERM/Ctrl-C stops at once (a request in flight is cut off); a rerun continues
    where it stopped. Exit 0 when every chat is complete, 1 when a chat failed or the run stopped, 2 for a setting
    (a missing app id or secret, or one Feishu refuses).
    """
    from ..backfill.feishu import backfill_feishu as run_backfill
    from ..backfill.feishu_api import FeishuClient
    since_ms, until_ms = time_range(since, until, until_default=now_ms())
    require(cfg, "feishu_app_id", "feishu_app_secret")
    stop = threading.Event()
    client = FeishuClient(cfg.feishu_app_id, cfg.feishu_app_secret, base=cfg.feishu_api_base,
                          rate=cfg.feishu_rate, stop=stop)
    try:
        with _backfilling(cfg, dry_run, stop) as (outbox, target):
            with progress_for() as progress:
                result = run_backfill(client, outbox, target, since_ms=since_ms, until_ms=until_ms,
                                      chats=list(chats), dry_run=dry_run, recheck=recheck, progress=progress)
    finally:
        client.close()
    show(result, as_json, format_feishu_backfill)
    if not result["complete"]:
        failed = result["totals"]["failed"]
        why = "stopped before the end" if result["stopped"] else f"{failed} chat(s) failed"
        raise click.ClickException(f"backfill incomplete: {why}; run it again to continue")


@contextlib.contextmanager
def _backfilling(cfg, dry_run, stop):
    """(outbox, target) for a backfill, with the first SIGTERM/Ctrl-C setting `stop`. A dry run reads
    the outbox only where it exists (None otherwise) and never creates anything; a real run creates
    the outbox and, where it may, the target's table. The target is used to skip what it holds."""
    from ..service.lifecycle import ensure_schema_or_warn, two_signal_shutdown
    with opened(cfg, outbox=not dry_run or os.path.exists(cfg.outbox), create=not dry_run,
                readonly=dry_run) as (outbox, target):
        if not dry_run:
            ensure_schema_or_warn(target)
        restore = two_signal_shutdown(stop.set)
        try:
            yield outbox, target
        finally:
            restore()
