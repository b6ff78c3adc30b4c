"""Commands that read the archive: search, stats, history."""

import click

from ..operate.human import format_history, format_search, format_stats
from .group import cli
from .options import friendly_errors, json_option, opened, settings_options, show, time_range


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
    since_ms, until_ms = time_range(since, until)
    with opened(cfg, create=False, readonly=True) as (outbox, target):
        result = search_messages(outbox, target, keyword, chat=chat, sender=sender, msg_type=msg_type,
                                 since_ms=since_ms, until_ms=until_ms, limit=limit)
    show(result, as_json, format_search)


@cli.command()
@settings_options
@click.option("--days", type=click.IntRange(min=1, max=3650), default=7, show_default=True,
              help="Messages per day for the last N days.")
@click.option("--top", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@json_option
@friendly_errors
def stats(cfg, days, top, as_json):
    """Totals, messages per day, top chats and senders, by type; outbox state; connections used."""
    from ..archive.stats import collect_stats
    with opened(cfg, create=False, readonly=True) as (outbox, target):
        result = collect_stats(outbox, target, days=days, top=top)
    show(result, as_json, format_stats)


@cli.command()
@settings_options
@click.argument("message_id")
@json_option
@friendly_errors
def history(cfg, message_id, as_json):
    """One message's history: as first archived, as the chat shows it now, and every edit, recall
    and reaction in Feishu's order (with those still waiting in the outbox); its current reactions.

    Exit 1 when the archive knows nothing of MESSAGE_ID.
    """
    from ..archive.history import message_history
    with opened(cfg, create=False, readonly=True) as (outbox, target):
        result = message_history(target, outbox, message_id)
    show(result, as_json, format_history)
    if result["message"] is None and not result["events"] and not result["waiting"]:
        raise click.ClickException(f"the archive holds nothing of message {message_id}"
                                   + (f" (the target could not be read: {result['target_error']})"
                                      if result["target_error"] else ""))
