// OpenClaw internal hook: hand every inbound chat message over to outbox-relay.
//
// Plain ESM JavaScript with no npm dependencies (Node >= 18 for global fetch),
// so the folder can be copied into a hooks directory as is.
//
// On the gateway's own host (OUTBOX_RELAY_SPOOL set) the event is written into
// outbox-relay's spool directory: tmp/ -> fsync -> rename into new/ -> fsync
// new/. That is a local commit: a few milliseconds, and it does not need the
// service to be up (`outbox-relay run` ingests new/ within ~0.1 s, or when it
// starts). If the spool cannot take it (full, read-only, missing) the hook
// logs one line and POSTs instead when OUTBOX_RELAY_URL is set. Without
// OUTBOX_RELAY_SPOOL (a gateway on another host) it POSTs, with retries.
//
// Contract: never throws into the gateway. The default export resolves to
// { ok, via?, file?, status?, attempts?, skipped?, error?, spoolError? } so
// run-hook.mjs (and tests) can tell a handed-over message (ok: true) from
// everything else.

import { randomBytes } from "node:crypto";
import { chmod, mkdir, open, rename, stat, unlink } from "node:fs/promises";
import { isAbsolute, join } from "node:path";

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
    spool: (env.OUTBOX_RELAY_SPOOL || "").trim(),
    urlSet: Boolean((env.OUTBOX_RELAY_URL || "").trim()),
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

// -- the spool: a local commit ---------------------------------------------------------------

// Same form as outbox_relay.handoff.item_name: sorting names sorts by hand-over time.
function itemName() {
  return `${String(Date.now()).padStart(13, "0")}.${process.pid}_${randomBytes(8).toString("hex")}.json`;
}

// tmp/ and new/ are created when missing, but the spool directory itself must
// exist: a mistyped path must fail loudly, not fill a directory nobody reads.
// What we create takes the spool's own mode (e.g. 2770, shared with the
// service's user), as outbox-relay does; files are 0640 (group-readable).
async function openTmp(spool, name) {
  const path = join(spool, "tmp", name);
  try {
    return await open(path, "wx", 0o640);
  } catch (err) {
    if (err?.code !== "ENOENT") throw err;
  }
  let mode;
  try {
    mode = (await stat(spool)).mode & 0o7777;
  } catch (err) {
    if (err?.code === "ENOENT") throw new Error(`the spool directory ${spool} does not exist`);
    throw err;
  }
  for (const sub of ["tmp", "new"]) {
    try {
      await mkdir(join(spool, sub));
      await chmod(join(spool, sub), mode);
    } catch (err) {
      if (err?.code !== "EEXIST") throw err;
    }
  }
  return open(path, "wx", 0o640);
}

// A rename is only durable once the directory holding the new name is synced.
// Filesystems that cannot fsync a directory say EINVAL; that is not a failure.
async function syncDir(path) {
  const dir = await open(path, "r");
  try {
    await dir.sync().catch((err) => {
      if (err?.code !== "EINVAL") throw err;
    });
  } finally {
    await dir.close();
  }
}

async function handOver(spool, body) {
  if (!isAbsolute(spool)) throw new Error("OUTBOX_RELAY_SPOOL must be an absolute path");
  const name = itemName();
  const tmp = join(spool, "tmp", name);
  const fh = await openTmp(spool, name);
  try {
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(spool, "new", name));
  } catch (err) {
    await unlink(tmp).catch(() => {}); // half-written: never leave it for the sweep
    throw err;
  }
  // Past the rename the item is visible to the ingester: if this sync fails we
  // fall back to HTTP anyway, and the relay dedupes the second copy.
  await syncDir(join(spool, "new"));
  return name;
}

// -- HTTP: for a gateway on another host, and the fallback ------------------------------------

async function postEvent(cfg, body, id) {
  let attempts = 0;
  let last = { status: null, error: null };
  try {
    if (typeof fetch !== "function") throw new Error("global fetch missing: Node >= 18 is required");
    checkUrl(cfg.url);
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
  console.error(`${LOG} could not deliver${id} to ${safeOrigin(cfg.url)} after ${attempts} attempt(s): ${last.error}`);
  return { ok: false, status: last.status, attempts, error: last.error };
}

export default async function outboxRelayHook(event) {
  if (!event || event.type !== "message" || event.action !== "received") {
    return { ok: false, skipped: true, status: null, attempts: 0 };
  }
  let id = "";
  try {
    id = event.context?.messageId ? ` message ${oneLine(event.context.messageId, 80)}` : "";
    const cfg = settings();
    const body = payloadOf(event);
    if (!cfg.spool) return await postEvent(cfg, body, id);
    let spoolError;
    try {
      return { ok: true, via: "spool", file: await handOver(cfg.spool, body) };
    } catch (err) {
      spoolError = oneLine(err?.message ?? err);
    }
    // One line that says what failed and what happens next; never the token.
    const next = cfg.urlSet ? `posting it to ${safeOrigin(cfg.url)} instead` : "OUTBOX_RELAY_URL is not set: not handed over";
    console.error(`${LOG} could not write${id} to the spool ${cfg.spool}: ${spoolError}; ${next}`);
    if (!cfg.urlSet) return { ok: false, via: "spool", error: spoolError };
    return { ...(await postEvent(cfg, body, id)), via: "http", spoolError };
  } catch (err) {
    // Anything unexpected (an event JSON cannot encode): one line, never a throw.
    const error = oneLine(err?.message ?? err);
    console.error(`${LOG} could not hand over${id}: ${error}`);
    return { ok: false, status: null, attempts: 0, error };
  }
}
