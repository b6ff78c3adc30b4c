"""The Feishu/OpenClaw webhook, POST /webhook/feishu-message: a Falcon resource (service/http.py
assembles the app with /healthz and /metrics and serves it with waitress).

A 200 from the webhook means "committed to the outbox". Anything not committed gets a 4xx (the
request itself is wrong: retrying cannot help) or a 503 with Retry-After (we cannot commit now:
retry). Every error body is JSON: {"ok": false, "error": "<what was wrong>"}.

Who may post. Feishu cannot send a bearer token and OpenClaw cannot sign like Feishu, so each
sender proves itself with the credential it has:
  * nothing configured (no encrypt key, no verification token, no auth_token): anyone may post.
    This is meant for a relay listening on 127.0.0.1 next to the gateway.
  * otherwise one valid credential is required:
      - `Authorization: Bearer <auth_token>` (OpenClaw, scripts). Such a request skips the Feishu
        verification token check (it carries none), but an encrypted body still needs the key.
        A bearer token that is present but wrong is refused, whatever else the request carries.
      - a valid X-Lark-Signature (needs the encrypt key), or a matching Feishu verification token.
        An encrypted url_verification (Feishu does not sign it) counts as proven when it decrypts
        with our key.
  * with no auth_token configured, an Authorization header is ignored.

Content type: application/json, with or without `charset=utf-8`. A request with no Content-Type
at all is accepted as JSON, because simple scripts (urllib, some shell tools) omit it. Any other
type gets 415, so a form post never reaches the JSON parser.

Body size: waitress refuses a body over max_body while it reads the headers (Content-Length) or as
soon as a chunked body passes the limit (413, text/plain, connection closed). The app's own checks
below return the JSON 413 when the app runs under another server.
"""

import hmac
import json
import logging
import time

import falcon

from ..errors import InvalidMessage, NotAMessage, OutboxError, OutboxFull, SignatureError
from ..message import detect, normalize
from . import envelope as feishu
from .groupcommit import GroupCommit

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook/feishu-message"
RETRY_AFTER_LOCKED = 1    # a lock usually clears in well under a second
RETRY_AFTER_FULL = 30     # overflow=reject: the relay needs time to drain


class Rejected(Exception):
    """A webhook request we refuse: the HTTP status, the metrics outcome and a message for the sender."""

    def __init__(self, status, outcome, message, headers=None):
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.headers = headers or {}
        self.source = "unknown"  # set once the body has been read far enough to tell


