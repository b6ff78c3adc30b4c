"""One immutable Config: defaults in one table, then a TOML file, the environment, flags.

Precedence: flags > OUTBOX_RELAY_* environment > TOML file > defaults. Library
code never reads the environment or argv itself; the CLI builds a Config and
hands it down.
"""

import dataclasses
import ipaddress
import os
import urllib.parse

from .errors import ConfigError
from .logs import mask_url
from .outbox import OVERFLOW_POLICIES, SYNCHRONOUS
from .schema import check_table_name
from .targets import check_url
from .timeconv import parse_duration

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ENV_PREFIX = "OUTBOX_RELAY_"
URL_KINDS = ("url", "http_url")  # shown with their passwords masked
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONFIG_FILE = "outbox-relay.toml"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: object
    kind: str  # str, int, float, bool, choice, url, http_url, hostport, table, duration
    help: str
    choices: tuple = ()
    minimum: float | None = None
    secret: bool = False
    unit: str | None = None  # what the number counts, for --help (SECONDS, BYTES, N)

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def env(self):
        return ENV_PREFIX + self.name.upper()

    @property
    def named(self):
        """How a person sets it: "--outbox / OUTBOX_RELAY_OUTBOX"."""
        return f"{self.flag} / {self.env}"


SETTINGS = (
    Setting("outbox", "data/outbox.db", "str", "the local SQLite outbox"),
    Setting("target", "sqlite:///data/archive.db", "url",
            "where messages go: postgresql://user:pass@host:5432/db?sslmode=require,"
            " mysql://user:pass@host:3306/db?ssl_mode=REQUIRED, or sqlite:///path"),
    Setting("table", "feishu_messages", "table", "target table"),
    Setting("http", "127.0.0.1:8080", "hostport", "where run/serve listen (HOST:PORT)"),
    Setting("batch_size", 500, "int", "rows per relay batch", minimum=1),
    Setting("pool_size", 2, "int", "most target connections the relay holds", minimum=1),
    Setting("max_pending", 1000, "int", "pending rows kept before overflow applies", minimum=1),
    Setting("overflow", "park", "choice", "what overflow does", choices=OVERFLOW_POLICIES),
    Setting("keep_delivered", 1000, "int", "delivered rows kept locally", minimum=0),
    Setting("synchronous", "full", "choice", "SQLite durability", choices=SYNCHRONOUS),
    Setting("feishu_encrypt_key", None, "str", "decrypt + verify Feishu signatures", secret=True),
    Setting("feishu_verification_token", None, "str", "check the Feishu event token", secret=True),
    Setting("auth_token", None, "str", "bearer token for non-Feishu senders", secret=True),
    # Beyond the design card's table: tuning a production deployment needs these.
    Setting("busy_timeout", 30.0, "float", "seconds a writer waits for the outbox lock", minimum=0,
            unit="SECONDS"),
    Setting("connect_timeout", 10, "int", "seconds to wait for a target connection", minimum=1, unit="SECONDS"),
    Setting("statement_timeout", 30, "int", "seconds a target statement may run", minimum=1, unit="SECONDS"),
    Setting("max_body", 1048576, "int", "largest webhook body accepted, bytes", minimum=1024, unit="BYTES"),
    Setting("unhealthy_after", 300, "float",
            "seconds the target may be unreachable before health reports down", minimum=1, unit="SECONDS"),
    Setting("http_threads", 8, "int", "webhook worker threads", minimum=1),
    Setting("error_detail", "off", "choice",
            "on: the database's whole error text, with the row's values (PostgreSQL's DETAIL and CONTEXT,"
            " MySQL's quoted values), in logs, status and dead; off: the server's reason and the"
            " message_id only (message content stays out)", choices=("off", "on")),
    Setting("check_interval", 600.0, "float",
            "seconds between integrity checks (quick_check) of the outbox file by the relay", minimum=1,
            unit="SECONDS"),
    Setting("spool", "data/spool", "str",
            "the handoff spool directory (tmp/, new/, rejected/) that run and sync ingest"),
    # `backfill feishu` (issue 11): the app whose bot reads the history back, and how hard it may ask.
    Setting("feishu_app_id", None, "str", "Feishu app id (cli_…) for backfill feishu"),
    Setting("feishu_app_secret", None, "str", "Feishu app secret for backfill feishu", secret=True),
    Setting("feishu_api_base", "https://open.feishu.cn", "http_url",
            "Feishu Open API base URL (Lark: https://open.larksuite.com)"),
    Setting("feishu_rate", 10.0, "float",
            "most Open API requests per second (Feishu allows 50/s, 1,000/min for history)", minimum=0.1),
    # Reconciliation (issue 21): `run` reads each active chat's trailing window back from Feishu.
    Setting("feishu_reconcile_interval", 600.0, "float",
            "seconds between reconciliation passes of `run` (needs the app credentials); 0 turns it off",
            minimum=0, unit="SECONDS"),
    Setting("feishu_reconcile_window", 7200, "int",
            "seconds of each active chat's history every pass reads back (overlapping the previous pass)",
            minimum=60, unit="SECONDS"),
    # 134 = 10 % of the basic plan's 1,000,000 calls a month (shared by the tenant's apps) over the
    # longest month, 744 h: 99,696 calls.
    Setting("feishu_reconcile_budget", 134, "int",
            "most Open API calls reconciliation makes in any hour (retries and token fetches count)", minimum=1,
            unit="N"),
    # 8 h: longer than Feishu's whole retry schedule (15 s, 5 min, 1 h, 6 h), so a retry is taken
    # whether Feishu signs it anew or sends it as it was; a repeat within it is caught by its key.
    # Issue 22: the archive at 100 million rows.
    Setting("partition", "none", "choice",
            "how init-db and run make a new messages table (PostgreSQL): month = partitioned by month of"
            " created_at (a table made already keeps its layout; `partition --convert` changes it)",
            choices=("none", "month")),
    Setting("retention", None, "duration",
            "keep this long (400d, 18mo, 3y), then `run` drops whole months once a day (partitioned"
            " table; chats under hold kept); unset: keep everything"),
    Setting("feishu_replay_window", 28800, "int",
            "seconds a signed Feishu request stays acceptable (its X-Lark-Request-Timestamp, either way"
            " of now); one seen before within it stores nothing", minimum=60, unit="SECONDS"),
)
BY_NAME = {s.name: s for s in SETTINGS}


