"""A load generator for tests that watch a running service: webhook POSTs at a fixed rate from a
thread, and optionally OpenClaw hook events handed over through the spool at a rate of their own.

The schedule is absolute (request i is due at start + i / rate): a request made late is made up for
at once, so any window of a few seconds holds rate x seconds requests, which is what a test
comparing rates needs.
"""

import copy
import json
import pathlib
import threading
import time

from outbox_relay.intake.spool import Spool

from factories import flat_message
from serviceutil import post

HOOK_EVENT = json.loads((pathlib.Path(__file__).parent / "samples" / "hook_group.json").read_text("utf-8"))


def hook_event(message_id):
    """OpenClaw's message:received event (the hook's spool writes these), with its own id."""
    event = copy.deepcopy(HOOK_EVENT)
    event["context"]["messageId"] = message_id
    return event


class Load:
    """`with Load(url, rate=40, spool=path, spool_rate=5) as load:` ... `load.posted`, `load.spooled`."""

    def __init__(self, url, rate, prefix="om_load", spool=None, spool_rate=0.0):
        self.url = url
        self.prefix = prefix
        self.posted = self.spooled = 0
        self.errors = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._paced, args=(rate, self._post), daemon=True)]
        if spool is not None and spool_rate:
            self._spool = Spool(spool)
            self._threads.append(threading.Thread(target=self._paced, args=(spool_rate, self._hand_over), daemon=True))

    def _post(self, i):
        r = post(self.url, flat_message(f"{self.prefix}_{i:07d}"), timeout=5)
        if r.status != 200:
            self.errors.append(r)
            return
        self.posted += 1

    def _hand_over(self, i):
        self._spool.write(hook_event(f"{self.prefix}_spool_{i:07d}"))
        self.spooled += 1

    def _paced(self, rate, send):
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            if self._stop.wait(max(0.0, start + i / rate - time.monotonic())):
                return
            try:
                send(i)
            except Exception as e:  # noqa: BLE001 - a refused request is counted, not fatal to the load
                self.errors.append(e)
            i += 1

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def __exit__(self, *exc):
        self.stop()
