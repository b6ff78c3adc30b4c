"""A loopback TCP proxy that can break connections on demand -- for network-fault tests.

    proxy = TcpProxy("127.0.0.1", pg.port)
    conn = psycopg2.connect(proxy.url_for(pg.url()))
    proxy.cut_all()                  # every live connection gets a RST, both sides
    proxy.refuse(True)               # new connections: ECONNREFUSED (listener closed)
    proxy.start_chaos(0.2, seed=1)   # cut at random moments, ~every 0.2 s
    proxy.close()

One selector thread does all the work (accept, connect upstream, copy bytes
with bounded buffers and back-pressure, abort), so a cut is never racing a
half-finished send.  Commands from other threads (cut_all, refuse, close) are
queued to that thread, which wakes up through a socketpair; the caller waits
until the command has been carried out, so once ``cut_all()`` returns the
RSTs have been sent.

Safety: listens on 127.0.0.1 only, forwards to loopback targets only, and
the thread is a daemon that ends on close() (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import ipaddress
import queue
import random
import selectors
import socket
import struct
import threading
import weakref
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_BUF_LIMIT = 256 * 1024        # per direction; reading pauses above this
_RECV_SIZE = 64 * 1024
_CONNECT_TIMEOUT = 2.0         # upstream connect (loopback: instant or refused)
_COMMAND_TIMEOUT = 10.0

_live = weakref.WeakSet()


@atexit.register
def _close_all():
    for p in list(_live):
        try:
            p.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _is_loopback(host):
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _abort(sock):
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pipe:
    """One proxied connection: client <-> upstream, a buffer per direction."""

    __slots__ = ("id", "client", "upstream", "out", "eof", "shut")

    def __init__(self, cid, client, upstream):
        self.id = cid
        self.client = client
        self.upstream = upstream
        self.out = {client: bytearray(), upstream: bytearray()}   # bytes waiting to be sent TO the socket
        self.eof = {client: False, upstream: False}               # we read EOF FROM the socket
        self.shut = {client: False, upstream: False}              # we sent FIN TO the socket

    def peer(self, sock):
        return self.upstream if sock is self.client else self.client


class TcpProxy:
    """Forward 127.0.0.1:<port> to (target_host, target_port); break things on request.

    Attributes: ``port``, ``accepted`` (connections accepted so far),
    ``cuts`` (connections aborted by cut_all/cut_one/chaos), ``refused``.
    """

    def __init__(self, target_host, target_port, port=0):
        if not _is_loopback(target_host):
            raise ValueError(f"TcpProxy only forwards to loopback addresses, not {target_host!r}")
        self.target = (target_host, int(target_port))
        self.accepted = 0
        self.cuts = 0
        self._refusing = False
        self._closed = False
        self._pipes = {}          # socket -> _Pipe (both sockets of a pipe map to it)
        self._next_id = 0
        self._commands = queue.Queue()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._listener = None
        self.port = port
        self._listen()
        self._chaos_thread = None
        self._chaos_stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"TcpProxy:{self.port}", daemon=True)
        self._thread.start()
        _live.add(self)

    # ------------------------------------------------------------------ API

    @property
    def host(self):
        return "127.0.0.1"

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def url_for(self, url):
        """The same postgresql:// URL with host:port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def active_count(self):
        """Live proxied connections right now."""
        return self._call("count")

    def cut_all(self):
        """Abort every live connection (RST to client and upstream); returns how many."""
        return self._call("cut_all")

    def cut_one(self, rng=None):
        """Abort one live connection picked at random; returns 1 or 0."""
        return self._call("cut_one", rng or random)

    def refuse(self, on=True):
        """True: close the listening socket, so new connections get ECONNREFUSED
        (like a server that is down); live ones are untouched.  False: listen
        again on the same port."""
        return self._call("refuse", bool(on))

    def start_chaos(self, mean_interval_s, seed=None, mode="all"):
        """Cut connections at random moments (exponential gaps, mean ``mean_interval_s``),
        from a background thread, until stop_chaos()/close().  ``mode``: "all"
        cuts every live connection each time, "one" a single random one.
        Deterministic schedule for a given ``seed``."""
        if mode not in ("all", "one"):
            raise ValueError("mode must be 'all' or 'one'")
        if mean_interval_s <= 0:
            raise ValueError("mean_interval_s must be > 0")
        self.stop_chaos()
        rng = random.Random(seed)
        self._chaos_stop = stop = threading.Event()

        def run():
            while not stop.wait(rng.expovariate(1.0 / mean_interval_s)):
                try:
                    self.cut_all() if mode == "all" else self.cut_one(rng)
                except RuntimeError:  # proxy closed under us
                    return

        self._chaos_thread = threading.Thread(target=run, name=f"TcpProxy-chaos:{self.port}", daemon=True)
        self._chaos_thread.start()

    def stop_chaos(self):
        self._chaos_stop.set()
        t, self._chaos_thread = self._chaos_thread, None
        if t is not None and t is not threading.current_thread():
            t.join(_COMMAND_TIMEOUT)

    def close(self):
        """Abort all connections, stop listening, end the thread.  Idempotent."""
        self.stop_chaos()
        if self._closed:
            return
        try:
            self._call("close")
        except RuntimeError:
            pass
        self._thread.join(_COMMAND_TIMEOUT)
        _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}>"

    # ------------------------------------------------------------ internals

    def _call(self, name, *args):
        if self._closed or not self._thread.is_alive():
            raise RuntimeError("TcpProxy is closed")
        if threading.current_thread() is self._thread:
            return self._run_command(name, args)
        done = threading.Event()
        box = {}
        self._commands.put((name, args, done, box))
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"TcpProxy thread did not answer {name}()")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self._listener = s
        self._sel.register(s, selectors.EVENT_READ, "listen")

    def _unlisten(self):
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _run_command(self, name, args):
        if name == "count":
            return len({id(p) for p in self._pipes.values()})
        if name == "cut_all":
            pipes = {id(p): p for p in self._pipes.values()}.values()
            for p in list(pipes):
                self._kill(p)
            self.cuts += len(pipes)
            return len(pipes)
        if name == "cut_one":
            pipes = sorted({id(p): p for p in self._pipes.values()}.values(), key=lambda p: p.id)
            if not pipes:
                return 0
            self._kill(args[0].choice(pipes))
            self.cuts += 1
            return 1
        if name == "refuse":
            self._refusing = args[0]
            if args[0]:
                self._unlisten()
            elif self._listener is None:
                self._listen()
            return None
        if name == "close":
            for p in list({id(p): p for p in self._pipes.values()}.values()):
                self._kill(p)
            self._unlisten()
            self._closed = True
            return None
        raise ValueError(name)

    def _loop(self):
        try:
            while not self._closed:
                for key, events in self._sel.select(timeout=1.0):
                    tag = key.data
                    if tag == "wake":
                        self._drain_commands()
                    elif tag == "listen":
                        self._accept()
                    elif key.fileobj in self._pipes:
                        self._service(key.fileobj, events)
        finally:
            self._closed = True
            for p in list({id(p): p for p in self._pipes.values()}.values()):
                self._kill(p)
            if self._listener is not None:
                self._listener.close()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()
            # release anyone still waiting on a command
            while True:
                try:
                    _, _, done, box = self._commands.get_nowait()
                except queue.Empty:
                    break
                box["error"] = RuntimeError("TcpProxy is closed")
                done.set()

    def _drain_commands(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                name, args, done, box = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                box["result"] = self._run_command(name, args)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            done.set()

    def _accept(self):
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
            except OSError:
                _abort(client)   # target down: the client sees a reset
                continue
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next_id += 1
            pipe = _Pipe(self._next_id, client, upstream)
            self._pipes[client] = self._pipes[upstream] = pipe
            self._sel.register(client, selectors.EVENT_READ, "pipe")
            self._sel.register(upstream, selectors.EVENT_READ, "pipe")

    def _service(self, sock, events):
        pipe = self._pipes[sock]
        peer = pipe.peer(sock)
        try:
            if events & selectors.EVENT_WRITE:
                self._flush(pipe, sock)
            if events & selectors.EVENT_READ and not pipe.eof[sock]:
                data = sock.recv(_RECV_SIZE)
                if data:
                    pipe.out[peer] += data
                    self._flush(pipe, peer)
                else:
                    pipe.eof[sock] = True
                    self._flush(pipe, peer)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # reset / broken pipe on one side: propagate it as a reset to the other
            self._kill(pipe)
            return
        if sock in self._pipes:
            self._update(pipe)

    def _flush(self, pipe, sock):
        buf = pipe.out[sock]
        while buf:
            try:
                n = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                break
            del buf[:n]
        if not buf and pipe.eof[pipe.peer(sock)] and not pipe.shut[sock]:
            pipe.shut[sock] = True
            try:
                sock.shutdown(socket.SHUT_WR)   # pass the FIN on
            except OSError:
                pass

    def _update(self, pipe):
        """Done when both directions finished; else set read/write interest (back-pressure)."""
        if all(pipe.eof.values()) and all(pipe.shut.values()):
            self._drop(pipe, abort=False)
            return
        for sock in (pipe.client, pipe.upstream):
            ev = 0
            if not pipe.eof[sock] and len(pipe.out[pipe.peer(sock)]) < _BUF_LIMIT:
                ev |= selectors.EVENT_READ
            if pipe.out[sock]:
                ev |= selectors.EVENT_WRITE
            self._interest(sock, ev)

    def _interest(self, sock, ev):
        try:
            current = self._sel.get_key(sock).events
        except KeyError:
            current = 0
        if ev == current:
            return
        if not ev:
            self._sel.unregister(sock)
        elif not current:
            self._sel.register(sock, ev, "pipe")
        else:
            self._sel.modify(sock, ev, "pipe")

    def _kill(self, pipe):
        self._drop(pipe, abort=True)

    def _drop(self, pipe, abort):
        for sock in (pipe.client, pipe.upstream):
            self._pipes.pop(sock, None)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            if abort:
                _abort(sock)
            else:
                sock.close()
