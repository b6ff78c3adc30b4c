"""A small client for the parts of Feishu's Open API that the backfill reads.

It owns what talking to Feishu takes, and nothing about the outbox: the tenant access token
(fetched on first use, refreshed before it expires, and once more if Feishu calls it invalid),
a request-rate limit (requests evenly spaced, never a burst), HTTP 429 / code 99991400 honoured
with `x-ogw-ratelimit-reset`, and capped exponential backoff with full jitter for 5xx answers,
dropped connections and timeouts. Every wait ends at once when `stop` is set, and so does a request
in flight; one that has not been answered in full within `deadline` seconds is cut off and retried
(cutoff.py: a server trickling its answer a byte at a time never trips a per-read timeout).

urllib3 rather than urllib: a connection pool (one TLS handshake for a whole backfill instead of
one per page), separate connect and read timeouts, and errors that say which of the two failed.
"""

import json
import logging
import random
import threading
import time

import urllib3

from .. import __version__
from ..errors import FeishuApiError, FeishuCredentialsError, FeishuUnavailable, Stopped
from ..logs import mask_url
from ..timeconv import http_date_to_ms
from .cutoff import Cutoff, watched_pool

log = logging.getLogger(__name__)

FEISHU_API_BASE = "https://open.feishu.cn"
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
CHATS_PATH = "/open-apis/im/v1/chats"
MESSAGE_PAGE_MAX = 50  # the documented maximum page_size of the message list
CHAT_PAGE_MAX = 100
RATE_LIMITED = 99991400
# "Missing/invalid/expired access token": fetch a new token and try once more.
TOKEN_INVALID = frozenset({99991661, 99991663, 99991668})
TOKEN_TRIES = 3  # one call's tries with a token Feishu calls invalid, a new token each time
ATTEMPTS = 6  # tries of one call through 5xx / network faults before giving up on it
MAX_RATE_LIMITED = 30  # 429s in a row on one call before giving up on it
RESET_CAP = 300.0  # never wait longer than this on one x-ogw-ratelimit-reset
# Refresh this long before the token's end (the official SDK: 10 minutes). Feishu hands out a
# new token only when the old one has less than 30 minutes left, so 10 minutes always works.
REFRESH_MARGIN = 600.0
TIMEOUT = urllib3.Timeout(connect=10.0, read=30.0)
DEADLINE = 60.0  # one request, connect to last byte: beyond the timeouts, which are per read
USER_AGENT = f"outbox-relay/{__version__}"


class RateLimiter:
    """Requests evenly spaced at most `rate` a second: no burst can exceed the configured rate,
    in any window. `hold(s)` pushes the next request out (Feishu's reset header)."""

    def __init__(self, rate, stop, clock=time.monotonic):
        self.interval = 1.0 / rate
        self.stop = stop
        self.clock = clock
        self.next_at = 0.0

    def wait(self):
        if self.stop.is_set():
            raise Stopped()
        delay = self.next_at - self.clock()
        if delay > 0 and self.stop.wait(delay):
            raise Stopped()
        self.next_at = max(self.next_at, self.clock()) + self.interval

    def hold(self, seconds):
        self.next_at = max(self.next_at, self.clock() + seconds)