class Webhook:
    def __init__(self, cfg, outbox, metrics):
        self.cfg = cfg
        self.outbox = outbox
        self.metrics = metrics
        self.auth_token = cfg.auth_token.encode("utf-8") if cfg.auth_token else None
        self.feishu_auth = bool(cfg.feishu_encrypt_key or cfg.feishu_verification_token)
        self.open = cfg.webhook_open
        # Concurrent requests share one transaction and one fsync; each is answered after it.
        self.commits = GroupCommit(outbox, key_ttl=cfg.feishu_replay_window)

    def on_post(self, req, resp):
        started = time.perf_counter()
        source = "unknown"
        with self.metrics.in_flight.track_inprogress():
            try:
                source, outcome, answer = self._handle(req)
            except Rejected as e:
                outcome = e.outcome
                source = e.source
                resp.status = falcon.code_to_http_status(e.status)
                resp.media = refusal(str(e))
                for name, value in e.headers.items():
                    resp.set_header(name, value)
                if e.status == 401 and self.auth_token:
                    resp.set_header("WWW-Authenticate", 'Bearer realm="outbox-relay"')
                # 401s at INFO (someone is knocking); other 4xx are the sender's to fix.
                level = {503: logging.WARNING, 401: logging.INFO}.get(e.status, logging.DEBUG)
                log.log(level, "webhook %s: %s", e.status, e)
            except Exception:
                self.metrics.count(source, "error")
                raise
            else:
                resp.media = answer
            self.metrics.count(source, outcome)
        self.metrics.webhook_seconds.observe(time.perf_counter() - started)

    def _handle(self, req):
        """-> (source, outcome, JSON answer) for a 200; raises Rejected for everything else."""
        _check_content_type(req)
        bearer = self._check_bearer(req)
        body = self._read_body(req)
        event = self._open(req, body, bearer)
        key = self._request_key(req)
        shape = detect(event)
        source = shape.source if shape is not None else "unknown"
        try:
            if event.get("type") == "url_verification":
                challenge = event.get("challenge")
                if not isinstance(challenge, str):
                    raise InvalidMessage("url_verification without a challenge string")
                return "feishu", "verification", {"challenge": challenge}
            try:
                message = normalize(event)
            except NotAMessage as e:
                self.metrics.count_ignored(e.event_type)
                log.debug("webhook: ignored a %s event", e.event_type)
                return source, "ignored", {"ok": True, "ignored": e.event_type}
            source = message.source
            try:
                result = self.commits.put(message, key)
            except OutboxFull as e:
                raise Rejected(503, "unavailable", str(e),
                               {"Retry-After": str(RETRY_AFTER_FULL)}) from None
            except OutboxError as e:  # OutboxUnavailable and any other failure to commit
                raise Rejected(503, "unavailable", f"not stored, retry: {e}",
                               {"Retry-After": str(RETRY_AFTER_LOCKED)}) from None
            # The outbox's listeners (the in-process relay's wake-up) have run by now.
            if result.replayed:
                # 200, not a refusal: if Feishu ever sends a request again as it was (its 200 got lost),
                # it must not retry for hours; what the request carried is stored already.
                log.info("webhook: a signed request seen before (a replay, or a retry after a lost 200):"
                         " message %s not stored again", result.message_id)
                return source, "replayed", {"ok": True, "message_id": result.message_id, "duplicate": True,
                                            "replayed": True}
            outcome = ("duplicate_changed" if result.differs else "duplicate") if result.duplicate else "stored"
            answer = {"ok": True, "message_id": result.message_id, "duplicate": result.duplicate}
            if message.outbox_kind == "event":
                self.metrics.count_event(message.kind, "duplicate" if result.duplicate else "stored")
                answer.update(event_id=message.event_id, event=message.kind)
            return source, outcome, answer
        except (InvalidMessage, Rejected) as e:
            if isinstance(e, InvalidMessage):
                e = Rejected(400, "invalid", str(e))
            e.source = source
            raise e from None

    # -- the steps -----------------------------------------------------------------------------

    def _check_bearer(self, req):
        """True: a valid bearer token. False: none given (or none configured). Wrong: 401."""
        if self.auth_token is None:
            return False
        header = req.get_header("Authorization")
        if header is None:
            return False
        scheme, _, token = header.strip().partition(" ")
        # WSGI hands header values over as latin-1 str; compare the bytes that were sent.
        given = token.strip().encode("latin-1", "replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.auth_token):
            raise Rejected(401, "unauthorized", "wrong bearer token")
        return True

    def _request_key(self, req):
        """What identifies a signed request (its signature covers the timestamp, the nonce and the
        body), or None for one that is not signed: only a Feishu signature can tell a replay."""
        signature = req.get_header(feishu.HEADER_SIGNATURE)
        if not (self.cfg.feishu_encrypt_key and signature):
            return None
        return "lark-signature:" + signature.strip().lower()

    def _read_body(self, req):
        limit = self.cfg.max_body
        length = req.content_length  # falcon answers 400 itself for a malformed Content-Length
        if length is not None and length > limit:
            raise Rejected(413, "too_large",
                           f"body is {length} bytes, the limit is {limit}")
        if length is None and req.env.get("wsgi.input_terminated"):
            stream = req.stream  # chunked: the server ends the stream where the body ends
        else:
            stream = req.bounded_stream  # never reads past Content-Length (none: nothing)
        # Read one byte past the limit, never more, so a chunked body cannot make us buffer it all.
        chunks, size = [], 0
        while size <= limit:
            chunk = stream.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        if size > limit:
            raise Rejected(413, "too_large", f"body is over the limit of {limit} bytes")
        if not body.strip():
            raise Rejected(400, "invalid", "request body is empty")
        return body

    def _open(self, req, body, bearer):
        """Authenticate and unwrap the body (feishu.open_envelope on the raw bytes) -> event dict."""
        cfg = self.cfg
        signature = req.get_header(feishu.HEADER_SIGNATURE)
        try:
            event = feishu.open_envelope(
                body, encrypt_key=cfg.feishu_encrypt_key,
                # A bearer-authenticated sender (OpenClaw) has no Feishu token to show.
                verification_token=None if bearer else cfg.feishu_verification_token,
                timestamp=req.get_header(feishu.HEADER_TIMESTAMP),
                nonce=req.get_header(feishu.HEADER_NONCE),
                signature=signature, max_age=cfg.feishu_replay_window)
        except SignatureError as e:
            hint = " (or send Authorization: Bearer <auth_token>)" if self.auth_token and not bearer else ""
            raise Rejected(401, "unauthorized", f"{e}{hint}") from None
        except InvalidMessage as e:
            raise Rejected(400, "invalid", str(e)) from None
        if self.open or bearer or cfg.feishu_verification_token:
            return event  # the token, when configured, was checked by open_envelope
        if cfg.feishu_encrypt_key and signature:
            return event  # open_envelope verified the signature over the raw body
        if cfg.feishu_encrypt_key and event.get("type") == "url_verification" and _was_encrypted(body):
            return event  # unsigned by Feishu's design, but only our key decrypts it
        raise Rejected(
            401, "unauthorized",
            "not authenticated: send Authorization: Bearer <auth_token>, or a Feishu-signed request"
            if self.auth_token else "not authenticated: this relay only accepts Feishu-signed requests")


def _check_content_type(req):
    ctype = req.content_type
    if not ctype or not ctype.strip():
        return
    media, params = falcon.parse_header(ctype)
    charset = params.get("charset", "utf-8").lower()
    if media.lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise Rejected(415, "unsupported_media_type",
                       f"Content-Type must be application/json (UTF-8), not {ctype[:100]!r}")


def _was_encrypted(body):
    try:
        return "encrypt" in json.loads(body)
    except (ValueError, TypeError):
        return False


def refusal(message):
    """The body of every refusal, whether falcon, our handlers or waitress itself refuses."""
    return {"ok": False, "error": message}
