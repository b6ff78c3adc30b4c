"""Throwaway MariaDB servers for tests -- real servers, no mocks (pgharness.py does the same for
PostgreSQL, and this module borrows its process plumbing: spawning, parent-death signal, clean-up
at exit).

Plain library code: nothing here imports pytest (the fixtures live in tests/conftest.py)::

    from mariaharness import MariaServer
    db = MariaServer.create()            # mariadb-install-db + mariadbd in a short /tmp dir (~1 s)
    db.execute("CREATE DATABASE relay")  # PyMySQL as root (no password, TCP), autocommit
    db.kill(); db.start()                # kill -9 (crash recovery at the next start), same port
    db.destroy()                         # stop if needed, rm -rf

Design notes
* mariadbd refuses to run as root: when we are root the server runs as the OS user ``mysql``
  (else pgharness's choice: postgres / nobody) and its directory is chown'ed to it.
* Real users and real grants (no --skip-grant-tables): the tests need accounts with
  MAX_USER_CONNECTIONS. ``--auth-root-authentication-method=normal`` gives root@127.0.0.1 with no
  password over TCP.
* ``innodb_flush_log_at_trx_commit=2``: the redo log is written to the OS at every commit, so a
  kill -9 of mariadbd loses no committed transaction (only a crash of the machine could lose the
  last second) -- the same trade as pgharness's fsync=off.
* ``tls=True`` makes a CA and a server certificate for 127.0.0.1 (``cryptography``) and starts the
  server with them: ``ca_path`` is what a client verifies against.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from urllib.parse import quote, unquote, urlsplit

import pymysql

try:  # tests/ as a package or as a rootdir on sys.path (see conftest.py)
    from . import pgharness
except ImportError:
    import pgharness

__all__ = ["MariaHarnessError", "MariaServer", "ExternalMariaServer", "find_mariadb", "sweep_stale_dirs", "query",
           "row_stats", "message_ids"]

DIR_PREFIX = "ormy-"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
FAST_SETTINGS = {
    "innodb_flush_log_at_trx_commit": 2,
    "innodb_buffer_pool_size": "64M",
    "innodb_log_file_size": "16M",
    "innodb_doublewrite": 0,
    "skip_name_resolve": True,
    "performance_schema": "OFF",
    "max_connections": 100,
    "local_infile": 1,          # the benchmark's LOAD DATA baseline
    "character_set_server": "utf8mb4",
}


class MariaHarnessError(RuntimeError):
    """The harness could not provide a server (binaries missing, start failed ...)."""


def find_mariadb():
    """(mariadbd, mariadb-install-db) paths, or None when MariaDB's server is not installed."""
    server = next((p for p in (os.environ.get("OUTBOX_RELAY_TEST_MARIADBD"), "/usr/sbin/mariadbd",
                               shutil.which("mariadbd")) if p and os.access(p, os.X_OK)), None)
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    return (server, install) if server and install else None


def _runas():
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("mysql")
        return pw.pw_uid, pw.pw_gid, "mysql"
    except KeyError:
        return pgharness._service_user()


def _option(name, value):
    name = name.replace("_", "-")
    return f"--{name}" if value is True else f"--{name}={value}"


def _url(host, port, dbname, user, password):
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
    return f"mysql://{auth}@{host}:{port}/{quote(dbname, safe='')}"


class _ServerOps:
    """SQL conveniences built on ``connect()``."""

    def connect(self, dbname=None, user=None, password=None, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def execute(self, sql, params=None, dbname=None, user=None, password=None):
        """One statement on a fresh autocommit connection -> its rows (a list)."""
        conn = self.connect(dbname, user, password)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name):
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name

    def drop_database(self, name):
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def create_user(self, name, password, *, database=None, max_user_connections=None):
        """A real account at '%' with ALL on `database`, optionally WITH MAX_USER_CONNECTIONS."""
        limit = f" WITH MAX_USER_CONNECTIONS {int(max_user_connections)}" if max_user_connections else ""
        self.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s{limit}", (password,))  # %% : a param follows
        if database:
            self.execute(f"GRANT ALL ON `{database}`.* TO '{name}'@'%'")
        return name

    def drop_user(self, name):
        self.execute(f"DROP USER IF EXISTS '{name}'@'%'")


