"""One relay per outbox: an exclusive flock on the lock file beside it (outbox.siblings names it)."""

import fcntl
import os
import time

from ..errors import RelayLocked
from ..outbox.siblings import Siblings


class RelayLock:
    """An exclusive flock on `<outbox>.lock`: one relay per outbox. The kernel drops it when the
    process dies, even by SIGKILL, so a stale lock never blocks a restart."""

    # `status` and `health` take the lock for an instant to learn whether a relay runs; a relay
    # starting at that instant must not take them for another relay, so it tries for a moment.
    GRACE = 0.5

    def __init__(self, outbox_path):
        self.siblings = Siblings(outbox_path)
        self.path = self.siblings.lock
        self._fd = None

    def acquire(self, grace=GRACE):
        self.siblings.refuse_aliases()  # a second name for the file would be a second lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + grace
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RelayLocked(
                    f"another relay (pid {holder}) is already working {self.siblings.outbox}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def held_elsewhere(self):
        """Is the lock held by a relay (status, health, top)? Without creating the lock file
        (no relay ever ran here: no) or writing our pid into it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # closing drops a lock we took
        return False

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def relay_running(outbox_path):
    """True when some process holds the relay lock on this outbox (a relay is running). Looks only:
    no lock file is created where none is, and nothing is written into one."""
    return RelayLock(outbox_path).held_elsewhere()
