"""Target databases, one class each (base.py holds what they share). This is the one place that
picks the class for a URL; nothing else asks which database it is talking to.

Classes are imported when a URL names them, so reading a setting never loads a database driver.
"""

import importlib
import urllib.parse

from ..errors import ConfigError
from ..logs import mask_url

# URL scheme -> "module:Class" under this package.
SCHEMES = {
    "postgresql": "postgres:PostgresTarget",
    "postgres": "postgres:PostgresTarget",
    "sqlite": "sqlite:SqliteTarget",
    "mysql": "mysql:MySQLTarget",
    "mariadb": "mysql:MySQLTarget",
}
# One name per class, for `schema --dialect`.
DIALECTS = ("postgresql", "sqlite", "mysql")


def target_class(url_or_dialect):
    """The Target subclass for a URL (or a dialect name). Raises ConfigError."""
    text = url_or_dialect if isinstance(url_or_dialect, str) else ""
    scheme = urllib.parse.urlsplit(text).scheme.split("+")[0] if "://" in text else text
    where = SCHEMES.get(scheme.lower())
    if where is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"unsupported target URL {mask_url(text)!r}: use one of {known}")
    module, cls = where.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def check_url(url):
    """Raise ConfigError unless `url` names a known database in a form its class can read."""
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        # Not the parser's own words: they quote the text after the last ':', which is the
        # password when it holds a '#', '/', '?' or '@'.
        raise ConfigError("is not a valid URL: the port is not a number (a password with # / ? @ in it"
                          " must be percent-encoded: # -> %23, / -> %2F, ? -> %3F, @ -> %40)") from None
    target_class(url).connect_args(url)


def open_target(url, **options):
    """A Target for `url` (table, pool_size, connect_timeout, statement_timeout, host_name, create,
    error_detail, partition, retention)."""
    return target_class(url)(url, **options)


def open_from_config(cfg, create=True):
    """The target the settings describe."""
    from ..timeconv import parse_duration
    return open_target(cfg.target, table=cfg.table, pool_size=cfg.pool_size, create=create,
                       connect_timeout=cfg.connect_timeout, statement_timeout=cfg.statement_timeout,
                       error_detail=cfg.error_detail == "on", partition=cfg.partition,
                       retention=parse_duration(cfg.retention) if cfg.retention else None)
