"""Throwaway PostgreSQL clusters (and PgBouncer) for tests -- real servers, no mocks.

Plain library code: nothing here imports pytest (the fixtures live in
tests/conftest.py), so a script or a benchmark can use it too::

    from pgharness import PgCluster
    pg = PgCluster.create()          # initdb + start in a short /tmp dir
    conn = pg.connect()              # psycopg2, autocommit
    pg.stop("immediate"); pg.start() # crash + recovery, same port
    pg.destroy()                     # stop if needed, rm -rf

Design notes
* initdb refuses to run as root, and so do postgres and pgbouncer.  When we
  are root every server process is started as the OS user ``postgres``
  (fallback ``nobody``) through ``subprocess``'s ``user=``/``group=``, and the
  cluster's directory is chown'ed to it.  Root can still read the files.
* The base directory lives directly under /tmp with a short name: a unix
  socket path must fit in ~107 bytes, and pytest's tmp_path is both too deep
  and mode 0700 (unreadable for the ``postgres`` user).
* ``postgres`` is run in the foreground as our child (no pg_ctl daemon), so we
  always hold its pid.  Readiness is detected by polling a real connection
  with a deadline.  Settings go to ``harness.conf`` (included from
  postgresql.conf) so that ``configure(..., reload=True)`` can change
  reloadable settings of a running server.
* Clean-up backstops, in order: the caller's ``destroy()``/``stop()``
  (fixtures do it in teardown), an ``atexit`` hook that stops everything this
  process started, and -- for processes started from the main thread -- a
  Linux parent-death signal so that a SIGKILLed test run does not leave a
  postmaster behind.  Directories of dead test runs are swept by
  ``sweep_stale_dirs()``.
* That process plumbing, and the start/stop lifecycle, live in serverproc.py:
  mariaharness.py uses the same.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import threading
import time
from urllib.parse import unquote

import psycopg2
from psycopg2 import sql

from serverproc import (
    ServerProcess,
    free_port,
    in_ci,
    make_basedir,
    pid_alive,
    port_open,
    register,
    run,
    server_address,
    server_url,
    service_user,
    spawn,
    stale_dirs,
    stop_process,
    tail,
    unregister,
    wait_until,
)

__all__ = [
    "PgHarnessError",
    "find_pg_bindir",
    "find_pgbouncer",
    "PgCluster",
    "PgBouncer",
    "ExternalServer",
    "sweep_stale_dirs",
    # serverproc's, still reachable here for scripts written against pgharness alone
    "free_port",
    "wait_until",
    "in_ci",
]

DIR_PREFIX = "orpg-"          # /tmp/orpg-XXXXXX: short, recognisable
BOUNCER_DIR_PREFIX = "orpgb-"
START_TIMEOUT = 30.0          # seconds to wait for a server to accept connections
STOP_TIMEOUT = 30.0

# Settings for fast, disposable clusters.  fsync=off only loses data if the
# *machine* crashes; a crash test's stop("immediate") still finds every
# committed transaction after WAL recovery.
# synchronous_commit stays ON on purpose: with it off, a COMMIT returns while
# its WAL record is still in shared memory, so stop("immediate") silently
# loses the last ~200 ms of "committed" work -- a false failure for any
# "nothing committed is lost across a crash" test.  With fsync=off the
# synchronous flush is a plain write() and costs next to nothing.  Pass
# synchronous_commit=False to start()/configure() to opt out.
FAST_SETTINGS = {
    "fsync": False,
    "synchronous_commit": True,
    "full_page_writes": False,
    "max_connections": 100,
    "shared_buffers": "32MB",
    "jit": False,
    "max_wal_senders": 0,
    "wal_level": "minimal",
    "checkpoint_timeout": "30min",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_connections": False,
    "log_disconnections": False,
    "lc_messages": "C",
    "timezone": "UTC",
}


class PgHarnessError(RuntimeError):
    """The harness could not provide a server (binaries missing, start failed ...)."""


# --------------------------------------------------------------------------- #
# small helpers


def _bin_ok(bindir):
    return bindir and all(
        os.access(os.path.join(bindir, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")
    )


def _version_key(path):
    name = os.path.basename(os.path.dirname(path.rstrip("/")))
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (0,)


def find_pg_bindir():
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    Order: $OUTBOX_RELAY_TEST_PG_BINDIR, ``pg_config --bindir``,
    /usr/lib/postgresql/*/bin (newest first), /usr/pgsql-*/bin, then PATH.
    """
    candidates = []
    env = os.environ.get("OUTBOX_RELAY_TEST_PG_BINDIR")
    if env:
        candidates.append(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
        candidates.append(os.path.dirname(on_path))
    for c in candidates:
        if _bin_ok(c):
            return c
    return None


def find_pgbouncer():
    """Path of the pgbouncer binary, or None."""
    for c in (os.environ.get("OUTBOX_RELAY_TEST_PGBOUNCER"), "/usr/sbin/pgbouncer", shutil.which("pgbouncer")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def _pgbouncer_version(binary):
    """(major, minor) of a pgbouncer binary; (0, 0) if unknown."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        major, minor = out.split()[1].split(".")[:2]
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return (0, 0)


def _service_user():
    """(uid, gid, name) to run server processes as; None when we are not root."""
    return service_user((os.environ.get("OUTBOX_RELAY_TEST_PG_OSUSER"), "postgres", "nobody"), PgHarnessError)


def _conf_value(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def sweep_stale_dirs(prefixes=(DIR_PREFIX, BOUNCER_DIR_PREFIX)):
    """Remove /tmp/<prefix>* dirs left by test processes that no longer exist.

    Only directories carrying an ``owner.pid`` of a dead process are touched;
    a postmaster still running in one (its parent was SIGKILLed and had no
    parent-death signal) is sent SIGQUIT first.  Best effort, never raises.
    """
    removed = []
    for d in stale_dirs(prefixes):
        try:
            with open(os.path.join(d, "data", "postmaster.pid")) as f:
                pm = int(f.readline().strip())
            if pid_alive(pm) and _is_postgres(pm):
                os.kill(pm, signal.SIGQUIT)
                wait_until(lambda pm=pm: not pid_alive(pm), timeout=10, what="stale postmaster exit")
        except (OSError, ValueError, TimeoutError):
            pass
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _is_postgres(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False


# --------------------------------------------------------------------------- #
# server operations shared by our clusters and an external server


class _ServerOps:
    """SQL conveniences built on ``connect()``; subclasses provide url()/connect()."""

    def connect(self, dbname="postgres", user=None, password=None, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def execute(self, query, params=None, dbname="postgres", user=None):
        """Run one statement on a fresh autocommit connection; return rows or None."""
        conn = self.connect(dbname=dbname, user=user)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def server_version(self):
        conn = self.connect()
        try:
            return conn.server_version
        finally:
            conn.close()

    def create_database(self, name, owner=None, template="template0"):
        """CREATE DATABASE <name>; returns the name.  template0: always pristine."""
        q = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        if owner:
            q = q + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.execute(q)
        return name

    def drop_database(self, name, force=True):
        """DROP DATABASE IF EXISTS, terminating its sessions first when force."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if force and conn.server_version >= 130000:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                    return
                if force:
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        finally:
            conn.close()

    def create_role(self, name, password=None, connection_limit=None, login=True, superuser=False):
        """CREATE ROLE with the usual options; returns the name."""
        opts = [sql.SQL("LOGIN" if login else "NOLOGIN"), sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER")]
        if connection_limit is not None:
            opts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(int(connection_limit))))
        if password is not None:
            opts.append(sql.SQL("PASSWORD {}").format(sql.Literal(password)))
        self.execute(sql.SQL("CREATE ROLE {} ").format(sql.Identifier(name)) + sql.SQL(" ").join(opts))
        return name

    def terminate_backends(self, dbname=None, user=None):
        """pg_terminate_backend() every client session (optionally of one db/user); returns the count."""
        conds, params = ["pid <> pg_backend_pid()", "backend_type = 'client backend'"], []
        if dbname:
            conds.append("datname = %s")
            params.append(dbname)
        if user:
            conds.append("usename = %s")
            params.append(user)
        rows = self.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE " + " AND ".join(conds), params
        )
        return rows[0][0]


