"""The `outbox-relay` group: version, logging flags; every command module adds itself to it."""

import logging

import click

from .. import __version__
from ..config import ENV_PREFIX
from ..logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox-relay")
@click.option("--log-json", is_flag=True, envvar=ENV_PREFIX + "LOG_JSON", help="Log JSON lines (for machines).")
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
