"""`outbox-relay`: thin commands grouped like the package (each module registers its commands on the
group in group.py; options.py holds what they share)."""

from . import archive, backfill, intake, openclaw, operate, outbox, relay, retention, target  # noqa: F401  (they register)
from .group import cli, main  # noqa: F401
