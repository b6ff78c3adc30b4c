"""`outbox-relay`: the command line."""

from .commands import cli, main  # noqa: F401