class MariaServer(_ServerOps):
    """A private MariaDB server in ``basedir`` (data/, socket, log). ``port=None`` picks a free port
    at the first start and keeps it across restarts, so URLs stay valid."""

    host = "127.0.0.1"

    def __init__(self, port=None, tls=False):
        found = find_mariadb()
        if not found:
            raise MariaHarnessError("MariaDB server binaries (mariadbd, mariadb-install-db) not found;"
                                    " install the Debian package mariadb-server")
        self.mariadbd, self.install_db = found
        self._runas = _runas()
        self.basedir = pgharness._make_basedir(self._runas, prefix=DIR_PREFIX)
        self.datadir = os.path.join(self.basedir, "data")
        self.socket = os.path.join(self.basedir, "mysqld.sock")
        self.log_path = os.path.join(self.basedir, "mariadbd.log")
        self.port = port
        self.settings = dict(FAST_SETTINGS)
        self.ca_path = self._make_certificates() if tls else None
        self._proc = None
        self._lock = threading.RLock()
        pgharness._register(self)

    @classmethod
    def create(cls, port=None, tls=False, **settings):
        """init() + start(**settings); destroys itself if either fails."""
        server = cls(port=port, tls=tls)
        try:
            server.init()
            server.start(**settings)
        except BaseException:
            server.destroy()
            raise
        return server

    def init(self):
        argv = [self.install_db, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db",
                "--auth-root-authentication-method=normal",
                f"--innodb-log-file-size={self.settings['innodb_log_file_size']}"]
        res = subprocess.run(argv, cwd=self.basedir, capture_output=True, text=True, timeout=120,
                             **self._user_kwargs())
        if res.returncode != 0:
            raise MariaHarnessError(f"mariadb-install-db failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
        return self

    def _user_kwargs(self):
        if self._runas is None:
            return {}
        uid, gid, _ = self._runas
        return {"user": uid, "group": gid, "extra_groups": []}

    # -- lifecycle --------------------------------------------------------------------------------

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self):
        return self._proc.pid if self.is_running() else None

    def start(self, timeout=START_TIMEOUT, **settings):
        """Start mariadbd (extra settings become --options) and wait until it accepts connections."""
        with self._lock:
            if self.is_running():
                raise MariaHarnessError("server is already running")
            self.settings.update(settings)
            attempts = 1 if self.port else 5
            for attempt in range(attempts):
                self.port = self.port or pgharness.free_port()
                try:
                    return self._start_once(timeout)
                except MariaHarnessError:
                    if attempt + 1 < attempts and "address already in use" in pgharness._tail(self.log_path).lower():
                        self.port = None
                        continue
                    raise

    def _argv(self):
        argv = [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                f"--socket={self.socket}", "--bind-address=127.0.0.1",
                f"--pid-file={os.path.join(self.basedir, 'mariadbd.pid')}"]
        if self.ca_path:
            argv += [f"--ssl-ca={self.ca_path}", f"--ssl-cert={self.basedir}/server.pem",
                     f"--ssl-key={self.basedir}/server.key"]
        return argv + [_option(k, v) for k, v in sorted(self.settings.items())]

    def _start_once(self, timeout):
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self._proc = pgharness._spawn(self._argv(), runas=self._runas, cwd=self.basedir,
                                      log_path=self.log_path, pdeathsig=signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise MariaHarnessError(f"mariadbd exited with code {code} during start-up; log:\n"
                                        f"{self._log_since(offset)}")
            try:
                self.connect().close()
                return self
            except pymysql.err.OperationalError as exc:
                last = exc
            if time.monotonic() >= deadline:
                pgharness._stop_process(self._proc, signal.SIGKILL, 10)
                self._proc = None
                raise MariaHarnessError(f"mariadbd did not accept connections within {timeout:.0f}s ({last});"
                                        f" log:\n{self._log_since(offset)}")
            time.sleep(0.02)  # poll interval

    def _log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()[-8000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines=40):
        return pgharness._tail(self.log_path, lines)

    def stop(self, timeout=STOP_TIMEOUT):
        """Clean shutdown (SIGTERM: clients are disconnected). No-op when not running."""
        with self._lock:
            pgharness._stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None
        return self

    def kill(self):
        """kill -9 the server: InnoDB recovers at the next start."""
        with self._lock:
            if self.is_running():
                self._proc.kill()
                self._proc.wait(timeout=STOP_TIMEOUT)
            self._proc = None
        return self

    def restart(self, **settings):
        self.stop()
        return self.start(**settings)

    def destroy(self):
        """Kill if running and remove the whole basedir. Idempotent."""
        with self._lock:
            try:
                self.kill()
            finally:
                shutil.rmtree(self.basedir, ignore_errors=True)
                pgharness._unregister(self)

    def _atexit(self):
        self.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    # -- clients ----------------------------------------------------------------------------------

    def url(self, dbname="mysql", user="root", password=None):
        return _url(self.host, self.port, dbname, user, password)

    def connect(self, dbname=None, user=None, password=None, **kwargs):
        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(host=self.host, port=self.port, user=user or "root", password=password or "",
                               database=dbname, autocommit=True, charset="utf8mb4", **kwargs)

    # -- TLS --------------------------------------------------------------------------------------

    def _make_certificates(self):
        """A CA and a server certificate for 127.0.0.1 signed by it; -> the CA's PEM path."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def cert(subject, key, issuer, issuer_key, ca, san=None):
            now = dt.datetime.now(dt.timezone.utc)
            builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
                       .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            return builder.sign(issuer_key, hashes.SHA256())

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = cert(name("outbox-relay test CA"), ca_key, name("outbox-relay test CA"), ca_key, True)
        server = cert(name("127.0.0.1"), key, ca.subject, ca_key, False,
                      [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        pem = serialization.Encoding.PEM
        files = {"ca.pem": ca.public_bytes(pem), "server.pem": server.public_bytes(pem),
                 "server.key": key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                 serialization.NoEncryption())}
        for filename, data in files.items():
            path = os.path.join(self.basedir, filename)
            with open(path, "wb") as f:
                f.write(data)
            if self._runas is not None:
                os.chown(path, self._runas[0], self._runas[1])
        return os.path.join(self.basedir, "ca.pem")

    def __repr__(self):
        return f"<MariaServer {self.basedir} port={self.port} {'running' if self.is_running() else 'stopped'}>"


class ExternalMariaServer(_ServerOps):
    """A server we did not start ($OUTBOX_RELAY_TEST_MYSQL_URL): same client API, no lifecycle."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise MariaHarnessError(f"not a mysql:// URL: {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3306
        self.user = unquote(parts.username) if parts.username else "root"
        self.password = unquote(parts.password) if parts.password is not None else None

    def url(self, dbname="mysql", user=None, password=None):
        if user is None:
            user, password = self.user, self.password
        return _url(self.host, self.port, dbname, user, password)

    def connect(self, dbname=None, user=None, password=None, **kwargs):
        if user is None:
            user, password = self.user, self.password
        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(host=self.host, port=self.port, user=user, password=password or "",
                               database=dbname, autocommit=True, charset="utf8mb4", **kwargs)

    def __repr__(self):
        return f"<ExternalMariaServer {self.host}:{self.port}>"


def query(url, sql, params=None):
    """One statement on a fresh autocommit connection to a mysql:// URL -> its rows (a list)."""
    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or "root"),
                           password=unquote(parts.password or ""), database=unquote(parts.path.lstrip("/")),
                           autocommit=True, charset="utf8mb4", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def row_stats(url, table="feishu_messages"):
    """(count(*), count(DISTINCT message_id)) of the target table; (0, 0) while it does not exist."""
    try:
        return tuple(query(url, f"SELECT count(*), count(DISTINCT CAST(message_id AS BINARY)) FROM `{table}`")[0])
    except pymysql.err.ProgrammingError:
        return (0, 0)


def message_ids(url, table="feishu_messages"):
    """Every message_id in the target table, duplicates kept (to be counted)."""
    return [r[0] for r in query(url, f"SELECT message_id FROM `{table}`")]


def sweep_stale_dirs():
    """Remove /tmp/ormy-* dirs of test processes that no longer exist (killing a server left in one)."""
    for d in glob.glob(os.path.join("/tmp", DIR_PREFIX + "*")):
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                owner = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if owner <= 0 or owner == os.getpid() or pgharness._pid_alive(owner):
            continue
        try:
            with open(os.path.join(d, "mariadbd.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in ("mariadbd", "mysqld"):
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)
