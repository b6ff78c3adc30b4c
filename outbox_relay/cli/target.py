"""Commands about the target database: check, schema, init-db."""

import click

from ..operate.human import format_check
from ..schema import schema_sql
from ..schema.target import read_side_sql
from ..targets import DIALECTS, target_class
from .group import cli
from .options import friendly_errors, json_option, opened, settings_options, show


@cli.command()
@settings_options
@json_option
@friendly_errors
def check(cfg, as_json):
    """Connect to the target: server version, round-trip latency, connections in use vs limits, and
    what in the table or the server's settings would keep messages out (exit 1)."""
    with opened(cfg, outbox=False, create=False) as (_, target):
        info = target.check()
    info["target"] = target.display_url
    show(info, as_json, format_check)
    if info.get("table_problems"):
        raise click.ClickException("the table cannot take messages as it is: " + "; ".join(info["table_problems"]))
    if info.get("setting_problems"):
        raise click.ClickException("the server cannot take every message: " + "; ".join(info["setting_problems"]))


@cli.command()
@settings_options
@click.option("--sql", "as_sql", is_flag=True, default=True, help="Print the DDL (the default).")
@click.option("--dialect", type=click.Choice(DIALECTS), default=None,
              help="Print for this dialect instead of the target's.")
@click.option("--search", "search_only", is_flag=True,
              help="Only what makes search and stats fast: the search indexes and the stats rollup.")
@friendly_errors
def schema(cfg, as_sql, dialect, search_only):
    """Print the target table's DDL for a DBA (RDS users often may not run DDL themselves)."""
    db = target_class(dialect or cfg.target)
    if search_only:
        click.echo("\n".join(read_side_sql(db, cfg.table)) + "\n", nl=False)
    else:
        click.echo(schema_sql(db, cfg.table, partitioned=cfg.partition != "none"), nl=False)


@cli.command("init-db")
@settings_options
@click.option("--no-trigram", is_flag=True, help="Do not try to create pg_trgm and its index.")
@friendly_errors
def init_db(cfg, no_trigram):
    """Create or migrate the target table (and the trigram search index where permitted)."""
    with opened(cfg, outbox=False) as (_, target):
        result = target.init_db(trigram=not no_trigram)
        problems = target.table_problems()
    click.echo(f"{target.describe()}: schema version {result['from_version']} -> {result['version']}")
    if result["dropped"]:
        click.echo(f"table {target.table} had been dropped: made again (its rows went with it)")
    if result["trigram"]:
        click.echo(f"trigram index: {result['trigram']}")
    for name, outcome in result["search"].items():
        click.echo(f"search index {name}: {outcome}")
    if result["rollup"]:
        click.echo(f"stats rollup: {result['rollup']}")
    if problems:
        raise click.ClickException("the table cannot take messages as it is: " + "; ".join(problems))