class _Settings:
    """The methods of Config; its fields are generated from SETTINGS below, so each setting is
    declared exactly once (name, default, type, help, choices) and flags, environment variables,
    TOML keys and `outbox-relay config` all follow from that one line."""

    def __post_init__(self):
        for s in SETTINGS:
            object.__setattr__(self, s.name, _parse(s, getattr(self, s.name), "value"))

    @property
    def target_is_default(self):
        return self.target == BY_NAME["target"].default

    @property
    def webhook_open(self):
        """No credential is set: the webhook takes posts from anyone who can reach it."""
        return not (self.auth_token or self.feishu_encrypt_key or self.feishu_verification_token)

    def exposed(self):
        """A sentence when the webhook is open (no credential) on an address other machines can
        reach, else None: said loudly when `run` starts and kept in `status` until it is fixed."""
        if not self.webhook_open or is_loopback(self.http_address[0]):
            return None
        return (f"the webhook listens on {self.http} with no credential set: anyone who can reach it can store"
                " messages; set feishu_encrypt_key (Feishu's signatures), feishu_verification_token or"
                " auth_token, or listen on 127.0.0.1")

    @property
    def http_address(self):
        host, _, port = self.http.rpartition(":")
        return host.strip("[]"), int(port)

    def outbox_kwargs(self):
        return dict(max_pending=self.max_pending, overflow=self.overflow, synchronous=self.synchronous,
                    busy_timeout=self.busy_timeout, keep_delivered=self.keep_delivered)

    def open_outbox(self, readonly=False):
        from .outbox import Outbox
        return Outbox(self.outbox, readonly=readonly, **self.outbox_kwargs())

    def __repr__(self):
        # Never the dataclass default: it would print tokens and the URL's password.
        shown = ", ".join(f"{name}={v['value']!r}" for name, v in self.masked().items())
        return f"Config({shown})"

    def masked(self):
        """Every setting with where it came from; secrets and URL passwords hidden."""
        origin = dict(self.sources)
        out = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.secret and value:
                value = "***"
            elif s.kind in URL_KINDS:
                value = mask_url(value)
            out[s.name] = {"value": value, "from": origin.get(s.name, "default")}
        return out

    @classmethod
    def load(cls, flags=None, environ=None, config_file=None):
        """Build the effective Config. `flags` holds only what the user gave on the command line."""
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        explicit = config_file or environ.get(CONFIG_ENV)
        path = explicit or (DEFAULT_CONFIG_FILE if os.path.exists(DEFAULT_CONFIG_FILE) else None)
        values, sources = {}, {}
        if path:
            for name, value in _read_toml(path).items():
                values[name], sources[name] = value, f"file {path}"
        for s in SETTINGS:
            if s.env in environ and environ[s.env] != "":
                values[s.name], sources[s.name] = environ[s.env], f"env {s.env}"
        for name, value in flags.items():
            if name not in BY_NAME:
                raise ConfigError(f"unknown setting {name!r}")
            values[name], sources[name] = value, f"flag {BY_NAME[name].flag}"
        parsed = {}
        for name, value in values.items():
            parsed[name] = _parse(BY_NAME[name], value, sources[name])
        return cls(**parsed, config_file=path, sources=tuple(sorted(sources.items())))