class FeishuClient:
    """The Open API as the app `app_id` sees it. Not thread-safe: one backfill, one client."""

    def __init__(self, app_id, app_secret, *, base=FEISHU_API_BASE, rate=10.0, stop=None,
                 attempts=ATTEMPTS, backoff_base=0.5, backoff_max=30.0, timeout=TIMEOUT, deadline=DEADLINE):
        self.app_id = app_id
        self._secret = app_secret
        self.base = base.rstrip("/")
        self.stop = stop or threading.Event()
        self.limiter = RateLimiter(rate, self.stop)
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.deadline = deadline
        self._path = urllib3.util.parse_url(self.base).path or ""
        self._cutoff = Cutoff(self.stop)
        # urllib3's own retries are off: ours count, log, honour the reset header and the stop.
        self._pool = watched_pool(self.base, self._cutoff, maxsize=1, timeout=timeout, retries=False)
        self._token = None
        self._token_refresh_at = 0.0
        self._feishu_clock = None  # (Feishu's time in ms by its latest answer's Date, time.monotonic() then)
        self.stats = {"requests": 0, "retried": 0, "rate_limited": 0, "token_fetches": 0}
        # Called before every request goes out (token fetches, retries and 429s included: Feishu
        # counts them all); it raises (BudgetSpent) to keep the request from being sent.
        self.before_request = None

    def __repr__(self):
        return f"<FeishuClient {self.app_id} at {mask_url(self.base)}>"  # never the secret or the token

    def close(self):
        self._pool.close()

    def feishu_now_ms(self):
        """Feishu's time now by its own clock, whatever this host's says: the Date header of its
        latest answer (whole seconds, so never ahead) carried forward on the monotonic clock. None
        until an answer has one."""
        if self._feishu_clock is None:
            return None
        date_ms, at = self._feishu_clock
        return date_ms + int((time.monotonic() - at) * 1000)

    # -- the calls the backfill makes ---------------------------------------------------------

    def authenticate(self):
        """Fetch a token now: wrong credentials (FeishuCredentialsError) or an unreachable API
        (FeishuUnavailable) show before any chat is touched."""
        self._tenant_token()

    def chat_pages(self):
        """The chats the bot is in (groups), a page (a list of item dicts) at a time."""
        return pages(lambda token: self.get(CHATS_PATH, {"page_size": CHAT_PAGE_MAX, "page_token": token}),
                     "the bot's chats")

    def message_pages(self, container_type, container_id, *, start=None, end=None):
        """A chat's or a thread's messages, oldest first, a page (a list of item dicts) at a time;
        start/end in epoch seconds (chats only: the API filters threads by nothing)."""
        params = {"container_id_type": container_type, "container_id": container_id,
                  "sort_type": "ByCreateTimeAsc", "page_size": MESSAGE_PAGE_MAX, "start_time": start, "end_time": end}
        return pages(lambda token: self.get(MESSAGES_PATH, {**params, "page_token": token}),
                     f"{container_type} {container_id}")

    def get(self, path, params):
        """GET with the tenant token; the answer's `data`. A token Feishu calls invalid is replaced
        (twice at most: a brand-new token refused again is not a timing accident); FeishuApiError
        for an error code that retrying cannot fix."""
        params = {k: str(v) for k, v in params.items() if v is not None}
        for tries_left in range(TOKEN_TRIES - 1, -1, -1):
            body = self._call("GET", path, params=params, auth=True)
            if body.get("code") not in TOKEN_INVALID or not tries_left:
                return _data(body, path)
            log.info("Feishu says the access token is no longer valid: fetching a new one")
            self._token = None

    # -- token ------------------------------------------------------------------------------------

    def _tenant_token(self):
        if self._token is None or time.monotonic() >= self._token_refresh_at:
            self._fetch_token()
        return self._token

    def _fetch_token(self):
        body = self._call("POST", TOKEN_PATH, payload={"app_id": self.app_id, "app_secret": self._secret})
        token, expire = body.get("tenant_access_token"), body.get("expire")
        if body.get("code") != 0 or not isinstance(token, str) or not token:
            raise FeishuCredentialsError(
                f"Feishu refused the app credentials (feishu_app_id {self.app_id!r} / feishu_app_secret): "
                f"{body.get('msg') or 'no token in the answer'} (Feishu code {body.get('code')})")
        expire = float(expire) if isinstance(expire, (int, float)) and expire > 0 else 7200.0
        self._token = token
        self._token_refresh_at = time.monotonic() + expire - min(REFRESH_MARGIN, expire / 4)
        self.stats["token_fetches"] += 1
        log.debug("tenant access token fetched, valid for %.0f s", expire)

    # -- one call, with every retry it deserves ---------------------------------------------------

    def _call(self, method, path, *, params=None, payload=None, auth=False):
        """The JSON answer of one logical call. Rate-limited, retried through transient faults;
        a non-zero `code` is returned to the caller, not raised."""
        failures = limited = 0
        while True:
            token = self._slot_and_token() if auth else None
            if not auth:
                self.limiter.wait()
            answer = self._send(method, path, params, payload, token)
            if isinstance(answer, _RateLimited):
                limited = self._on_rate_limited(answer, path, limited)
            elif isinstance(answer, _Transient):
                failures = self._on_transient(answer, path, failures)
            else:
                return answer

    def _slot_and_token(self):
        """Wait for a request slot, then take the token: one checked before a long wait (a 429's
        reset) could have expired by the time the request goes out."""
        self.limiter.wait()
        fetches = self.stats["token_fetches"]
        token = self._tenant_token()
        if self.stats["token_fetches"] != fetches:
            self.limiter.wait()  # the token request took this slot
        return token

    def _send(self, method, path, params, payload, token):
        headers = {"User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if self.before_request is not None:
            self.before_request()
        self.stats["requests"] += 1
        resp = failure = None
        with self._cutoff.watching(self.deadline) as cutoff:
            try:
                resp = self._pool.request(method, self._path + path, fields=params, headers=headers,
                                          body=None if payload is None else json.dumps(payload).encode())
            except urllib3.exceptions.HTTPError as e:
                failure = e
        if cutoff.why == "stopped":
            raise Stopped()
        if resp is None:
            cut = cutoff.why == "deadline"
            return _Transient(f"no complete answer within {self.deadline:g} s" if cut else _network_reason(failure))
        date_ms = http_date_to_ms(resp.headers.get("Date"))
        if date_ms is not None:
            self._feishu_clock = (date_ms, time.monotonic())
        return _classify(resp)

    def _on_rate_limited(self, answer, path, limited):
        limited += 1
        self.stats["rate_limited"] += 1
        if limited >= MAX_RATE_LIMITED:
            raise FeishuUnavailable(f"Feishu kept refusing {path} for the request rate ({limited} times)")
        log.info("Feishu rate limit on %s: waiting %.1f s as it asks", path, answer.reset)
        self.limiter.hold(answer.reset)
        return limited

    def _on_transient(self, answer, path, failures):
        failures += 1
        if failures >= self.attempts:
            raise FeishuUnavailable(f"Feishu API {path}: {answer.reason} ({failures} attempts)")
        delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (failures - 1)))
        self.stats["retried"] += 1
        log.warning("Feishu API %s: %s; retry %d in %.1f s", path, answer.reason, failures, delay)
        if self.stop.wait(delay):
            raise Stopped()
        return failures


