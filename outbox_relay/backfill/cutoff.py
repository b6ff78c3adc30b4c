"""One HTTP request cut off from outside: when `stop` is set, or when it has taken its deadline in all.

urllib3's timeouts are per read: a server sending a byte every few seconds never trips them, and a
thread blocked in a read does not see the stop flag a signal handler sets. So a helper thread
watches each request and shuts its socket down, which ends a blocked read at once, whether in the
status line, the headers or the body. The pool's connections say which socket that is (watched_pool).
"""

import contextlib
import socket
import threading
import time

import urllib3

TICK = 0.05  # how often the helper looks at the stop flag: set by a signal handler, nothing can wait on it


class Cutoff:
    """`with cutoff.watching(seconds):` around one request; afterwards `why` is None, "stopped" or
    "deadline"."""

    def __init__(self, stop):
        self.stop = stop
        self.conn = None  # the connection the request being watched went out on
        self.why = None

    @contextlib.contextmanager
    def watching(self, seconds):
        self.conn, self.why = None, None
        done = threading.Event()
        helper = threading.Thread(target=self._watch, args=(done, time.monotonic() + seconds),
                                  name="feishu-cutoff", daemon=True)
        helper.start()
        try:
            yield self
        finally:
            done.set()
            helper.join()

    def _watch(self, done, deadline):
        while not done.wait(TICK):
            if self.why is None and self.stop.is_set():
                self.why = "stopped"
            elif self.why is None and time.monotonic() >= deadline:
                self.why = "deadline"
            if self.why is not None:
                self._cut()  # every tick until the request gives up: it may be on a new connection

    def _cut(self):
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already shut, or closed
                sock.shutdown(socket.SHUT_RDWR)


def watched_pool(url, cutoff, **pool_options):
    """urllib3's connection pool for the host of `url`, its connections telling `cutoff` when a
    request goes out on them."""
    pool = urllib3.connection_from_url(url, **pool_options)

    class Watched(pool.ConnectionCls):
        def request(self, *args, **kwargs):
            cutoff.conn = self
            return super().request(*args, **kwargs)

    pool.ConnectionCls = Watched
    return pool