def _make_url(host, port, dbname, user, password):
    return server_url("postgresql", host, port, dbname, user, password)


# --------------------------------------------------------------------------- #


class PgCluster(ServerProcess, _ServerOps):
    """A private PostgreSQL cluster in ``basedir`` (``data/`` + unix socket dir).

    ``basedir=None`` creates a short /tmp/orpg-XXXX directory owned by the
    harness (removed by destroy()).  ``port=None`` picks a free port at first
    start and keeps it across restarts, so URLs stay valid.
    """

    name = "postgres"
    error = PgHarnessError
    not_ready = psycopg2.OperationalError  # refused / "the database system is starting up"
    bind_error = "could not bind"
    abort_signal = signal.SIGQUIT

    def __init__(self, basedir=None, port=None, bindir=None):
        self.bindir = bindir or find_pg_bindir()
        if not self.bindir:
            raise PgHarnessError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
                "install e.g. the Debian package postgresql-15, or set OUTBOX_RELAY_TEST_PG_BINDIR"
            )
        self._runas = _service_user()
        if basedir is None:
            basedir = make_basedir(self._runas, DIR_PREFIX)
        else:
            os.makedirs(basedir, exist_ok=True)
            if self._runas is not None:
                os.chown(basedir, self._runas[0], self._runas[1])
        self.basedir = os.path.abspath(basedir)
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_dir = self.basedir
        self.log_path = os.path.join(self.basedir, "postgres.log")
        if len(os.path.join(self.socket_dir, ".s.PGSQL.65535")) > 100:
            raise PgHarnessError(f"basedir too long for a unix socket path: {self.basedir}")
        self.port = port
        self.settings = dict(FAST_SETTINGS)
        self._lock = threading.RLock()
        register(self)

    # -- construction ----------------------------------------------------- #

    @classmethod
    def create(cls, basedir=None, port=None, **settings):
        """init() + start(**settings); destroys itself if either fails."""
        return cls(basedir, port=port).init_and_start(**settings)

    @property
    def runas_user(self):
        """OS user the server runs as (None: the current user)."""
        return self._runas[2] if self._runas else None

    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def init(self):
        """initdb into ``basedir/data``: trust auth, superuser ``postgres``, UTF8, C locale (~0.5 s)."""
        if os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            raise PgHarnessError(f"{self.datadir} is already initialised")
        run(
            [
                self._bin("initdb"), "-D", self.datadir, "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            runas=self._runas,
            cwd=self.basedir,
            error=PgHarnessError,
        )
        conf = os.path.join(self.datadir, "postgresql.conf")
        with open(conf, "r+", encoding="utf-8") as f:
            if "include_if_exists = 'harness.conf'" not in f.read():
                f.write("\n# written by tests/pgharness.py\ninclude_if_exists = 'harness.conf'\n")
        self._write_conf()
        return self

    # -- configuration ---------------------------------------------------- #

    def _write_conf(self):
        path = os.path.join(self.datadir, "harness.conf")
        lines = ["# settings of tests/pgharness.py; regenerated on configure()/start()"]
        lines += [f"{k} = {_conf_value(v)}" for k, v in sorted(self.settings.items())]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        if self._runas is not None:
            os.chown(tmp, self._runas[0], self._runas[1])
        os.replace(tmp, path)

    def configure(self, reload=False, **settings):
        """Merge server settings (``max_connections=5``, ``statement_timeout="1s"``...).

        They take effect at the next start()/restart(); with ``reload=True`` a
        running server is also sent SIGHUP, which applies reloadable settings
        at once (``max_connections`` and friends need a restart).
        """
        with self._lock:
            self.settings.update(settings)
            if os.path.isdir(self.datadir):
                self._write_conf()
            if reload and self.is_running():
                self.reload()
        return self

    def reload(self):
        """SIGHUP the postmaster (re-read configuration and pg_hba.conf)."""
        with self._lock:
            if not self.is_running():
                raise PgHarnessError("cluster is not running")
            self._proc.send_signal(signal.SIGHUP)

    # -- lifecycle (the rest in serverproc.ServerProcess) ------------------ #

    def start(self, timeout=START_TIMEOUT, **settings):
        """Start the server (settings as in configure()) and wait until it accepts connections."""
        with self._lock:
            if self.is_running():
                raise PgHarnessError("cluster is already running")
            if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
                raise PgHarnessError("cluster not initialised: call init() first")
            if settings:
                self.configure(**settings)
            else:
                self._write_conf()
            return self._start_on_a_free_port(timeout)

    def _argv(self):
        return [
            self._bin("postgres"), "-D", self.datadir, "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
        ]

    def _probe(self):
        psycopg2.connect(host=self.host, port=self.port, dbname="postgres", user="postgres",
                         connect_timeout=2).close()

    _STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def stop(self, mode="fast", timeout=STOP_TIMEOUT):
        """Stop the server.  ``fast``: roll back and disconnect clients, clean
        shutdown; ``immediate``: like a crash (recovery runs at next start);
        ``smart``: wait for clients to leave.  No-op when not running."""
        if mode not in self._STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(self._STOP_SIGNALS)}")
        with self._lock:
            stop_process(self._proc, self._STOP_SIGNALS[mode], timeout)
            self._proc = None
        return self

    def _halt(self):
        self.stop("immediate")

    def restart(self, mode="fast", **settings):
        """stop(mode) + start(**settings), on the same port."""
        self.stop(mode)
        return self.start(**settings)

    # -- clients ---------------------------------------------------------- #

    def url(self, dbname="postgres", user="postgres", password=None):
        if self.port is None:
            raise PgHarnessError("cluster has no port yet: start() it first")
        return _make_url(self.host, self.port, dbname, user, password)

    def dsn(self, dbname="postgres", user="postgres"):
        """libpq keyword DSN using the unix socket (bypasses TCP, e.g. a TcpProxy)."""
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="postgres", user="postgres", password=None, autocommit=True, **kwargs):
        """psycopg2 connection over TCP, autocommit by default."""
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(host=self.host, port=self.port, dbname=dbname, user=user or "postgres",
                                password=password, **kwargs)
        conn.autocommit = autocommit
        return conn

    def __repr__(self):
        state = "running" if self.is_running() else "stopped"
        return f"<PgCluster {self.basedir} port={self.port} {state}>"


