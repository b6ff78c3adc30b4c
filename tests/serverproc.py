"""The process plumbing both throwaway-server harnesses share (pgharness.py for PostgreSQL,
mariaharness.py for MariaDB): spawning a server as an unprivileged user, the parent-death signal,
stopping and reaping, clean-up at exit, stale directories, and the lifecycle of a server process
of our own (``ServerProcess``). Also the polling helpers every test uses (``wait_until``,
``free_port``, ``in_ci``).

Plain library code like the harnesses: nothing here imports pytest, so bench/ can use it too.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from urllib.parse import quote, unquote, urlsplit

# The checkout's root: the tests run the hook, the deploy files and the benchmarks from it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["wait_until", "in_ci", "free_port", "port_open", "service_user", "spawn", "run", "make_basedir",
           "tail", "stop_process", "pid_alive", "register", "unregister", "stale_dirs", "server_url",
           "server_address", "ServerProcess"]


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll ``predicate()`` until it returns a truthy value; return that value.

    Raises TimeoutError after ``timeout`` seconds.  Exceptions raised by the
    predicate count as "not yet" (the last one is chained to the TimeoutError).
    The poll interval grows gently up to 0.25 s.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}") from last_exc
        time.sleep(interval)  # poll interval, not a wait for the condition itself
        interval = min(interval * 1.5, 0.25)


def in_ci():
    """$CI set to anything but "", "0" or "false" (any case): missing servers are failures there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (callers retry on a collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- running as an unprivileged user ------------------------------------------------------------


def service_user(names, error):
    """(uid, gid, name) of the first OS user in names that exists, to run a server as; None when
    we are not root (servers refuse to run as root). Raises error when root has none of them."""
    if os.geteuid() != 0:
        return None
    for name in names:
        if not name:
            continue
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid, name
    raise error(f"running as root but found no unprivileged OS user ({'/'.join(filter(None, names))})"
                " to run the server as")


def _user_kwargs(runas):
    if runas is None:
        return {}
    uid, gid, _ = runas
    return {"user": uid, "group": gid, "extra_groups": []}


def _clean_env():
    """Environment for server processes: no PG* variables, no systemd notify socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "NOTIFY_SOCKET"}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


_libc = None
_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec(sig):
    """preexec_fn asking the kernel to send ``sig`` to the child when we die.

    Only used from the main thread: the kernel ties the signal to the *thread*
    that forked, so a worker thread's exit would kill the server.  prctl is
    resolved here, before the fork; the child only makes the C call.
    """
    global _libc
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        prctl = _libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec():  # runs in the child, after setuid (so the kernel keeps it)
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def spawn(argv, *, runas, cwd, log_path, pdeathsig, env=None):
    """Start a server process in its own session, output appended to log_path; env replaces the
    default clean environment (the OpenClaw gateway needs its own HOME and state directory)."""
    preexec = _pdeathsig_preexec(pdeathsig)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=_clean_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the terminal must not hit the server mid-teardown
            preexec_fn=preexec,
            close_fds=True,
            **_user_kwargs(runas),
        )


def run(argv, *, runas, cwd, error, timeout=120):
    """Run a set-up tool (initdb, mariadb-install-db) to its end; raise error if it fails."""
    res = subprocess.run(
        argv, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, **_user_kwargs(runas),
    )
    if res.returncode != 0:
        raise error(
            f"{os.path.basename(argv[0])} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}".rstrip()
        )
    return res


def make_basedir(runas, prefix):
    """/tmp/<prefix>XXXX, owned by the server's user, with our pid in owner.pid (see stale_dirs)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short path for the unix socket
    with open(os.path.join(d, "owner.pid"), "w") as f:
        f.write(str(os.getpid()))
    if runas is not None:
        os.chown(d, runas[0], runas[1])
    return d


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"


def stop_process(proc, sig, timeout):
    """Signal a child and reap it; SIGKILL the whole session if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # own session == own process group
        except OSError:
            proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stale_dirs(prefixes):
    """/tmp/<prefix>* directories whose owner.pid names a process that no longer exists."""
    for d in [d for prefix in prefixes for d in glob.glob(os.path.join("/tmp", prefix + "*"))]:
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                owner = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if owner > 0 and owner != os.getpid() and not pid_alive(owner):
            yield d


# -- URLs --------------------------------------------------------------------------------------------


def server_url(scheme, host, port, dbname, user, password):
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    return f"{scheme}://{auth}@{host}:{port}/{quote(dbname, safe='')}"


def server_address(url, schemes, port, user, error):
    """(parts, host, port, user, password) of a server URL, with the defaults of its kind;
    schemes[0] is the one named in the error for another scheme."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise error(f"not a {schemes[0]}:// URL: {url!r}")
    return (parts, parts.hostname or "127.0.0.1", parts.port or port,
            unquote(parts.username) if parts.username else user,
            unquote(parts.password) if parts.password is not None else None)


# -- registry of live processes, stopped at interpreter exit (backstop) -----------------------------

_live = weakref.WeakSet()
_live_lock = threading.Lock()


def register(obj):
    """Stop obj (its _atexit()) when the interpreter exits, unless unregister()ed first."""
    with _live_lock:
        _live.add(obj)


def unregister(obj):
    with _live_lock:
        _live.discard(obj)


@atexit.register
def _stop_everything():
    with _live_lock:
        objs = list(_live)
    # those in front of servers first (PgBouncer sets stop_first)
    for obj in sorted(objs, key=lambda o: 0 if getattr(o, "stop_first", False) else 1):
        try:
            obj._atexit()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# -- a server process of our own ------------------------------------------------------------------


class ServerProcess:
    """The lifecycle PgCluster and MariaServer share: start on a free port (another one if it was
    taken meanwhile), wait until the server accepts connections, stop, kill, destroy.

    A subclass sets ``basedir``, ``log_path``, ``port``, ``_runas`` in its __init__ (and calls
    ``register(self)``), and provides ``init()``, ``_argv()``, ``_probe()`` (one connection, closed)
    and ``_halt()`` (the quickest stop, for destroy()); the class attributes say the rest.
    """

    host = "127.0.0.1"
    name = "server"                     # the binary, in messages
    error = RuntimeError                # the harness's error class
    not_ready = OSError                 # what _probe() raises while the server is starting
    bind_error = "address in use"       # the log's words when the port was taken
    abort_signal = signal.SIGKILL       # parent-death signal, and the stop of a failed start
    _proc = None

    def init_and_start(self, **settings):
        """init() + start(**settings); destroys the server if either fails."""
        try:
            self.init()
            return self.start(**settings)
        except BaseException:
            self.destroy()
            raise

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self):
        """The server's pid while running, else None."""
        return self._proc.pid if self.is_running() else None

    def _start_on_a_free_port(self, timeout):
        """Start; a port that was chosen here and taken in between is replaced (5 tries)."""
        attempts = 1 if self.port else 5
        for attempt in range(attempts):
            self.port = self.port or free_port()
            offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            try:
                return self._start_once(timeout, offset)
            except self.error:
                if attempt + 1 < attempts and self.bind_error in self._log_since(offset).lower():
                    self.port = None
                    continue
                raise

    def _start_once(self, timeout, offset):
        self._proc = spawn(self._argv(), runas=self._runas, cwd=self.basedir, log_path=self.log_path,
                           pdeathsig=self.abort_signal)
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise self.error(f"{self.name} exited with code {code} during start-up; log:\n"
                                 f"{self._log_since(offset)}")
            try:
                self._probe()
                return self
            except self.not_ready as exc:  # refused / still starting up
                last = exc
            if time.monotonic() >= deadline:
                stop_process(self._proc, self.abort_signal, 10)
                self._proc = None
                raise self.error(f"{self.name} did not accept connections within {timeout:.0f}s ({last});"
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
        """Last lines of the server log (for assertion messages)."""
        return tail(self.log_path, lines)

    def kill(self):
        """SIGKILL the server process (a crash: recovery runs at the next start)."""
        with self._lock:
            if self.is_running():
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._proc = None
        return self

    def destroy(self):
        """Stop at once if running and remove the whole basedir.  Idempotent."""
        with self._lock:
            try:
                self._halt()
            finally:
                shutil.rmtree(self.basedir, ignore_errors=True)
                unregister(self)

    def _atexit(self):
        self.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
