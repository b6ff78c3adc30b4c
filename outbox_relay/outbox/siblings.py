"""The files beside the outbox, named by one rule: the relay's lock, the damage marker, and the copies
kept of a file replaced under a running process (orphan) or of a damaged one (recover).

Each is the outbox file's real path (symlinks resolved) plus a suffix, so every spelling of the path
(relative, with `..`, through a symlink) meets the same lock and the same marker. A second *name* for
the file itself (a hard link) cannot be resolved that way, and is refused instead: SQLite names the
-wal and -shm files after the name it opened, so two names would be two WALs for one database, and
two relay locks for one queue.
"""

import os
import time

from ..errors import OutboxUnavailable

LOCK = ".lock"
DAMAGE_MARKER = ".damaged"
COMPANIONS = ("-wal", "-shm")  # SQLite's own files beside the database


class Siblings:
    def __init__(self, outbox_path):
        self.outbox = os.path.realpath(os.fspath(outbox_path))

    @property
    def lock(self):
        return self.outbox + LOCK

    @property
    def damage_marker(self):
        """Says the file is damaged: a damaged SQLite file cannot be trusted to carry that news
        itself, and `status`/`health` must not read the whole file to find out."""
        return self.outbox + DAMAGE_MARKER

    def orphan_copy(self):
        """Where a full copy of a file replaced under this process is kept."""
        return f"{self.outbox}.orphan-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"

    def damaged_copy(self):
        """Where `recover` moves a damaged file (with its -wal, -shm and marker) aside."""
        return f"{self.outbox}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"

    def refuse_aliases(self):
        """Raise OutboxUnavailable when the outbox file has more than one name (hard links)."""
        try:
            links = os.stat(self.outbox).st_nlink
        except OSError:
            return  # no file yet (or no way to it): opening it says what is wrong
        if links > 1:
            raise OutboxUnavailable(
                f"outbox {self.outbox} has {links} names (hard links): SQLite keeps a write-ahead log beside"
                " each name, so writing it under two names would damage it, and two relays could work it;"
                " remove the other names (find / -samefile it), or copy the file instead of linking it")