# --------------------------------------------------------------------------- #


class ExternalServer(_ServerOps):
    """A server we did not start (``OUTBOX_RELAY_TEST_PG_URL``): same client API, no lifecycle."""

    def __init__(self, url):
        parts, self.host, self.port, self.user, self.password = server_address(
            url, ("postgresql", "postgres"), 5432, "postgres", PgHarnessError)
        self.default_db = unquote(parts.path.lstrip("/")) or "postgres"
        self._query = parts.query

    def url(self, dbname=None, user=None, password=None):
        dbname = dbname or self.default_db
        if user is None:
            user, password = self.user, (self.password if password is None else password)
        u = _make_url(self.host, self.port, dbname, user, password)
        return u + ("?" + self._query if self._query else "")

    def connect(self, dbname=None, user=None, password=None, autocommit=True, **kwargs):
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(self.url(dbname, user, password), **kwargs)
        conn.autocommit = autocommit
        return conn

    def is_running(self):
        return True

    def __repr__(self):
        return f"<ExternalServer {self.host}:{self.port}>"


# --------------------------------------------------------------------------- #


class PgBouncer:
    """PgBouncer in front of a PgCluster (or anything with .host/.port).

    Every database name maps to the same name on the backend (``* =``);
    ``auth_type=trust`` with an auth_file listing the allowed user names
    (pgbouncer wants the user to exist there even for trust).  Add users with
    ``add_user()``.  Runs as the same unprivileged user as the cluster.
    """

    host = "127.0.0.1"
    stop_first = True  # at exit, before the cluster behind it

    def __init__(self, cluster, pool_mode="transaction", users=("postgres",), binary=None, **options):
        self.binary = binary or find_pgbouncer()
        if not self.binary:
            raise PgHarnessError(
                "pgbouncer binary not found (/usr/sbin/pgbouncer or PATH); install the Debian package pgbouncer"
            )
        self.cluster = cluster
        self._runas = _service_user()
        self.basedir = make_basedir(self._runas, BOUNCER_DIR_PREFIX)
        self.ini_path = os.path.join(self.basedir, "pgbouncer.ini")
        self.userlist_path = os.path.join(self.basedir, "userlist.txt")
        self.log_path = os.path.join(self.basedir, "pgbouncer.log")
        self.port = None
        self.users = list(users)
        self.options = {
            "pool_mode": pool_mode,
            "auth_type": "trust",
            "max_client_conn": 200,
            "default_pool_size": 20,
            "admin_users": "postgres",
            "ignore_startup_parameters": "extra_float_digits",
            "server_login_retry": 1,
        }
        self.options.update(options)
        self._proc = None
        self.version = _pgbouncer_version(self.binary)
        register(self)

    @property
    def _immediate_signal(self):
        # pgbouncer < 1.23: SIGTERM = immediate shutdown; 1.23+: SIGTERM waits
        # for clients ("super safe") and SIGQUIT is the immediate one.
        return signal.SIGQUIT if self.version >= (1, 23) else signal.SIGTERM

    def _write_files(self):
        with open(self.userlist_path, "w", encoding="utf-8") as f:
            for u in self.users:
                f.write(f'"{u}" ""\n')
        opts = dict(self.options)
        opts.update(
            listen_addr=self.host,
            listen_port=self.port,
            unix_socket_dir=self.basedir,
            auth_file=self.userlist_path,
            logfile=self.log_path,
        )
        lines = [
            "[databases]",
            f"* = host={self.cluster.host} port={self.cluster.port}",
            "",
            "[pgbouncer]",
        ] + [f"{k} = {v}" for k, v in opts.items()]
        with open(self.ini_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        if self._runas is not None:
            for p in (self.userlist_path, self.ini_path):
                os.chown(p, self._runas[0], self._runas[1])

    def add_user(self, name):
        """Allow another user name through (auth_file, then RELOAD if running)."""
        if name not in self.users:
            self.users.append(name)
            if self.is_running():
                self._write_files()
                self.admin("RELOAD")
        return self

    def admin(self, command):
        """Run a console command (SHOW POOLS, RELOAD, PAUSE ...) on the admin db; returns rows or None."""
        conn = self.connect(dbname="pgbouncer", user="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(command)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        if self.is_running():
            raise PgHarnessError("pgbouncer is already running")
        for attempt in range(5):
            self.port = self.port or free_port()
            self._write_files()
            self._proc = spawn([self.binary, self.ini_path], runas=self._runas, cwd=self.basedir,
                                log_path=os.path.join(self.basedir, "stdout.log"), pdeathsig=signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and not port_open(self.port):
                if time.monotonic() >= deadline:
                    self.stop()
                    raise PgHarnessError(f"pgbouncer did not listen within {timeout:.0f}s:\n{self._logs()}")
                time.sleep(0.02)  # poll interval
            if self._proc.poll() is None:
                return self
            self._proc = None
            logs = self._logs()
            if "address already in use" in logs.lower() and attempt < 4:
                self.port = None
                continue
            raise PgHarnessError(f"pgbouncer exited during start-up:\n{logs}")
        raise PgHarnessError("pgbouncer: no free port")  # pragma: no cover

    def _logs(self):
        return tail(os.path.join(self.basedir, "stdout.log")) + "\n" + tail(self.log_path)

    def logtail(self, lines=40):
        return tail(self.log_path, lines)

    def stop(self, timeout=10):
        """Immediate shutdown (clients are disconnected), SIGKILL after timeout; removes its files."""
        stop_process(self._proc, self._immediate_signal, timeout)
        self._proc = None
        shutil.rmtree(self.basedir, ignore_errors=True)
        unregister(self)

    def _atexit(self):
        stop_process(self._proc, signal.SIGKILL, 5)
        self._proc = None
        shutil.rmtree(self.basedir, ignore_errors=True)

    def url(self, dbname="postgres", user="postgres", password=None):
        return _make_url(self.host, self.port, dbname, user, password)

    def connect(self, dbname="postgres", user="postgres", autocommit=True, **kwargs):
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(host=self.host, port=self.port, dbname=dbname, user=user or "postgres", **kwargs)
        conn.autocommit = autocommit
        return conn

    def __enter__(self):
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<PgBouncer 127.0.0.1:{self.port} -> {self.cluster.host}:{self.cluster.port}>"
