"""Throwaway MariaDB servers for tests -- real servers, no mocks (pgharness.py does the same for
PostgreSQL; the process plumbing both use -- spawning, parent-death signal, clean-up at exit, the
start/stop lifecycle -- is serverproc.py).

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
import os
import shutil
import signal
import threading
from urllib.parse import quote, unquote, urlsplit

import pymysql

from serverproc import (
    ServerProcess,
    make_basedir,
    register,
    run,
    server_address,
    server_url,
    service_user,
    stale_dirs,
    stop_process,
)

__all__ = ["MariaHarnessError", "MariaServer", "ExternalMariaServer", "find_mariadb", "sweep_stale_dirs", "as_user",
           "database_of", "query", "row_stats", "message_ids"]

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
    """The OS user mysql, else pgharness's choice (postgres / nobody); None when we are not root."""
    return service_user(("mysql", os.environ.get("OUTBOX_RELAY_TEST_PG_OSUSER"), "postgres", "nobody"),
                        MariaHarnessError)


def _option(name, value):
    name = name.replace("_", "-")
    return f"--{name}" if value is True else f"--{name}={value}"


def _url(host, port, dbname, user, password):
    return server_url("mysql", host, port, dbname, user, password)


def _rows(conn, sql, params):
    """One statement on conn -> its rows (a list); conn is closed."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


class _ServerOps:
    """SQL conveniences built on ``connect()``."""

    def connect(self, dbname=None, user=None, password=None, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def execute(self, sql, params=None, dbname=None, user=None, password=None):
        """One statement on a fresh autocommit connection -> its rows (a list)."""
        return _rows(self.connect(dbname, user, password), sql, params)

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


class MariaServer(ServerProcess, _ServerOps):
    """A private MariaDB server in ``basedir`` (data/, socket, log). ``port=None`` picks a free port
    at the first start and keeps it across restarts, so URLs stay valid."""

    name = "mariadbd"
    error = MariaHarnessError
    not_ready = pymysql.err.OperationalError
    bind_error = "address already in use"
    abort_signal = signal.SIGKILL

    def __init__(self, port=None, tls=False):
        found = find_mariadb()
        if not found:
            raise MariaHarnessError("MariaDB server binaries (mariadbd, mariadb-install-db) not found;"
                                    " install the Debian package mariadb-server")
        self.mariadbd, self.install_db = found
        self._runas = _runas()
        self.basedir = make_basedir(self._runas, DIR_PREFIX)
        self.datadir = os.path.join(self.basedir, "data")
        self.socket = os.path.join(self.basedir, "mysqld.sock")
        self.log_path = os.path.join(self.basedir, "mariadbd.log")
        self.port = port
        self.settings = dict(FAST_SETTINGS)
        self.ca_path = self._make_certificates() if tls else None
        self._lock = threading.RLock()
        register(self)

    @classmethod
    def create(cls, port=None, tls=False, **settings):
        """init() + start(**settings); destroys itself if either fails."""
        return cls(port=port, tls=tls).init_and_start(**settings)

    def init(self):
        argv = [self.install_db, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db",
                "--auth-root-authentication-method=normal",
                f"--innodb-log-file-size={self.settings['innodb_log_file_size']}"]
        run(argv, runas=self._runas, cwd=self.basedir, error=MariaHarnessError)
        return self

    # -- lifecycle (the rest in serverproc.ServerProcess) -----------------------------------------

    def start(self, timeout=START_TIMEOUT, **settings):
        """Start mariadbd (extra settings become --options) and wait until it accepts connections."""
        with self._lock:
            if self.is_running():
                raise MariaHarnessError("server is already running")
            self.settings.update(settings)
            return self._start_on_a_free_port(timeout)

    def _argv(self):
        argv = [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                f"--socket={self.socket}", "--bind-address=127.0.0.1",
                f"--pid-file={os.path.join(self.basedir, 'mariadbd.pid')}"]
        if self.ca_path:
            argv += [f"--ssl-ca={self.ca_path}", f"--ssl-cert={self.basedir}/server.pem",
                     f"--ssl-key={self.basedir}/server.key"]
        return argv + [_option(k, v) for k, v in sorted(self.settings.items())]

    def _probe(self):
        self.connect().close()

    def stop(self, timeout=STOP_TIMEOUT):
        """Clean shutdown (SIGTERM: clients are disconnected). No-op when not running."""
        with self._lock:
            stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None
        return self

    def restart(self, **settings):
        self.stop()
        return self.start(**settings)

    def _halt(self):
        self.kill()

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
        _, self.host, self.port, self.user, self.password = server_address(
            url, ("mysql", "mariadb"), 3306, "root", MariaHarnessError)

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


def as_user(url, user, password):
    """url with another user and password."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}").geturl()


def database_of(url):
    return unquote(urlsplit(url).path.lstrip("/"))


def query(url, sql, params=None):
    """One statement on a fresh autocommit connection to a mysql:// URL -> its rows (a list)."""
    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or "root"),
                           password=unquote(parts.password or ""), database=unquote(parts.path.lstrip("/")),
                           autocommit=True, charset="utf8mb4", connect_timeout=5)
    return _rows(conn, sql, params)


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
    for d in stale_dirs([DIR_PREFIX]):
        try:
            with open(os.path.join(d, "mariadbd.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in ("mariadbd", "mysqld"):
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)
