"""Commands that hand messages in: put, import-json, and the spool's set-aside items."""

import os

import click

from ..config import BY_NAME
from ..errors import SpoolError
from ..intake.import_json import import_json_file
from ..intake.spool import Spool
from ..message import parse_lines
from ..operate.human import format_spool
from ..progress import progress_for
from .group import cli
from .options import emit_json, friendly_errors, json_option, opened, settings_options, show


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
    messages = parse_lines(source.read())
    with opened(cfg, target=False) as (outbox, _):
        results = outbox.put_many(messages)
    if as_json:
        emit_json([r._asdict() for r in results])
        return
    for r in results:
        click.echo(f"{'duplicate' if r.duplicate else 'stored'}\t{r.message_id}\t{r.state}")


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
    with opened(cfg, target=False) as (outbox, _):
        with progress_for() as progress:
            result = import_json_file(outbox, path, progress=progress)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['imported']} imported, {result['duplicates']} already present, "
               f"{len(result['errors'])} bad (of {result['total']})")
    for err in result["errors"]:
        click.echo(f"  entry {err['index']}: {err['error']}", err=True)


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
            f"or give {BY_NAME['spool'].named}")
    if names and retry_all:
        raise click.UsageError("give either --retry NAME or --retry-all, not both")
    if names or retry_all:
        _retry_spool(spool, None if retry_all else list(names), as_json)
        return
    status = spool.status()
    if status["error"]:
        raise SpoolError(status["error"])
    show({"spool": status, "rejected": spool.rejected_items(limit)}, as_json, format_spool)


def _retry_spool(spool, names, as_json):
    moved = spool.retry(names)
    missing = [n for n in names or () if n not in moved]
    if as_json:
        emit_json({"moved": moved, "missing": missing})
    else:
        click.echo(f"{len(moved)} moved back to {spool.new}")
    if missing:
        raise click.ClickException(f"{len(missing)} name(s) matched no set-aside item: {', '.join(missing[:5])}")
