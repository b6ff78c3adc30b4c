"""A fake Feishu Open API on 127.0.0.1 for the backfill tests: a real HTTP server, not a mock.

It answers as Feishu's documentation says (/work/shared/feishu/README.md, copied facts):
- POST /open-apis/auth/v3/tenant_access_token/internal -> {code, msg, tenant_access_token, expire};
  a wrong app id is code 10003, a wrong secret code 10014 (HTTP 400).
- GET /open-apis/im/v1/chats -> the bot's groups, paged (page_size <= 100).
- GET /open-apis/im/v1/messages?container_id_type=chat|thread -> a chat's messages (thread replies
  left out) or a thread's, paged (page_size <= 50), ascending or descending by create_time,
  start_time/end_time in seconds (inclusive; chats only: a thread refuses them), page_token.
- Bearer token required: missing -> 99991661, unknown/expired -> 99991663.
- A chat the bot is not in -> 230002; a chat marked forbidden -> its (code, msg).

Faults, switchable while it runs: every Nth request answers 429 + x-ogw-ratelimit-reset (code
99991400), HTTP 500, or a dropped connection; tokens revoked every Nth list call (before their
`expire`); a short token lifetime; a delay per message page (to catch a process mid-run); a
page_token that never moves on (`stuck_paging`) or goes round in a circle, page 1 -> 2 -> 1
(`token_cycle`); fields of every message page replaced (`page_fields`, e.g. {"items": 5}); a chat's
listing out of order, its first page's last message the second page's newest (`out_of_order`);
HTTP 500 for every message page from the Nth on (`fail_from_page`, N >= 1); every message page's
answer, status line and headers too, sent one byte every `trickle` seconds (`trickling` counts
those being sent); every message page's body replaced by `body` (bytes).
Every request is recorded (`requests`) with its arrival time and how it was answered.

Its clock is the test's: every answer's Date header tells `now()`, the real time moved on by
`advance(seconds)` or standing still (`freeze(at)`); `faults["no_date"]` leaves the header out. A
message created after `now()` is not listed yet. `calls()` counts the requests that reached it.
"""

import base64
import collections
import email.utils
import http.server
import json
import secrets
import threading
import time
import urllib.parse
import uuid

Request = collections.namedtuple("Request", "at method path query outcome")

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
CHATS_PATH = "/open-apis/im/v1/chats"
MESSAGES_PATH = "/open-apis/im/v1/messages"
BOT_NOT_IN_CHAT = (230002, "Bot/User can NOT be out of the chat.")
NO_PERMISSION = (230027, "Lack of necessary permissions, ext=the app has no permission to read this chat's history")