Config = dataclasses.make_dataclass(
    "Config",
    [(s.name, object, dataclasses.field(default=s.default)) for s in SETTINGS]
    + [("config_file", object, dataclasses.field(default=None)),
       ("sources", tuple, dataclasses.field(default=()))],  # (name, where-from) for `config`
    bases=(_Settings,), frozen=True, repr=False)
Config.__module__ = __name__
Config.__doc__ = "The effective settings: one immutable object, every value parsed and validated."


def is_loopback(host):
    """Is `host` (a name or an address) this machine only?"""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_toml(path):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    # Accept both a flat file and one with an [outbox-relay] / [outbox_relay] table.
    for section in ("outbox-relay", "outbox_relay"):
        if isinstance(data.get(section), dict):
            data = data[section]
    unknown = sorted(k for k in data if k.replace("-", "_") not in BY_NAME)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _parse(s, value, origin):
    """Turn one raw value (str from env/flags, typed from TOML) into the setting's type, or raise."""
    if value is None:
        return None
    where = f"{s.name} ({s.named})"
    shown = "***" if s.secret else (mask_url(value) if s.kind in URL_KINDS and isinstance(value, str) else value)

    def bad(why):
        return ConfigError(f"invalid {where} from {origin}: {shown!r} {why}")

    if s.kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad("is not a number")
        if s.kind == "int" and isinstance(value, float):  # TOML 1.5: a mistake, not 1
            raise bad("is not an integer")
        try:
            value = int(value) if s.kind == "int" else float(value)
        except (TypeError, ValueError):
            raise bad("is not " + ("an integer" if s.kind == "int" else "a number")) from None
        if s.minimum is not None and value < s.minimum:
            raise bad(f"is below the minimum {s.minimum:g}")
        return value
    if not isinstance(value, str):
        raise bad("must be a string")
    if s.kind == "choice":
        if value.lower() not in s.choices:
            raise bad(f"must be one of: {', '.join(s.choices)}")
        return value.lower()
    if s.kind == "duration":
        try:
            parse_duration(value, "")
        except ValueError as e:
            raise bad("is not a period: " + str(e).split(": ", 1)[1]) from None
        return value
    if s.kind == "hostport":
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad("must be HOST:PORT, e.g. 127.0.0.1:8080")
        return value
    if s.kind == "table":
        try:
            return check_table_name(value)
        except ConfigError:
            raise bad("is not a valid table name (letters, digits, _; optionally schema.table)") from None
    if s.kind == "url":
        try:
            check_url(value)
        except ConfigError as e:
            raise bad(str(e)) from None
        return value
    if s.kind == "http_url":
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as e:
            raise bad(f"is not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad("must be an https:// URL, e.g. https://open.feishu.cn")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            # The app secret and every token go to this address: in clear text only to this machine.
            raise bad("must be an https:// URL: http:// would send the app secret in clear (http:// is"
                      " accepted for a loopback address only, e.g. a local test server)")
        return value.rstrip("/")
    if value == "":
        raise bad("must not be empty")
    return value
