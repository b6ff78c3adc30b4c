"""Commands about the outbox's rows: dead, replay, recover."""

import contextlib
import os
import threading

import click

from ..config import BY_NAME
from ..errors import OutboxError
from ..operate.human import format_table
from ..progress import progress_for
from .group import cli
from .options import emit_json, friendly_errors, json_option, opened, settings_options, show


@cli.command()
@settings_options
@click.option("--parked", is_flag=True, help="List parked rows instead of dead ones.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@friendly_errors
def dead(cfg, parked, limit, as_json):
    """List rows the target refused (dead), with the database's error."""
    with opened(cfg, target=False, create=False, readonly=True) as (outbox, _):
        rows = outbox.rows("parked" if parked else "dead", limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no parked rows" if parked else "no dead rows")
        return
    click.echo(format_table(
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
    from ..outbox import Outbox
    from ..outbox.faults import check_recoverable
    from ..outbox.faults import recover as rebuild
    from ..sync import RelayLock
    path = os.path.abspath(cfg.outbox)
    if not os.path.exists(path):
        raise click.ClickException(f"outbox {path} does not exist: give {BY_NAME['outbox'].named}")
    check_recoverable(path)  # never move aside a file that was not an outbox
    with RelayLock(cfg.outbox):  # no relay may be writing the file while it is rebuilt
        if not force and _intact(cfg):
            show({"outbox": path, "intact": True}, as_json,
                 lambda r: f"outbox {path} is intact (quick_check ok): nothing to recover")
            return
        result = rebuild(cfg.outbox, lambda p: Outbox(p, **cfg.outbox_kwargs()))
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{result['recovered']} row(s) recovered into {result['outbox']}: "
                   + ", ".join(f"{k} {v}" for k, v in result["counts"].items())
                   + f"; the damaged file is kept at {result['damaged_copy']}")
    if result["unreadable_ids"]:
        raise click.ClickException("rows that could not be read (outbox ids): "
                                   + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in result["unreadable_ids"]))


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
        with opened(cfg, target=False, create=False) as (outbox, _):
            n = len(outbox.replay(None if all_rows else list(ids), states=(state,)))
        click.echo(f"{n} requeued")
    if ids and n < len(ids):
        raise click.ClickException(f"{len(ids) - n} of the {len(ids)} given ids matched no {state} row")


def _replay_and_wait(cfg, keys, state, timeout):
    from ..operate.replay import replay_and_wait
    from ..service.lifecycle import two_signal_shutdown
    with opened(cfg, target=False, create=False) as (outbox, _):
        stop = threading.Event()
        restore = two_signal_shutdown(stop.set)
        try:
            with progress_for() as progress:
                result = replay_and_wait(outbox, keys, state, progress=progress, stop=stop, timeout=timeout)
        finally:
            restore()
    click.echo(f"{result['requeued']} requeued; {result['delivered']} delivered, {result['dead']} refused again, "
               f"{result['waiting']} still waiting")
    if result["dead"]:
        raise click.ClickException(f"{result['dead']} row(s) refused again by the target: see `outbox-relay dead`")
    if result["waiting"]:
        raise click.ClickException(f"{result['waiting']} row(s) still waiting ({result['why']}); they stay pending "
                                   "and the relay delivers them")
    return result["requeued"]
