#!/usr/bin/env node
// Run the outbox-relay OpenClaw hook outside the gateway (tests, smoke checks, the benchmark).
//
//   node run-hook.mjs event.json               # one event (or: node run-hook.mjs - < event.json)
//   node run-hook.mjs --jsonl events.jsonl     # one event per line, handled one after another
//
// Uses the same env vars as the hook (OUTBOX_RELAY_SPOOL, OUTBOX_RELAY_URL, OUTBOX_RELAY_AUTH_TOKEN,
// OUTBOX_RELAY_TIMEOUT_MS, OUTBOX_RELAY_MAX_TRIES). Prints the handler's result as one JSON line on
// stdout per event (with --jsonl, plus "ms": the time the handler took); exit status 0 iff every
// event was handed over (ok), else 1 (including events the hook skips and unreadable input).

import { readFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";

async function readInput(arg) {
  if (arg && arg !== "-") return readFile(arg, "utf8");
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function loadHandler() {
  const { default: handler } = await import(new URL("./outbox-relay/handler.js", import.meta.url));
  return handler;
}

async function runOne(arg) {
  let event;
  try {
    event = JSON.parse(await readInput(arg));
  } catch (err) {
    console.error(`run-hook: cannot read event JSON: ${err.message}`);
    return 1;
  }
  const result = await (await loadHandler())(event);
  process.stdout.write(JSON.stringify(result) + "\n");
  return result?.ok ? 0 : 1;
}

async function runLines(arg) {
  let events;
  try {
    events = (await readInput(arg)).split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  } catch (err) {
    console.error(`run-hook: cannot read JSON lines: ${err.message}`);
    return 1;
  }
  const handler = await loadHandler();
  let failed = 0;
  for (const event of events) {
    const started = performance.now();
    const result = await handler(event);
    const ms = performance.now() - started;
    if (!result?.ok) failed += 1;
    process.stdout.write(JSON.stringify({ ...result, ms }) + "\n");
  }
  return failed ? 1 : 0;
}

// Explicit exit: do not linger on keep-alive sockets after the answer is in.
const args = process.argv.slice(2);
const main = args[0] === "--jsonl" ? runLines(args[1]) : runOne(args[0]);
main.then(
  (code) => process.exit(code),
  (err) => {
    console.error(`run-hook: ${err?.message ?? err}`);
    process.exit(1);
  },
);
