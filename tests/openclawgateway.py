"""The real OpenClaw gateway (npm: openclaw + @openclaw/feishu) in Feishu webhook mode, for tests.

Nothing of the gateway is mocked: scripts/ensure-openclaw.sh installs the published packages (cached
in .cache/openclaw/), ``Gateway`` runs ``openclaw gateway run`` with our hook installed as a user
would, and ``post_event`` delivers v2 events encrypted and signed as Feishu does. What stands in is
the outside world only: ``FeishuStandIn``, a local HTTPS server the gateway calls for tokens, the bot's
identity, user names, a reply's parent, media bytes and its own replies; ``ModelStandIn``, an
OpenAI-compatible endpoint so that agent turns complete.

    install = ensure_openclaw()                       # OpenClawUnavailable if npm cannot provide it
    with FeishuStandIn(tmp / "feishu") as feishu, ModelStandIn() as model:
        with Gateway(install, feishu, tmp / "gw", spool=spool_dir, model=model) as gw:
            gw.post_event(event_builders()["text"]())  # -> (HTTP status, body)
            spool_items(spool_dir)                     # what the hook wrote
            gw.transcript_lines("om_…")                # the transcript's user line(s) for it

Facts used (checked in openclaw@2026.9.6 / @openclaw/feishu@2026.9.5, see
tests/samples/openclaw_gateway/README.md): webhook mode needs encryptKey and verificationToken;
``domain`` may be an https:// base URL, so the stand-in must speak TLS with a certificate Node
trusts (NODE_EXTRA_CA_CERTS); the Feishu plugin is trusted only with its npm install record, so each
gateway starts from a copy of the cached install's state registry (see Gateway.prepare).

Plain library code: nothing here imports pytest (the test turns OpenClawUnavailable into a skip).
"""

from __future__ import annotations

import base64
import datetime as dt
import glob
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import pathlib
import secrets
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from outbox_relay.intake.envelope import encrypt, signature

import serverproc
from serverproc import free_port, port_open, register, spawn, stop_process, unregister, wait_until

REPO = pathlib.Path(serverproc.REPO)
ENSURE_SCRIPT = REPO / "scripts" / "ensure-openclaw.sh"
HOOK_SOURCE = REPO / "integrations" / "openclaw" / "outbox-relay"

# Test values only: nothing here is a real credential.
APP_ID = "cli_standin0000000001"
APP_SECRET = "standin-app-secret"
ENCRYPT_KEY = "standin-encrypt-key"
VERIFICATION_TOKEN = "standin-verification-token"
TENANT = "736588c9260f175e"
BOT_OPEN_ID = "ou_b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
BOT_NAME = "RelayBot"
TOM = "ou_84aad35d084aa403a838cf73ee18467"
LILEI = "ou_55aa0c7e1b2d3f4a5b6c7d8e9f0a1b2c"
USERS = {TOM: "Tom", LILEI: "Li Lei"}
GROUP = "oc_5ce6d572455d361153b7cb51da133945"
GROUP_NAME = "产品周会"
OTHER_GROUP = "oc_7a9f00112233445566778899aabbccdd"
GATED_GROUP = "oc_3e3e00112233445566778899aabbccdd"  # the test configures requireMention: true for it
P2P = "oc_p2p0aa11bb22cc33dd44ee55ff660011"


class OpenClawUnavailable(RuntimeError):
    """Node/npm/the packages could not be had: the caller skips (locally) or fails (CI)."""


@dataclass(frozen=True)
class Install:
    root: pathlib.Path

    @property
    def node(self):
        return self.root / "node" / "bin" / "node"

    @property
    def openclaw(self):
        return self.root / "gateway" / "node_modules" / "openclaw" / "openclaw.mjs"

    @property
    def feishu_plugin(self):
        """The installed @openclaw/feishu package (its dist/ is what the samples' README cites)."""
        return (self.root / "feishu").resolve()

    @property
    def plugin_registry(self):
        """The state database `openclaw plugins install` wrote, holding the plugin's install record."""
        return self.root / "plugin-state" / "state" / "openclaw.sqlite"