class FakeFeishu:
    """`with FakeFeishu() as fake:` -> fake.url is the --feishu-api-base to use."""

    def __init__(self, app_id="cli_fake00000000001", app_secret="fake-secret-XYZZY", token_ttl=7200):
        self.app_id, self.app_secret, self.token_ttl = app_id, app_secret, token_ttl
        self.chats = {}  # chat_id -> {"name", "items", "forbidden", "listed"}
        self.threads = collections.defaultdict(list)  # thread_id -> items, ascending
        self.tokens = {}  # token -> monotonic expiry
        self.requests = []
        self.faults = {"rate_limit_every": 0, "error_every": 0, "drop_every": 0, "revoke_every": 0,
                       "reset_seconds": 1, "page_delay": 0.0, "stuck_paging": False, "token_cycle": False,
                       "page_fields": {}, "out_of_order": False, "fail_from_page": 0, "no_date": False,
                       "trickle": 0.0, "body": None}
        self._n = self._lists = 0
        self._arrival = threading.local()
        self.in_flight = 0  # requests being answered: a killed client's last one may still be here
        self.trickling = 0  # answers being trickled out right now
        self._closing = threading.Event()  # ends the trickles when the server stops
        self._lock = threading.Lock()
        self._server = None
        self._ahead = 0.0  # seconds this fake's clock is ahead of the real one
        self._frozen = None  # a time the clock stands still at (freeze)

    def now(self):
        """The fake's time (epoch seconds): its answers' Date header says it. Nothing created after it
        is listed: Feishu cannot list a message before it is sent."""
        return self._frozen if self._frozen is not None else time.time() + self._ahead

    def advance(self, seconds):
        self._ahead += seconds

    def freeze(self, at):
        """The clock stands at `at` (epoch seconds) until frozen elsewhere: a test sends Feishu's
        messages of a time span, then moves the clock past them."""
        self._frozen = at

    def calls(self, since=0.0):
        """Requests that reached the server since `since` (time.monotonic()), whatever the answer:
        Feishu counts each one against the tenant's monthly calls."""
        return sum(r.at >= since for r in self.requests)

    # -- setup ----------------------------------------------------------------------------------

    def add_chat(self, chat_id, items, name=None, forbidden=None, listed=True):
        """items: API message items. Thread replies (thread_id set, not the thread's first) go to
        the thread only, as in Feishu, where the chat's list leaves them out."""
        items = sorted(items, key=lambda i: int(i["create_time"]))
        for item in items:
            if item.get("thread_id"):
                self.threads[item["thread_id"]].append(item)
        chat_items = [i for i in items if not i.get("thread_id") or self.threads[i["thread_id"]][0] is i]
        self.chats[chat_id] = {"name": name or chat_id, "items": chat_items, "forbidden": forbidden,
                               "listed": listed}

    def set_faults(self, **faults):
        unknown = set(faults) - set(self.faults)
        assert not unknown, unknown
        self.faults.update(faults)

    def __enter__(self):
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    # -- what the tests read back -----------------------------------------------------------------

    def served(self, path=MESSAGES_PATH):
        """Requests to `path` answered with data (code 0)."""
        return [r for r in self.requests if r.path == path and r.outcome == "ok"]

    def faulted(self):
        return [r for r in self.requests if r.outcome in ("429", "500", "dropped", "revoked")]

    # -- answering ------------------------------------------------------------------------------------

    def answer(self, method, path, query, headers, body):
        """-> (status, headers, json body) or None to drop the connection."""
        self._arrival.at = time.monotonic()  # recorded as the request's time, whatever it waits for
        with self._lock:
            self.in_flight += 1
        try:
            return self._answer(method, path, query, headers, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, method, path, query, headers, body):
        with self._lock:
            self._n += 1
            n = self._n
            fault = self._fault(n)
        if fault:
            self._record(method, path, query, fault)
            return None if fault == "dropped" else self._fault_answer(fault)
        if method == "POST" and path == TOKEN_PATH:
            return self._token(path, query, body)
        if method != "GET" or path not in (CHATS_PATH, MESSAGES_PATH):
            return self._fail(method, path, query, 404, 404, "not found")
        auth = self._check_token(headers.get("Authorization", ""), path)
        if auth:  # an expired or revoked token is a fault the client must retry through
            return self._fail(method, path, query, 400, *auth)
        if path == CHATS_PATH:
            return self._chats(query)
        return self._messages(query)

    def _fault(self, n):
        f = self.faults
        for name, outcome in (("drop_every", "dropped"), ("error_every", "500"), ("rate_limit_every", "429")):
            if f[name] and n % f[name] == 0:
                return outcome
        return None

    def _fault_answer(self, fault):
        if fault == "500":
            return 500, {}, {"code": 1500, "msg": "internal error"}
        headers = {"x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": str(self.faults["reset_seconds"])}
        return 429, headers, {"code": 99991400, "msg": "request trigger frequency limit",
                              "error": {"log_id": uuid.uuid4().hex}}

    def _record(self, method, path, query, outcome):
        with self._lock:
            self.requests.append(Request(self._arrival.at, method, path, query, outcome))

    def _fail(self, method, path, query, status, code, msg, outcome="error"):
        self._record(method, path, query, outcome)
        return status, {}, {"code": code, "msg": msg, "error": {"log_id": uuid.uuid4().hex}}

    def _token(self, path, query, body):
        try:
            creds = json.loads(body or b"{}")
        except ValueError:
            creds = {}
        if creds.get("app_id") != self.app_id:
            return self._fail("POST", path, query, 400, 10003, "invalid param")
        if creds.get("app_secret") != self.app_secret:
            return self._fail("POST", path, query, 400, 10014, "app secret invalid")
        token = "t-" + secrets.token_hex(16)
        with self._lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
        self._record("POST", path, query, "ok")
        return 200, {}, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_ttl}

    def _check_token(self, header, path):
        """None when the bearer token is good, else (code, msg). Revokes every token now and then."""
        token = header[7:] if header.startswith("Bearer ") else ""
        if not token:
            return 99991661, "Missing access token for authorization. Please make a request with token attached."
        with self._lock:
            if path == MESSAGES_PATH:
                self._lists += 1
                if self.faults["revoke_every"] and self._lists % self.faults["revoke_every"] == 0:
                    self.tokens.clear()
            good = self.tokens.get(token, 0) > time.monotonic()
        return None if good else (99991663, "Invalid access token for authorization. Please make a request "
                                             "with token attached.", "revoked")

    def _chats(self, query):
        size = int(query.get("page_size", 20))
        if not 1 <= size <= 100:
            return self._fail("GET", CHATS_PATH, query, 400, 99992402, "field validation failed")
        listed = [{"chat_id": cid, "name": c["name"], "avatar": "", "description": "", "owner_id": "ou_owner",
                   "owner_id_type": "open_id", "external": False, "tenant_key": "736588c9260f175e"}
                  for cid, c in self.chats.items() if c["listed"]]
        return self._page(CHATS_PATH, query, listed, size)

    def _messages(self, query):
        kind, cid = query.get("container_id_type"), query.get("container_id", "")
        size = int(query.get("page_size", 20))
        if kind not in ("chat", "thread") or not 1 <= size <= 50:
            return self._fail("GET", MESSAGES_PATH, query, 400, 99992402, "field validation failed")
        if kind == "thread":
            if "start_time" in query or "end_time" in query:
                return self._fail("GET", MESSAGES_PATH, query, 400, 230001, "time range not supported for thread")
            items = self._sent(self.threads.get(cid, []))
        else:
            chat = self.chats.get(cid)
            if chat is None:
                return self._fail("GET", MESSAGES_PATH, query, 400, *BOT_NOT_IN_CHAT)
            if chat["forbidden"]:
                return self._fail("GET", MESSAGES_PATH, query, 400, *chat["forbidden"])
            items = _in_seconds(self._sent(chat["items"]), query.get("start_time"), query.get("end_time"))
            if self.faults["out_of_order"] and len(items) >= 2 * size:
                items[size - 1], items[2 * size - 1] = items[2 * size - 1], items[size - 1]
        if query.get("sort_type") == "ByCreateTimeDesc":
            items.reverse()
        if self.faults["page_delay"]:
            time.sleep(self.faults["page_delay"])  # a slow server, so a test can kill the client mid-run
        return self._page(MESSAGES_PATH, query, items, size)

    def _sent(self, items):
        now_ms = self.now() * 1000
        return [i for i in items if int(i["create_time"]) <= now_ms]

    def _page(self, path, query, items, size):
        offset = _offset(query.get("page_token"))
        if path == MESSAGES_PATH and self.faults["fail_from_page"] and offset >= self.faults["fail_from_page"] * size:
            return self._fail("GET", path, query, 500, 1500, "internal error", outcome="500")
        page = items[offset:offset + size]
        more = offset + size < len(items)
        data = {"has_more": more, "items": page}
        if more:
            following = offset + size
            if self.faults["token_cycle"] and following >= 3 * size:
                following = size  # a server bug: the third page's token is the second page's again
            data["page_token"] = base64.urlsafe_b64encode(f"o:{following}".encode()).decode()
            if self.faults["stuck_paging"] and query.get("page_token"):
                data["page_token"] = query["page_token"]  # a server bug: the same page again and again
        if path == MESSAGES_PATH:
            data.update(self.faults["page_fields"])
        self._record("GET", path, query, "ok")
        return 200, {}, {"code": 0, "msg": "success", "data": data}


