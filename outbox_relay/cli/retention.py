"""Commands that manage the archive's life: its layout (partition), retention, legal holds."""

import click

from ..operate.human import format_holds, format_retention
from ..progress import progress_for
from ..timeconv import parse_duration
from .group import cli
from .options import BadSetting, friendly_errors, json_option, opened, settings_options, show


@cli.command()
@settings_options
@click.option("--keep", required=True, metavar="DURATION",
              help="How long to keep: 400d, 8w, 18mo, 3y (never a bare m: months are mo).")
@click.option("--dry-run", is_flag=True, help="Print what would go, per month and chat; change nothing.")
@json_option
@friendly_errors
def retention(cfg, keep, dry_run, as_json):
    """Drop the months of a partitioned archive wholly older than --keep (DETACH + DROP of their partitions:
    no row-by-row delete), keeping the rows of chats under hold (`outbox-relay hold`).

    Refused on a plain (unpartitioned) table: `outbox-relay partition --convert` first.
    """
    from ..archive.retention import apply_retention
    try:
        duration = parse_duration(keep)
    except ValueError as e:
        raise BadSetting(str(e)) from None
    with opened(cfg, outbox=False, create=False) as (_, target):
        target.adopt_layout()
        report = apply_retention(target, duration, dry_run=dry_run)
    show(report, as_json, format_retention)


@cli.group()
def hold():
    """Legal holds: chats whose messages retention keeps, with an audit of every change."""


def _hold_options(fn):
    fn = click.option("--by", help="Who asks (recorded in the audit; default: the OS user).")(fn)
    fn = click.option("--reason", required=True, help="Why (recorded in the audit).")(fn)
    return click.argument("chat_id")(fn)


def _change_hold(cfg, chat_id, reason, by, as_json, change, verb):
    """add_hold or remove_hold on the target, said in one line (or JSON)."""
    with opened(cfg, outbox=False, create=False) as (_, target):
        result = change(target, chat_id, reason, by)
    show(result, as_json, lambda h: f"{verb} {h['chat_id']} ({h['reason']}), by {h['by']} at {h['at']}")


def _hold_change_command(name):
    """`hold add` and `hold remove`: the same options and errors, a command of `hold`."""
    def decorate(fn):
        return hold.command(name)(settings_options(_hold_options(json_option(friendly_errors(fn)))))
    return decorate


@_hold_change_command("add")
def hold_add(cfg, chat_id, reason, by, as_json):
    """Put CHAT_ID under hold: retention keeps its messages."""
    from ..archive.holds import add_hold
    _change_hold(cfg, chat_id, reason, by, as_json, add_hold, "held")


@_hold_change_command("remove")
def hold_remove(cfg, chat_id, reason, by, as_json):
    """End the hold on CHAT_ID (the audit keeps it); exit 1 when it is not held."""
    from ..archive.holds import remove_hold
    _change_hold(cfg, chat_id, reason, by, as_json, remove_hold, "released")


@hold.command("list")
@settings_options
@click.option("--audit", is_flag=True, help="Every add and removal too, oldest first.")
@json_option
@friendly_errors
def hold_list(cfg, audit, as_json):
    """The chats under hold now (and, --audit, every change: who, when, why)."""
    from ..archive.holds import list_holds
    with opened(cfg, outbox=False, create=False) as (_, target):
        result = list_holds(target)
    show(result, as_json, lambda r: format_holds(r, audit))


@cli.command()
@settings_options
@click.option("--convert", is_flag=True,
              help="Move a plain table into the partitioned layout while relays keep delivering (resumable).")
@click.option("--rows-per-batch", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Rows copied a transaction by --convert.")
@json_option
@friendly_errors
def partition(cfg, convert, rows_per_batch, as_json):
    """The messages table's layout and its partitions; --convert makes a plain table partitioned by month.

    --convert copies the rows in batches while a trigger mirrors what relays write meanwhile, then swaps
    the tables in one short transaction; the plain table is kept as TABLE_plain until you drop it. Killed,
    it goes on from where it stopped when run again.
    """
    from ..targets.convert import Conversion
    with opened(cfg, outbox=False, create=False) as (_, target):
        if convert:
            with progress_for() as progress:
                result = Conversion(target, rows_per_batch, progress).run()
            show(result, as_json, lambda r: f"{target.table} is partitioned by month ({r['copied']} rows copied by"
                                            f" this run); the plain table is kept as {r['old']}: DROP it when"
                                            " you are satisfied")
            return
        layout = target.adopt_layout()
        parts = [{"month": f"{y:04d}-{m:02d}" if y else "default", "partition": name}
                 for y, m, name in layout.partitions(target)] if layout.partitioned else []
    show({"table": target.table, "layout": layout.name, "partitions": parts}, as_json,
         lambda r: "\n".join([f"{r['table']}: {r['layout']}"] + [f"  {p['month']:<8} {p['partition']}"
                                                                 for p in r["partitions"]]))