def ensure_openclaw(timeout=900):
    """scripts/ensure-openclaw.sh: the cached install, made on first use (~1 min, ~0.8 GB)."""
    try:
        res = subprocess.run(["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OpenClawUnavailable(f"scripts/ensure-openclaw.sh did not finish: {exc}") from exc
    if res.returncode != 0:
        raise OpenClawUnavailable(res.stderr.strip().splitlines()[-1] if res.stderr.strip()
                                  else f"scripts/ensure-openclaw.sh exited {res.returncode}")
    return Install(pathlib.Path(res.stdout.strip().splitlines()[-1]))


# -- Feishu's crypto: intake/envelope.py's encrypt and signature, checked against Feishu's vectors ----


def event_bytes(event) -> bytes:
    """The plaintext post_event encrypts (so a captured event_<type>.json is exactly what was sent)."""
    return json.dumps(event, ensure_ascii=False).encode()


# -- the Feishu Open API stand-in ------------------------------------------------------------------

_PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: object  # parsed JSON, else the raw bytes' length


def _self_signed(dirpath):
    """(cert path, key path): a CA-flagged certificate for 127.0.0.1/localhost, so Node accepts it
    as its own trust anchor when given by NODE_EXTRA_CA_CERTS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feishu-standin")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = pathlib.Path(dirpath, "standin.crt"), pathlib.Path(dirpath, "standin.key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FeishuStandIn:
    """Feishu's Open API as far as the gateway calls it, over HTTPS on 127.0.0.1.

    Every request is kept in ``requests``. Messages registered with ``add_message`` (Open API item
    shape, as api_list_messages.json) are served by GET im/v1/messages/:id (a reply's parent) and by
    the chat list GET im/v1/messages (for a later backfill comparison). Unknown calls get
    ``{"code": 0, "data": {}}``: the gateway must not stall on something we did not foresee, and the
    log says what it asked for.
    """

    def __init__(self, workdir, users=None, chats=None):
        self.workdir = pathlib.Path(workdir)
        self.users = dict(USERS if users is None else users)
        self.chats = dict({GROUP: GROUP_NAME} if chats is None else chats)
        self.messages = {}  # message_id -> API item
        self.requests = []
        self._lock = threading.Lock()
        self._sent = 0
        self._server = None

    def __enter__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path, key_path = _self_signed(self.workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        handler = type("Handler", (_StandInHandler,), {"standin": self})
        self._server = _TLSServer(("127.0.0.1", 0), handler, context)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="feishu-standin").start()
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add_message(self, item):
        with self._lock:
            self.messages[item["message_id"]] = item

    def calls(self, prefix):
        """Requests whose path starts with prefix (e.g. "/open-apis/bot/v3/info")."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    # -- answering -----------------------------------------------------------------------------------

    def answer(self, method, path, query, body):
        """-> (status, content type, bytes)."""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = len(body)
        with self._lock:
            self.requests.append(Request(method, path, query, parsed))
        parts = path.rstrip("/").split("/")[1:]  # "", "open-apis", ... -> "open-apis", ...
        route = "/".join(parts[:4])
        if method == "POST" and path.startswith("/open-apis/auth/v3/"):
            return self._json({"code": 0, "msg": "ok", "tenant_access_token": "t-standin-" + secrets.token_hex(8),
                               "app_access_token": "a-standin-" + secrets.token_hex(8), "expire": 7200})
        if path == "/open-apis/bot/v3/info":
            return self._json({"code": 0, "msg": "ok", "bot": {"activate_status": 2, "app_name": BOT_NAME,
                                                               "avatar_url": "", "ip_white_list": [],
                                                               "open_id": BOT_OPEN_ID}})
        if route == "open-apis/contact/v3/users" and len(parts) == 5:
            uid = urllib.parse.unquote(parts[4])
            return self._json({"code": 0, "msg": "success", "data": {"user": {
                "open_id": uid, "name": self.users.get(uid, "User " + uid[-4:]), "en_name": "",
                "avatar": {}, "status": {}}}})
        if route == "open-apis/im/v1/chats" and len(parts) == 4 and method == "GET":  # the bot's groups
            with self._lock:
                items = [{"chat_id": cid, "name": name, "owner_id": TOM, "tenant_key": TENANT}
                         for cid, name in self.chats.items()]
            return self._json({"code": 0, "msg": "success", "data": {"items": items, "has_more": False}})
        if route == "open-apis/im/v1/chats" and len(parts) == 5 and method == "GET":
            cid = urllib.parse.unquote(parts[4])
            return self._json({"code": 0, "msg": "success", "data": {
                "chat_id": cid, "name": self.chats.get(cid, ""), "chat_mode": "group", "chat_type": "private",
                "owner_id": TOM, "owner_id_type": "open_id", "tenant_key": TENANT}})
        if route == "open-apis/im/v1/messages":
            return self._messages(method, parts[4:], query, parsed)
        return self._json({"code": 0, "msg": "success", "data": {}})

    def _messages(self, method, rest, query, body):
        if method == "GET" and not rest:
            return self._list(query)
        if method == "GET" and len(rest) == 1:
            mid = urllib.parse.unquote(rest[0])
            item = self.messages.get(mid)
            if item is None:
                return self._json({"code": 230011, "msg": "The message is not found."}, status=400)
            # A merge_forward comes back with its sub-messages (upper_message_id = its id), as Feishu's does.
            with self._lock:
                children = [i for i in self.messages.values() if i.get("upper_message_id") == mid]
            return self._json({"code": 0, "msg": "success", "data": {"items": [item, *children]}})
        if method == "GET" and len(rest) == 3 and rest[1] == "resources":
            if query.get("type") == "image":
                return 200, "image/png", _PNG_1x1
            return 200, "application/octet-stream", b"stand-in bytes of " + rest[2].encode()
        if len(rest) == 2 and rest[1] == "reactions":
            return self._json({"code": 0, "msg": "success", "data": {"reaction_id": "r_" + secrets.token_hex(6)}})
        if method == "POST" and (not rest or rest[-1] == "reply"):  # the agent's reply attempt
            with self._lock:
                self._sent += 1
                mid = f"om_standin_sent_{self._sent:04d}"
            return self._json({"code": 0, "msg": "success", "data": {"message_id": mid, "msg_type": "text"}})
        return self._json({"code": 0, "msg": "success", "data": {}})

    def _list(self, query):
        """GET im/v1/messages: a chat's registered items by create_time, shape of api_list_messages.json."""
        size = int(query.get("page_size", 20))
        start = int(query.get("start_time") or 0) * 1000
        end = int(query["end_time"]) * 1000 + 999 if query.get("end_time") else None
        with self._lock:
            items = sorted((i for i in self.messages.values()
                            if i["chat_id"] == query.get("container_id") and int(i["create_time"]) >= start
                            and (end is None or int(i["create_time"]) <= end)),
                           key=lambda i: int(i["create_time"]))
        if query.get("sort_type") == "ByCreateTimeDesc":
            items.reverse()
        offset = int(query.get("page_token") or 0)
        page, more = items[offset:offset + size], offset + size < len(items)
        data = {"has_more": more, "items": page}
        if more:
            data["page_token"] = str(offset + size)
        return self._json({"code": 0, "msg": "success", "data": data})

    @staticmethod
    def _json(payload, status=200):
        return status, "application/json; charset=utf-8", json.dumps(payload, ensure_ascii=False).encode()


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context):
        super().__init__(address, handler)
        self.context = context

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake runs in the request's thread, on first read: a slow client cannot hold accept().
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _StandInHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's agent expects
    standin = None

    def _serve(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, ctype, data = self.standin.answer(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                                                  body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, *args):  # quiet: tests read `requests`
        pass

    def handle(self):
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError):
            pass  # a client that gave up mid-handshake is not our concern


# -- a model the agent can run on ---------------------------------------------------------------------


class ModelStandIn:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that answers every turn with REPLY.

    Without a model the agent run fails after the user line is committed; with this one the turn
    completes as in a real deployment (assistant lines in the transcript, the reply sent to Feishu),
    and ``requests`` shows what OpenClaw put into the prompt, which is not what it persisted."""

    REPLY = "好的，收到。"
    MODEL = "stand-in-model"

    def __init__(self):
        self.requests = []
        self._server = None

    def __enter__(self):
        handler = type("Handler", (_ModelHandler,), {"model": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="model-standin").start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def config(self):
        """openclaw.json settings that make this the agent's model (a custom OpenAI-compatible provider)."""
        return {
            "agents": {"defaults": {"model": {"primary": f"standin/{self.MODEL}"}}},
            "models": {"mode": "merge", "providers": {"standin": {
                "baseUrl": self.base_url, "apiKey": "standin-local", "api": "openai-completions",
                "models": [{"id": self.MODEL, "name": "Stand-in", "reasoning": False, "input": ["text"],
                            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                            "contextWindow": 128000, "maxTokens": 1024,
                            "compat": {"supportsTools": False}}]}}},
        }


class _ModelHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model = None

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": self.model.MODEL, "object": "model", "owned_by": "standin"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.model.requests.append(body)
        created, rid = int(time.time()), "chatcmpl-" + secrets.token_hex(6)
        usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        if not body.get("stream"):
            return self._json({"id": rid, "object": "chat.completion", "created": created, "model": self.model.MODEL,
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": self.model.REPLY}}],
                               "usage": usage})
        chunks = [{"role": "assistant", "content": ""}, {"content": self.model.REPLY}, {}]
        events = []
        for i, delta in enumerate(chunks):
            last = i == len(chunks) - 1
            events.append({"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model.MODEL,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
                           **({"usage": usage} if last else {})})
        data = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
        raw = data.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _json(self, payload):
        raw = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


# -- the gateway -----------------------------------------------------------------------------------


class Gateway:
    """``openclaw gateway run`` with a state directory of its own, Feishu in webhook mode, our hook,
    and a ModelStandIn as the agent's model when given one.

    The spool directory must exist (the hook refuses a missing one by design). ``log_text()`` is
    the gateway's output, for assertions; ``stop()`` is a clean SIGTERM, SIGKILL after a deadline.
    """

    def __init__(self, install, feishu, workdir, *, spool, model=None, relay_url=None, webhook_path="/feishu/events",
                 config=None):
        self.install, self.feishu, self.model = install, feishu, model
        # Merged into openclaw.json (e.g. per-group settings); a ModelStandIn adds its provider.
        self.overrides = merged(model.config(), config or {}) if model else (config or {})
        self.posted = []  # message_ids of every event post_event sent
        self.workdir = pathlib.Path(workdir)
        self.state = self.workdir / "state"
        self.home = self.workdir / "home"
        self.tmp = self.workdir / "tmp"
        self.log_path = self.workdir / "gateway.log"  # the console
        self.file_log_path = self.workdir / "openclaw.jsonl"  # logging.file, JSON lines
        self.spool, self.relay_url = pathlib.Path(spool), relay_url
        self.webhook_path = webhook_path
        self.webhook_port = self.gateway_port = None
        self._proc = None

    # -- setting up as a user would ----------------------------------------------------------------

    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENCLAW_", "OUTBOX_RELAY_", "FEISHU_")) and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "notify_socket")}
        # TMPDIR: OpenClaw keeps lock and staging directories under the OS temp dir; keep them ours.
        env.update(HOME=str(self.home), OPENCLAW_STATE_DIR=str(self.state), TMPDIR=str(self.tmp),
                   NODE_EXTRA_CA_CERTS=str(self.feishu.cert_path), NO_PROXY="127.0.0.1,localhost", NO_COLOR="1",
                   PATH=f"{self.install.node.parent}{os.pathsep}{env.get('PATH', '')}")
        return env

    def config(self):
        return merged(self._base_config(), self.overrides)

    def _base_config(self):
        token = "gw-test-" + secrets.token_hex(8)
        return {
            "gateway": {"mode": "local", "bind": "loopback", "port": self.gateway_port,
                        "auth": {"mode": "token", "token": token}},
            # debug: the file log then says "Prepared hook: outbox-relay" (loader.ts logs it at debug)
            # and why a message was skipped; the console stays at info.
            "logging": {"file": str(self.file_log_path), "level": "debug"},
            "plugins": {"entries": {"feishu": {"enabled": True}}},
            "channels": {"feishu": {
                "enabled": True, "appId": APP_ID, "appSecret": APP_SECRET, "encryptKey": ENCRYPT_KEY,
                "verificationToken": VERIFICATION_TOKEN, "domain": self.feishu.url,
                "connectionMode": "webhook", "webhookHost": "127.0.0.1", "webhookPort": self.webhook_port,
                "webhookPath": self.webhook_path, "dmPolicy": "open", "allowFrom": ["*"],
                "groupPolicy": "open", "requireMention": False, "typingIndicator": False}},
        }

    def _cli(self, *args, timeout=120):
        res = subprocess.run([str(self.install.node), str(self.install.openclaw), *args], env=self._env(),
                             cwd=self.workdir, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"openclaw {' '.join(args)} failed (exit {res.returncode}):\n"
                               f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def prepare(self):
        self._prepare_state()
        # `mkdir -p hooks` first: `cp -r dir hooks/` onto a missing hooks/ makes hooks/ the hook itself.
        hooks = self.state / "hooks"
        hooks.mkdir(exist_ok=True)
        shutil.copytree(HOOK_SOURCE, hooks / "outbox-relay", dirs_exist_ok=True)
        self._cli("hooks", "enable", "outbox-relay")

    def _prepare_state(self):
        """The directories, the ports, openclaw.json and the plugin's install record: what every gateway
        of the tests starts from, before its hook is installed."""
        for d in (self.home, self.state, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.webhook_port, self.gateway_port = free_port(), free_port()
        (self.state / "openclaw.json").write_text(json.dumps(self.config(), indent=2))
        # The Feishu plugin was installed once into the cache's own state directory by
        # `openclaw plugins install` (ensure-openclaw.sh). Its install record (npm spec, integrity,
        # path) lives in that state's SQLite registry, and only a plugin with such a record is
        # trusted with the channel ingress queue: loaded by plugins.load.paths instead, the channel
        # exits with PLUGIN_TRUST_REFUSED (reason=record-missing). So each gateway starts from a copy
        # of that registry, its record still pointing at the cached package, as a restored backup of
        # ~/.openclaw would.
        (self.state / "state").mkdir(exist_ok=True)
        shutil.copy2(self.install.plugin_registry, self.state / "state" / "openclaw.sqlite")
        # The gateway reads <state>/.env: where a systemd-run gateway gets OUTBOX_RELAY_* from.
        lines = [f"OUTBOX_RELAY_SPOOL={self.spool}"]
        if self.relay_url:
            lines.append(f"OUTBOX_RELAY_URL={self.relay_url}")
        (self.state / ".env").write_text("\n".join(lines) + "\n")

    # -- running ------------------------------------------------------------------------------------

    def start(self, timeout=120):
        self.prepare()
        argv = [str(self.install.node), str(self.install.openclaw), "gateway", "run"]
        self._proc = spawn(argv, runas=None, cwd=self.workdir, log_path=self.log_path,
                           pdeathsig=signal.SIGKILL, env=self._env())
        register(self)
        try:
            state = wait_until(self._ready, timeout=timeout, what="the gateway's webhook port and its hook")
        except TimeoutError as exc:
            self.kill()
            raise RuntimeError(f"{exc}; gateway log:\n{self.log_tail()}") from None
        if state == "exited":
            raise RuntimeError(f"the gateway exited with code {self._proc.returncode}; log:\n{self.log_tail()}")
        return self

    def _ready(self):
        if self._proc.poll() is not None:
            return "exited"  # truthy: stop waiting at once
        return port_open(self.webhook_port) and "Prepared hook: outbox-relay" in self.file_log_text()

    def stop(self, timeout=30):
        stop_process(self._proc, signal.SIGTERM, timeout)
        self._remove_lock_files()
        unregister(self)

    def _remove_lock_files(self):
        """OpenClaw keeps empty lock files in /tmp/openclaw-state-locks-<uid>/ (a fixed /tmp, not TMPDIR),
        named by sha256(database path)[:8]: remove ours once the gateway is gone."""
        if self._proc is not None and self._proc.poll() is None:
            return
        hashes = {hashlib.sha256(os.path.realpath(db).encode()).hexdigest()[:8]
                  for db in [self.state / "state" / "openclaw.sqlite", *self.agent_databases()]}
        for path in glob.glob(f"/tmp/openclaw-state-locks-{os.getuid()}/*.lock.sqlite"):
            if path.rsplit(".", 3)[-3] in hashes:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def kill(self):
        """SIGKILL the whole process group: the gateway's spawn broker is a child of its own."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # spawn() gave it a session (= group) of its own
            except OSError:
                pass
            self._proc.wait(timeout=10)
        self._remove_lock_files()
        unregister(self)

    def _atexit(self):
        self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def file_log_text(self):
        try:
            return self.file_log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def logged(self, *words):
        """A line of the console or of the file log (where debug lines such as a successful
        "message processed" go) holds all of words."""
        text = self.log_text() + "\n" + self.file_log_text()
        return any(all(w in line for w in words) for line in text.splitlines())

    def log_tail(self, lines=60):
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- Feishu's side ----------------------------------------------------------------------------------

    def post_event(self, event, timeout=30):
        """POST event as Feishu does (encrypted, signed) to the webhook: (status, body text)."""
        self.posted.append(event["event"]["message"]["message_id"])
        return post_encrypted(self.webhook_port, self.webhook_path, event, timeout)

    # -- what the gateway keeps ---------------------------------------------------------------------------

    def agent_databases(self):
        return sorted(glob.glob(str(self.state / "agents" / "*" / "agent" / "openclaw-agent.sqlite")))

    def transcript_rows(self):
        """Every transcript event of every agent database (TranscriptRow), in session and seq order."""
        return [row for db in self.agent_databases() for row in _read_transcripts(db)]

    def transcript_lines(self, message_id):
        """The user lines for message_id: __openclaw.transport.messageId, or the text's
        "[message_id: om_…]" (a line that gathered several queued messages names each)."""
        needle = f"[message_id: {message_id}]"
        out = []
        for row in self.transcript_rows():
            msg = row.event.get("message") or {}
            if msg.get("role") != "user":
                continue
            transport = (msg.get("__openclaw") or {}).get("transport") or {}
            if transport.get("messageId") == message_id or needle in json.dumps(msg.get("content"),
                                                                                 ensure_ascii=False):
                out.append(row)
        return out

    def table(self, name):
        """All rows of a table of every agent database, as dicts (read-only: the gateway writes live)."""
        rows = []
        for db in self.agent_databases():
            with _readonly(db) as conn:
                rows += [dict(r) for r in conn.execute(f"SELECT * FROM {name}")]  # noqa: S608 - our names
        return rows


def post_encrypted(port, path, event, timeout=30):
    """POST event to 127.0.0.1:port/path as Feishu does (encrypted and signed with ENCRYPT_KEY): the
    gateway's webhook, or outbox-relay's. -> (HTTP status, body text)."""
    body = json.dumps({"encrypt": encrypt(event_bytes(event).decode(), ENCRYPT_KEY)}, separators=(",", ":")).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Lark-Request-Timestamp": timestamp,
               "X-Lark-Request-Nonce": nonce, "X-Lark-Signature": signature(timestamp, nonce, ENCRYPT_KEY, body)}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        res = conn.getresponse()
        return res.status, res.read().decode("utf-8", "replace")
    finally:
        conn.close()


def merged(base, over):
    """base updated by over, nested dicts merged."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _readonly(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def spool_items(spool):
    """What the hook handed over: [(file name, exact bytes, parsed event)] of <spool>/new/."""
    items = []
    for path in sorted(pathlib.Path(spool, "new").glob("*.json")):
        data = path.read_bytes()
        items.append((path.name, data, json.loads(data)))
    return items


@dataclass
class TranscriptRow:
    db: str
    session_id: str
    seq: int
    stored_in: str  # "event_json", or "event_zstd" (a zstd frame; event_json NULL)
    text: str  # the event exactly as stored (decompressed)
    event: dict


def _read_transcripts(db):
    import zstandard  # a dependency of the package itself (backfill openclaw reads these frames too)

    with _readonly(db) as conn:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(transcript_events)")}
        select = "session_id, seq, event_json, " + ("event_zstd" if "event_zstd" in cols else "NULL")
        rows = conn.execute(f"SELECT {select} FROM transcript_events ORDER BY session_id, seq").fetchall()
    for session_id, seq, text, blob in rows:
        stored_in = "event_json"
        if text is None and blob is not None:  # a frame without its size: decompressobj, not decompress
            text = zstandard.ZstdDecompressor().decompressobj().decompress(blob).decode("utf-8")
            stored_in = "event_zstd"
        if text:
            yield TranscriptRow(db, session_id, seq, stored_in, text, json.loads(text))


# -- v2 im.message.receive_v1 events, one builder per message type ---------------------------------


def _now_ms():
    return int(time.time() * 1000)


def receive_event(msg_type, content, *, message_id=None, chat_id=GROUP, chat_type="group", sender=TOM,
                  mentions=(), parent_id="", root_id="", thread_id="", create_time=None):
    """A v2 im.message.receive_v1 event as Feishu delivers it (content is a JSON *string*)."""
    created = str(create_time or _now_ms())
    message_id = message_id or "om_" + secrets.token_hex(16)
    message = {"message_id": message_id, "root_id": root_id, "parent_id": parent_id, "create_time": created,
               "update_time": created, "chat_id": chat_id, "thread_id": thread_id, "chat_type": chat_type,
               "message_type": msg_type,
               "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
               "mentions": [{"key": key, "id": {"union_id": "on_" + oid[3:], "user_id": "u_" + oid[-6:],
                                                "open_id": oid}, "name": name, "tenant_key": TENANT}
                            for key, oid, name in mentions],
               "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Lark/7.30.5"}
    return {"schema": "2.0",
            "header": {"event_id": secrets.token_hex(16), "event_type": "im.message.receive_v1",
                       "create_time": str(int(created) + 40), "token": VERIFICATION_TOKEN, "app_id": APP_ID,
                       "tenant_key": TENANT},
            "event": {"sender": {"sender_id": {"union_id": "on_" + sender[3:], "user_id": "u_" + sender[-6:],
                                               "open_id": sender},
                                 "sender_type": "user", "tenant_key": TENANT},
                      "message": message}}


def as_api_item(event):
    """The Open API list item (api_list_messages.json's shape) of the message an event carries."""
    m, s = event["event"]["message"], event["event"]["sender"]
    return {"message_id": m["message_id"], "root_id": m.get("root_id", ""), "parent_id": m.get("parent_id", ""),
            "thread_id": m.get("thread_id", ""), "msg_type": m["message_type"], "create_time": m["create_time"],
            "update_time": m.get("update_time", m["create_time"]), "deleted": False, "updated": False,
            "chat_id": m["chat_id"],
            "sender": {"id": s["sender_id"]["open_id"], "id_type": "open_id", "sender_type": s["sender_type"],
                       "tenant_key": s["tenant_key"]},
            "body": {"content": m["content"]},
            "mentions": [{"key": x["key"], "id": x["id"]["open_id"], "id_type": "open_id", "name": x["name"],
                          "tenant_key": x["tenant_key"]} for x in m.get("mentions", [])],
            "upper_message_id": ""}


def api_items(event):
    """What the stand-in must know about an event's message: its API item, and for a merge_forward
    the forwarded sub-messages (items of another chat, upper_message_id = the merge_forward's id)."""
    item = as_api_item(event)
    if item["msg_type"] != "merge_forward":
        return [item]
    origin, created = "oc_f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0", int(item["create_time"]) - 86_400_000
    subs = [("text", {"text": "原来的第一条消息"}), ("image", {"image_key": "img_v3_forwarded_0001"}),
            ("file", {"file_key": "file_v3_forwarded_0001", "file_name": "纪要.docx"})]
    children = []
    for i, (msg_type, content) in enumerate(subs):
        child = dict(item, message_id=f"{item['message_id']}_{i}", msg_type=msg_type, chat_id=origin,
                     create_time=str(created + i * 1000), update_time=str(created + i * 1000),
                     body={"content": json.dumps(content, ensure_ascii=False)}, mentions=[],
                     upper_message_id=item["message_id"])
        child["sender"] = dict(item["sender"], id=LILEI)
        children.append(child)
    return [item, *children]


_POST_BODY = {"title": "周报", "content": [
    [{"tag": "text", "text": "本周进度：", "style": ["bold"]},
     {"tag": "a", "href": "https://example.com/report", "text": "报告"},
     {"tag": "at", "user_id": "@_user_1", "user_name": "Tom"}],
    [{"tag": "img", "image_key": "img_v3_post_0001"}],
    [{"tag": "text", "text": "数据库迁移完成 "}, {"tag": "emotion", "emoji_type": "SMILE"}],
    [{"tag": "code_block", "language": "GO", "text": "func main() {}"}]]}

_CARD = {"config": {"wide_screen_mode": True},
         "header": {"title": {"tag": "plain_text", "content": "部署通知"}, "template": "blue"},
         "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": "**v2.3** 已上线"}},
                      {"tag": "action", "actions": [{"tag": "button", "text": {"tag": "plain_text",
                                                                               "content": "查看"},
                                                     "type": "primary", "url": "https://example.com/deploy"}]}]}


def message_id_of(kind):
    """A stable om_ id per type (real ones are om_ + 32 hex), so captured samples diff cleanly."""
    return "om_" + hashlib.sha256(f"outbox-relay gateway sample {kind}".encode()).hexdigest()[:32]


def event_builders(created_ms=None, prefix=""):
    """{type name: () -> event}: one message of every type the gateway test posts (ids stable per
    type and prefix). Group messages go to GROUP (whose name the stand-in knows) unless said otherwise.
    created_ms: the create_time of the first type (the next ones a second apart), else now."""
    builders = _builders()
    return {kind: (lambda kind=kind, build=build, n=n: _with_id(build(), prefix + kind,
                                                              None if created_ms is None else created_ms + n * 1000))
            for n, (kind, build) in enumerate(builders.items())}


def _with_id(event, kind, created_ms=None):
    m = event["event"]["message"]
    m["message_id"] = message_id_of(kind)
    if created_ms is not None:
        m["create_time"] = m["update_time"] = str(created_ms)
        event["header"]["create_time"] = str(created_ms + 40)
    return event


def _builders():
    mention = [("@_user_1", LILEI, "Li Lei")]
    return {
        "text": lambda: receive_event("text", {"text": "明天的会议改到下午三点 ✅"}),
        "text_mention": lambda: receive_event("text", {"text": "@_user_1 请看一下周报 @_user_2"},
                                              mentions=mention + [("@_user_2", BOT_OPEN_ID, BOT_NAME)]),
        "post": lambda: receive_event("post", _POST_BODY, mentions=[("@_user_1", TOM, "Tom")]),
        "post_locale": lambda: receive_event("post", {"zh_cn": _POST_BODY}, mentions=[("@_user_1", TOM, "Tom")]),
        "image": lambda: receive_event("image", {"image_key": "img_v3_0001"}),
        "file": lambda: receive_event("file", {"file_key": "file_v3_0001", "file_name": "季度报告.pdf"}),
        "audio": lambda: receive_event("audio", {"file_key": "file_v3_audio_0001", "duration": 3000}),
        "media": lambda: receive_event("media", {"file_key": "file_v3_media_0001", "image_key": "img_v3_cover_0001",
                                                 "file_name": "demo.mp4", "duration": 12000}),
        "sticker": lambda: receive_event("sticker", {"file_key": "v3_sticker_0001"}),
        "interactive": lambda: receive_event("interactive", _CARD),
        "merge_forward": lambda: receive_event("merge_forward", {"content": "Merged and Forwarded Message"}),
        "p2p": lambda: receive_event("text", {"text": "你好，私聊消息"}, chat_id=P2P, chat_type="p2p", sender=LILEI),
        "p2p_image": lambda: receive_event("image", {"image_key": "img_v3_p2p_0001"}, chat_id=P2P, chat_type="p2p",
                                           sender=LILEI),
        "group": lambda: receive_event("text", {"text": "另一个群里的消息"}, chat_id=OTHER_GROUP, sender=LILEI,
                                       thread_id="omt_1a2b3c4d5e6f"),
    }


def reply_event(parent, prefix="", create_time=None):
    """A reply (parent_id = root_id = the parent's message_id) to the message parent (an event);
    the stand-in must know the parent (add_message) for OpenClaw to quote it."""
    pid = parent["event"]["message"]["message_id"]
    return receive_event("text", {"text": "收到，下午三点见"}, sender=LILEI, parent_id=pid, root_id=pid,
                         chat_id=parent["event"]["message"]["chat_id"], message_id=message_id_of(prefix + "reply"),
                         create_time=create_time)


# -- a gateway installed as the README says, on a fresh host --------------------------------------------


class ReadmeGateway(Gateway):
    """A Gateway whose state is a fresh temporary HOME's ~/.openclaw (no OPENCLAW_STATE_DIR), with our
    hook installed by following integrations/openclaw/README.md: `outbox-relay openclaw install-hook`
    (which makes ~/.openclaw/hooks), the lines it prints written to ~/.openclaw/.env, `openclaw hooks
    enable outbox-relay`. What the steps printed is kept in ``install_output`` and ``hooks_list``
    (`openclaw hooks list`).
    Only the plugin's install record is the harness's (see Gateway.prepare)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state = self.home / ".openclaw"
        self.install_output = self.hooks_list = None

    def _env(self):
        env = super()._env()
        del env["OPENCLAW_STATE_DIR"]  # a user's gateway: ~/.openclaw
        return env

    def prepare(self):
        self._prepare_state()
        if (self.state / "hooks").exists():
            raise RuntimeError("not a fresh host: ~/.openclaw/hooks exists before the install")
        exe = pathlib.Path(os.path.dirname(os.path.realpath(sys.executable)), "outbox-relay")
        exe = exe if exe.exists() else pathlib.Path(os.path.dirname(sys.executable), "outbox-relay")
        env = {k: v for k, v in self._env().items() if not k.startswith("OUTBOX_RELAY_")}
        res = subprocess.run([str(exe), "openclaw", "install-hook", "--spool", str(self.spool)], env=env,
                             capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if res.returncode != 0:
            raise RuntimeError(f"outbox-relay openclaw install-hook failed: {res.stderr}")
        self.install_output = res.stdout
        lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("OUTBOX_RELAY_")]
        (self.state / ".env").write_text("\n".join(lines) + "\n")
        self._cli("hooks", "enable", "outbox-relay")
        # `openclaw hooks list` (~20 s of CLI start on a loaded machine) runs while the gateway starts.
        self._listing = threading.Thread(target=self._list_hooks, name="openclaw-hooks-list", daemon=True)
        self._listing.start()

    def _list_hooks(self):
        try:
            self.hooks_list = self._cli("hooks", "list")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.hooks_list = f"openclaw hooks list failed: {exc}"

    def start(self, timeout=120):
        super().start(timeout)
        self._listing.join(timeout=120)
        return self