def _in_seconds(items, start, end):
    start = int(start) if start else None
    end = int(end) if end else None
    return [i for i in items if (start is None or int(i["create_time"]) // 1000 >= start)
            and (end is None or int(i["create_time"]) // 1000 <= end)]


def _offset(token):
    if not token:
        return 0
    return int(base64.urlsafe_b64decode(token.encode()).decode().split(":")[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Feishu's gateway: the client's pool reuses it
    fake = None

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def _serve(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.fake.answer(self.command, url.path, query, self.headers, body)
        if answer is None:  # a dropped connection: no answer at all
            self.close_connection = True
            return
        status, headers, payload = answer
        data = json.dumps(payload, ensure_ascii=False).encode()
        if self.fake.faults["body"] is not None and url.path == MESSAGES_PATH:
            data = self.fake.faults["body"]
        if self.fake.faults["trickle"] and url.path == MESSAGES_PATH:
            self._trickle(status, headers, data)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, status, headers, data):
        """The whole answer, a byte every faults["trickle"] seconds, until it is sent, the client
        hangs up or the server stops."""
        lines = [f"HTTP/1.1 {status} {self.responses[status][0]}", "Content-Type: application/json; charset=utf-8",
                 f"Content-Length: {len(data)}", f"Date: {email.utils.formatdate(self.fake.now(), usegmt=True)}"]
        raw = "".join(line + "\r\n" for line in lines + [f"{k}: {v}" for k, v in headers.items()]).encode()
        raw += b"\r\n" + data
        self.close_connection = True
        with self.fake._lock:
            self.fake.trickling += 1
        try:
            for i in range(len(raw)):
                if self.fake._closing.wait(self.fake.faults["trickle"]):
                    return
                self.wfile.write(raw[i:i + 1])
        except OSError:  # the client hung up
            return
        finally:
            with self.fake._lock:
                self.fake.trickling -= 1

    def send_response(self, code, message=None):
        # http.server's own, with the Date of the fake's clock (or none).
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())
        if not self.fake.faults["no_date"]:
            self.send_header("Date", email.utils.formatdate(self.fake.now(), usegmt=True))

    def log_message(self, *args):  # quiet: the tests read `requests`
        pass


# -- history generation: the same message as an API item and as the v2 event ---------------------

TENANT = "736588c9260f175e"


def history(chat_id, count, start_s, span_s, *, thread_every=40, replies=3, recalled_every=0,
            edited_every=0, prefix="om"):
    """`count` messages in one chat over [start_s, start_s + span_s): [(api_item, v2_event)].
    Every `thread_every`-th message starts a thread whose next `replies` messages reply in it;
    a few share one second (Feishu's bounds are whole seconds). Deterministic."""
    pairs, thread = [], None
    step = max(1, span_s * 1000 // count)
    for i in range(count):
        # Every 7th message lands 1 ms after the one before: two in one second, now and then.
        created = start_s * 1000 + (i * step if i % 7 or not i else (i - 1) * step + 1)
        if thread and thread["left"] > 0:
            thread["left"] -= 1
            links = {"thread_id": thread["id"], "root_id": thread["root"], "parent_id": thread["root"]}
        else:
            thread = None
            links = {}
            if thread_every and i % thread_every == thread_every - 1:
                thread = {"id": f"omt_{chat_id[-6:]}_{i:05d}", "root": f"{prefix}_{chat_id[-6:]}_{i:06d}",
                          "left": replies}
                links = {"thread_id": thread["id"]}
        pairs.append(_pair(chat_id, i, created, links, prefix,
                           recalled=bool(recalled_every and i % recalled_every == recalled_every - 1),
                           edited=bool(edited_every and i % edited_every == edited_every - 2)))
    return pairs


def _pair(chat_id, i, created_ms, links, prefix, *, recalled, edited):
    message_id = f"{prefix}_{chat_id[-6:]}_{i:06d}"
    sender = f"ou_user{i % 5:02d}{chat_id[-4:]}"
    msg_type, content, mentions = _content(i)
    item = {"message_id": message_id, "root_id": links.get("root_id", ""), "parent_id": links.get("parent_id", ""),
            "thread_id": links.get("thread_id", ""), "msg_type": msg_type, "create_time": str(created_ms),
            "update_time": str(created_ms + (60000 if edited else 0)), "deleted": recalled, "updated": edited,
            "chat_id": chat_id, "sender": {"id": sender, "id_type": "open_id", "sender_type": "user",
                                           "tenant_key": TENANT},
            "body": {"content": "This message was recalled" if recalled else content},
            "mentions": [{"key": m["key"], "id": m["open_id"], "id_type": "open_id", "name": m["name"],
                          "tenant_key": TENANT} for m in mentions],
            "upper_message_id": ""}
    event_message = {"message_id": message_id, "root_id": links.get("root_id", ""),
                     "parent_id": links.get("parent_id", ""), "create_time": str(created_ms),
                     "update_time": str(created_ms), "chat_id": chat_id, "thread_id": links.get("thread_id", ""),
                     "chat_type": "group", "message_type": msg_type, "content": content,
                     "mentions": [{"key": m["key"], "id": {"union_id": "on_" + m["open_id"][3:], "user_id": "u1",
                                                           "open_id": m["open_id"]},
                                   "name": m["name"], "tenant_key": TENANT} for m in mentions]}
    event = {"schema": "2.0",
             "header": {"event_id": uuid.uuid5(uuid.NAMESPACE_URL, message_id).hex,
                        "event_type": "im.message.receive_v1", "create_time": str(created_ms + 5),
                        "token": "v-token", "app_id": "cli_fake00000000001", "tenant_key": TENANT},
             "event": {"sender": {"sender_id": {"union_id": "on_" + sender[3:], "user_id": "u" + sender[-6:],
                                                "open_id": sender}, "sender_type": "user", "tenant_key": TENANT},
                       "message": event_message}}
    return item, event


def _content(i):
    """A text (some with a mention, some Chinese), a post, an image or a file: (type, JSON string, mentions)."""
    kind = i % 5
    if kind in (0, 1):
        mentions = [{"key": "@_user_1", "open_id": f"ou_mention{i % 3}", "name": "Tom"}] if kind == 1 else []
        text = ("@_user_1 " if mentions else "") + f"消息 {i}: 明天的会议改到下午三点 ✅ message {i}"
        return "text", json.dumps({"text": text}, ensure_ascii=False), mentions
    if kind == 2:
        post = {"title": f"周报 {i}", "content": [[{"tag": "text", "text": "本周进度："},
                                                   {"tag": "a", "href": "https://example.com", "text": "链接"}],
                                                  [{"tag": "img", "image_key": f"img_v2_{i}"}]]}
        return "post", json.dumps(post, ensure_ascii=False), []
    if kind == 3:
        return "image", json.dumps({"image_key": f"img_v2_{i:06d}"}), []
    return "file", json.dumps({"file_key": f"file_v2_{i:06d}", "file_name": f"report-{i}.pdf"}), []
