"""Commands that run the relay: run (with the webhook), serve (the webhook alone), sync (one drain).
The service is imported inside each command: `put` and the other quick commands never load the HTTP
stack."""

import sys

import click

from ..progress import progress_for
from .group import cli
from .options import emit_json, friendly_errors, json_option, settings_options


@cli.command()
@settings_options
@click.option("--no-http", is_flag=True, help="Run the relay alone, without the HTTP server.")
@friendly_errors
def run(cfg, no_http):
    """Run the relay (and the HTTP webhook server, unless --no-http) until SIGTERM/SIGINT.

    With --feishu-app-id and --feishu-app-secret it also reconciles the archive with Feishu's
    history every --feishu-reconcile-interval seconds (0: never), within --feishu-reconcile-budget
    calls an hour; `status` says how far the archive is proven complete. The first signal finishes
    the batch in flight and exits 0; a second exits at once.
    """
    from ..service import Service
    sys.exit(Service(cfg, http=not no_http, relay=True).run_forever())


@cli.command()
@settings_options
@friendly_errors
def serve(cfg):
    """Run only the HTTP webhook server, against an outbox that a separate relay drains."""
    from ..service import Service
    sys.exit(Service(cfg, http=True, relay=False).run_forever())


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
    the chunk or batch in flight. Exit 0 when nothing is left pending, 1 when rows are still waiting
    (stopped, timed out, or --max-batches reached) or the spool could not be read. Dead rows are
    reported, not retried.
    """
    from ..operate.human import format_sync_spool, spool_count
    from ..service import sync_once
    with progress_for() as progress:
        result = sync_once(cfg, max_batches=max_batches, timeout=timeout, progress=progress)
    counts, spooled = result["outbox"], result["spool"]
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "unfinished"})
    else:
        click.echo(f"{result['delivered']} delivered ({result['new']} new in the target) in "
                   f"{result['batches']} batches; {result['dead']} dead; outbox now: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if spooled:
            click.echo(format_sync_spool(spooled))
    if result["unfinished"]:
        raise click.ClickException(f"{counts['pending'] + counts['parked']} message(s) still waiting "
                                   f"in the outbox ({result['unfinished']} before the drain finished)")
    if spooled and (spooled["error"] or spooled["waiting"]):
        left = ("" if spooled["waiting"] is None
                else f"{spool_count(spooled, 'waiting')} message(s) still waiting in the spool")
        raise click.ClickException(": ".join(filter(None, (left, spooled["error"]))))
