// OpenClaw internal hook: forward every inbound chat message to outbox-relay.
//
// Plain ESM JavaScript with no npm dependencies (Node >= 18 for global fetch),
// so the folder can be copied into a hooks directory as is.
//
// Contract: never throws into the gateway. The default export resolves to
// { ok, status, attempts, skipped?, error? } so run-hook.mjs (and tests) can
// tell a delivered message (ok: true, 2xx) from everything else.

const DEFAULT_URL = "http://127.0.0.1:8080";
const PATH = "/webhook/feishu-message";
const DEFAULT_TIMEOUT_MS = 3000;
const DEFAULT_MAX_TRIES = 3;
const BACKOFF_MS = [250, 1000]; // before the 2nd and 3rd try; + jitter
const RETRY_AFTER_CAP_MS = 5000; // a busy relay must not hold the hook for minutes
const LOG = "[outbox-relay]";

// Settings are read per call, not at import, so a gateway restart is not
// needed to change them and tests can vary them per process.
function settings() {
  const env = process.env;
  const base = (env.OUTBOX_RELAY_URL || DEFAULT_URL).trim().replace(/\/+$/, "");
  return {
    url: base + PATH,
    token: (env.OUTBOX_RELAY_AUTH_TOKEN || "").trim(),
    timeoutMs: positiveInt(env.OUTBOX_RELAY_TIMEOUT_MS, DEFAULT_TIMEOUT_MS),
    maxTries: positiveInt(env.OUTBOX_RELAY_MAX_TRIES, DEFAULT_MAX_TRIES),
  };
}

function positiveInt(raw, fallback) {
  const n = Number.parseInt(raw ?? "", 10);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

// Logs show where we posted but never credentials: origin drops user:pass@,
// and the bearer token is never formatted into any string we print.
function safeOrigin(url) {
  try {
    const u = new URL(url);
    return u.origin + u.pathname;
  } catch {
    return "<invalid OUTBOX_RELAY_URL>";
  }
}

// Config errors fail at once instead of being retried; and fetch's own error
// for user:pass@ URLs would echo the password into the gateway log.
function checkUrl(url) {
  const u = new URL(url);
  if (u.username || u.password) {
    throw new Error("OUTBOX_RELAY_URL must not contain user:password@ (use OUTBOX_RELAY_AUTH_TOKEN)");
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new Error("OUTBOX_RELAY_URL must be an http:// or https:// URL");
  }
}

function oneLine(text, max = 200) {
  return String(text).replace(/\s+/g, " ").trim().slice(0, max);
}

// 429 and 5xx mean "try again"; other 4xx mean the request itself is wrong
// (bad auth, unparsable body) and repeating it cannot help.
function retryable(status) {
  return status === 429 || (status >= 500 && status <= 599);
}

// Retry-After is either delta-seconds or an HTTP date.
function retryAfterMs(header) {
  if (!header) return null;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), RETRY_AFTER_CAP_MS) : null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The gateway config (API keys, channel secrets) must never leave the
// process, should some OpenClaw version attach it to message events.
function payloadOf(event) {
  const context = { ...(event.context || {}) };
  delete context.cfg;
  return JSON.stringify({ ...event, context });
}

async function postOnce(cfg, body) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), cfg.timeoutMs);
  try {
    const headers = {
      "Content-Type": "application/json; charset=utf-8",
      "User-Agent": "outbox-relay-openclaw-hook/1",
    };
    if (cfg.token) headers.Authorization = `Bearer ${cfg.token}`;
    const res = await fetch(cfg.url, { method: "POST", headers, body, signal: controller.signal });
    // Read the body inside the timeout so the socket is released either way.
    const text = await res.text();
    return { status: res.status, retryAfter: res.headers.get("retry-after"), text };
  } finally {
    clearTimeout(timer);
  }
}

export default async function outboxRelayHook(event) {
  if (!event || event.type !== "message" || event.action !== "received") {
    return { ok: false, skipped: true, status: null, attempts: 0 };
  }
  let cfg;
  let attempts = 0;
  let last = { status: null, error: null };
  try {
    if (typeof fetch !== "function") throw new Error("global fetch missing: Node >= 18 is required");
    cfg = settings();
    checkUrl(cfg.url);
    const body = payloadOf(event);
    while (attempts < cfg.maxTries) {
      attempts += 1;
      let wait = null;
      try {
        const res = await postOnce(cfg, body);
        if (res.status >= 200 && res.status < 300) {
          return { ok: true, status: res.status, attempts };
        }
        last = { status: res.status, error: `HTTP ${res.status}: ${oneLine(res.text)}` };
        if (!retryable(res.status)) break;
        wait = retryAfterMs(res.retryAfter);
      } catch (err) {
        // Network failure or our own timeout: the relay may just be restarting.
        // undici hides the useful part (ECONNREFUSED, ENOTFOUND, ...) in err.cause.
        const reason =
          err?.name === "AbortError"
            ? `timed out after ${cfg.timeoutMs} ms`
            : err?.cause?.code || err?.cause?.message || err?.message;
        last = { status: null, error: oneLine(reason) };
      }
      if (attempts < cfg.maxTries) {
        const backoff = BACKOFF_MS[Math.min(attempts - 1, BACKOFF_MS.length - 1)];
        await sleep(wait ?? backoff + Math.floor(Math.random() * 100));
      }
    }
  } catch (err) {
    last = { status: null, error: oneLine(err?.message ?? err) };
  }
  const where = cfg ? safeOrigin(cfg.url) : "outbox-relay";
  const id = event.context?.messageId ? ` message ${oneLine(event.context.messageId, 80)}` : "";
  console.error(`${LOG} could not deliver${id} to ${where} after ${attempts} attempt(s): ${last.error}`);
  return { ok: false, status: last.status, attempts, error: last.error };
}