class _RateLimited:
    def __init__(self, reset):
        self.reset = reset


class _Transient:
    def __init__(self, reason):
        self.reason = reason


def _classify(resp):
    """An HTTP answer -> _RateLimited, _Transient, or the decoded JSON body (a dict)."""
    body = _json(resp.data)
    code = body.get("code") if body is not None else None
    if resp.status == 429 or code == RATE_LIMITED:
        return _RateLimited(_reset_seconds(resp.headers.get("x-ogw-ratelimit-reset")))
    if resp.status >= 500:
        return _Transient(f"HTTP {resp.status}")
    if body is None or not isinstance(code, int):
        # Not Feishu's JSON (a proxy's error page, a cut body): worth another try.
        return _Transient(f"HTTP {resp.status} without a Feishu JSON answer")
    return body


def _json(data):
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's limit
        return None
    return value if isinstance(value, dict) else None


def _reset_seconds(header):
    # Feishu sends whole seconds; a missing or odd header still means "wait": one second.
    try:
        seconds = float(header)
    except (TypeError, ValueError):
        return 1.0
    return min(max(seconds, 0.0), RESET_CAP) if seconds == seconds else 1.0


def _network_reason(exc):
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {reason}"[:200]


def pages(fetch, what):
    """The items of every page of one listing, a page at a time; fetch(page_token) -> the answer's data.
    FeishuApiError for an answer that is not a page, and for a page_token given before in this
    listing: a cycle (1 -> 2 -> 1) would page forever, counting the same messages every time round."""
    seen, token = set(), None
    while True:
        items, token = _page(fetch(token), what)
        yield items
        if token is None:
            return
        if token in seen:
            raise FeishuApiError(None, f"Feishu's page_token went round in a circle listing {what} (a token it "
                                       f"had given before came again after {len(seen) + 1} pages): paging stopped")
        seen.add(token)


def _page(data, what):
    """(the item dicts, the next page's token or None) of one answer, or FeishuApiError saying how
    it is not a page: guessing would page forever or end a listing early."""
    more, items, token = data.get("has_more"), data.get("items"), data.get("page_token")
    problem = None
    if not isinstance(more, bool):
        problem = "has_more is missing" if more is None else f"has_more is {_shown(more)}, not true or false"
    elif items is not None and not isinstance(items, list):
        problem = f"items is {_shown(items)}, not a list"
    elif more and not (isinstance(token, str) and token):
        problem = "has_more is true but there is no page_token"
    if problem:
        raise FeishuApiError(None, f"Feishu's answer listing {what} is not a page: {problem}")
    return [i for i in items or [] if isinstance(i, dict)], token if more else None


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _data(body, path):
    if body.get("code") != 0:
        raise FeishuApiError(body.get("code"), str(body.get("msg") or "no message")[:300])
    data = body.get("data")
    if not isinstance(data, dict):
        raise FeishuApiError(body.get("code"), f"{path} answered without a data object")
    return data
