"""One error tree for the whole package (dramatiq's errors.py is the model).

Driver errors (sqlite3, psycopg2, peewee) are translated at one boundary each:
the outbox for SQLite, target.classify() for the target database.
"""


class OutboxRelayError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidMessage(OutboxRelayError, ValueError):
    """Raised by the normalizer when a payload is not a message we can store."""


class NotAMessage(InvalidMessage):
    """Raised for a well-formed Feishu event that is not a chat message.

    The webhook acknowledges these (200) and stores nothing; `event_type` says
    what it was (``url_verification``, ``im.chat.member.bot.added_v1`` …).
    """

    def __init__(self, event_type, detail=None):
        self.event_type = event_type
        super().__init__(detail or f"not a chat message: event type {event_type!r}")


class OutboxError(OutboxRelayError):
    """Raised when the local outbox cannot do what was asked."""


class OutboxFull(OutboxError):
    """Raised by put() under ``overflow=reject`` when max_pending rows are already pending."""


class OutboxUnavailable(OutboxError):
    """Raised when the outbox cannot commit now (locked past busy_timeout, disk full, read-only)."""


class OutboxCorrupt(OutboxUnavailable):
    """Raised when SQLite finds the outbox file damaged (SQLITE_CORRUPT / SQLITE_NOTADB, or a failed
    quick_check): stop writing into it and run `outbox-relay recover`."""


class RelayLocked(OutboxRelayError):
    """Raised when another relay already works this outbox (the lock beside the file is held)."""


class RelayNotRunning(OutboxRelayError):
    """Raised by what needs a running relay to finish (`replay --wait`) when none works the outbox."""


class ConfigError(OutboxRelayError, ValueError):
    """Raised for a configuration value that is missing, malformed or out of range."""


class TargetError(OutboxRelayError):
    """Raised for a target database failure, already classified.

    `transient` errors (connection lost, timeouts, SQLSTATE 08/53/57/40…) leave
    rows pending and are retried; the others are about the rows themselves.
    """

    def __init__(self, message, *, transient, sqlstate=None):
        self.transient = transient
        self.sqlstate = sqlstate
        super().__init__(message)


class TargetUnavailable(TargetError):
    """Raised for an error the relay waits out: the rows stay pending."""

    def __init__(self, message, sqlstate=None):
        super().__init__(message, transient=True, sqlstate=sqlstate)


class TableMissing(TargetUnavailable):
    """Raised when the target table does not exist (a DBA dropped it): the relay makes it again where
    it may, else the rows wait for the DBA."""


class StatementTimeout(TargetUnavailable):
    """Raised when a statement ran past the target's statement timeout: the rows are fine, but the
    batch may be too big to pass in time (the relay cuts it)."""


class RowRejected(TargetError):
    """Raised when the target refuses the data itself (SQLSTATE class 22, 23): isolate and park it."""

    def __init__(self, message, sqlstate=None):
        super().__init__(message, transient=False, sqlstate=sqlstate)


class SignatureError(OutboxRelayError):
    """Raised when a Feishu signature, verification token or bearer token does not match."""


class DecryptError(InvalidMessage):
    """Raised when an encrypted Feishu body cannot be decrypted with the configured key."""


class LayoutError(OutboxRelayError):
    """Raised when the archive's table has not the layout an operation needs (retention on a plain table)."""


class SpoolError(OutboxRelayError):
    """Raised when the handoff spool cannot be written or read (missing, unreadable, unwritable, full),
    or is given a name no spool item can have."""


class HookInstallError(OutboxRelayError):
    """Raised when the OpenClaw hook cannot be installed into the hooks directory given."""


class FeishuError(OutboxRelayError):
    """Raised when Feishu's Open API cannot give the backfill what it asked for."""


class FeishuApiError(FeishuError):
    """Raised for an Open API answer that retrying cannot fix (no permission, bot not in the chat).

    `code` and `msg` are Feishu's own; `status` is the HTTP status of the answer.
    """

    def __init__(self, code, msg, status=None):
        self.code = code
        self.msg = msg
        self.status = status
        super().__init__(msg if code is None else f"{msg} (Feishu code {code})")


class FeishuUnavailable(FeishuError):
    """Raised when the Open API kept failing (5xx, dropped connections, timeouts) past the retries."""


class BudgetSpent(FeishuError):
    """Raised before an Open API request the reconciler's hourly budget (feishu_reconcile_budget) has
    no room for: the request is not sent, and the pass ends there."""


class FeishuCredentialsError(ConfigError):
    """Raised when Feishu refuses the app id / app secret: a setting to fix, not a fault to retry."""


class Stopped(Exception):
    """Not an error, so outside the tree: a stop was asked for (SIGTERM, Ctrl-C) while a backfill waited
    (for the Open API, for room in the outbox). The caller winds down and reports what it did."""
