"""outbox-relay: every Feishu message into a database (PostgreSQL, MySQL, SQLite) via a local SQLite outbox."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConfigError,
    InvalidMessage,
    NotAMessage,
    OutboxCorrupt,
    OutboxError,
    OutboxFull,
    OutboxRelayError,
    OutboxUnavailable,
    RelayLocked,
    RowRejected,
    SpoolError,
    TargetError,
    TargetUnavailable,
)
from .message import Message, normalize  # noqa: E402
from .outbox import Outbox, PutResult  # noqa: E402


def __getattr__(name):
    # The relay and target pull in peewee and psycopg2; a gateway that only puts
    # should not pay for importing them.
    if name == "Relay":
        from .sync import Relay
        return Relay
    if name == "Target":
        from .targets.base import Target
        return Target
    if name == "open_target":
        from .targets import open_target
        return open_target
    if name == "Config":
        from .config import Config
        return Config
    if name == "FeishuMessageSync":  # the seed's call, for users who wired it in (intake/compat.py)
        from .intake.compat import FeishuMessageSync
        return FeishuMessageSync
    if name == "Spool":
        from .intake.spool import Spool
        return Spool
    raise AttributeError(f"module 'outbox_relay' has no attribute {name!r}")


__all__ = [
    "__version__", "Outbox", "PutResult", "Message", "normalize", "Relay", "Target", "open_target", "Config",
    "FeishuMessageSync", "Spool", "SpoolError",
    "OutboxRelayError", "InvalidMessage", "NotAMessage", "OutboxError", "OutboxFull",
    "OutboxUnavailable", "OutboxCorrupt", "RelayLocked", "ConfigError", "TargetError", "TargetUnavailable",
    "RowRejected",
]
