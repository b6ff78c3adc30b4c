"""Commands that read the archive: search, stats, history, export."""

import contextlib
import io
import os
import sys

import click

from ..operate.human import format_history, format_search, format_stats
from ..progress import progress_for
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
    unknown = result["message"] is None and not result["events"] and not result["waiting"]
    if as_json or not unknown:  # a person asking for an unknown id gets the one line below, not an empty report
        show(result, as_json, format_history)
    if unknown:
        raise click.ClickException(f"the archive holds nothing of message {message_id}"
                                   + (f" (the target could not be read: {result['target_error']})"
                                      if result["target_error"] else ""))


@cli.command()
@settings_options
@click.option("--chat", "chats", multiple=True, help="Only this chat_id (repeatable).")
@click.option("--sender", "senders", multiple=True, help="Only this sender_id (repeatable).")
@click.option("--since", help="From this date/time or relative age (2026-07-01, 90d).")
@click.option("--until", help="Before this date/time or relative age.")
@click.option("--format", "fmt", type=click.Choice(("jsonl", "csv")), required=True,
              help="jsonl: one message with its history a line, which `put` reads back into another archive;"
                   " csv: the same fields for a spreadsheet.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")
@click.option("--bom", is_flag=True,
              help="Start the CSV with a UTF-8 byte-order mark (Excel then reads Chinese right).")
@friendly_errors
def export(cfg, chats, senders, since, until, fmt, output, bom):
    """Write the archive's messages, each with its history (edits, recalls, reactions), oldest first, in
    constant memory: the whole archive, or those of --chat, --sender, --since, --until.

    A bar on a terminal; the counts on stderr when done.
    """
    from ..archive.export import export as run_export
    since_ms, until_ms = time_range(since, until)
    with opened(cfg, outbox=False, create=False, readonly=True) as (_, target):
        with _output(output) as out, progress_for() as progress:
            counts = run_export(target, out, fmt=fmt, chats=chats, senders=senders, since_ms=since_ms,
                                until_ms=until_ms, bom=bom, progress=progress)
    click.echo(f"exported {counts['messages']} messages and {counts['events']} events"
               + ("" if counts["history"] else f" (no {target.events_table}: without history)"), err=True)


@contextlib.contextmanager
def _output(path):
    """stdout, or the file: written as FILE.partial, renamed into place when whole (a failed export
    leaves no file that looks complete); a device or a pipe is written directly."""
    if path is None:
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            yield out
            out.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): what it wanted it has. Nothing more goes to that pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        finally:
            out.detach()  # stdout stays open for what click writes after
        return
    if os.path.exists(path) and not os.path.isfile(path):
        # A device or a pipe (/dev/null, a FIFO): written as it is; a rename would replace it with a file.
        with open(path, "w", encoding="utf-8", newline="") as out:
            yield out
        return
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(partial, path)
    except OSError as e:  # a full disk, a directory that went away: one line, no half file
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
