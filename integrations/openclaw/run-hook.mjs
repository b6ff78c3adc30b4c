#!/usr/bin/env node
// Run the outbox-relay OpenClaw hook once, outside the gateway (tests, smoke checks).
//
//   node run-hook.mjs event.json        # or: node run-hook.mjs - < event.json
//
// Uses the same env vars as the hook (OUTBOX_RELAY_URL, OUTBOX_RELAY_AUTH_TOKEN,
// OUTBOX_RELAY_TIMEOUT_MS, OUTBOX_RELAY_MAX_TRIES). Prints the handler's result
// as one JSON line on stdout; exit status 0 iff the relay answered 2xx, else 1
// (including events the hook skips and unreadable input).

import { readFile } from "node:fs/promises";

async function readInput(arg) {
  if (arg && arg !== "-") return readFile(arg, "utf8");
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  let event;
  try {
    event = JSON.parse(await readInput(process.argv[2]));
  } catch (err) {
    console.error(`run-hook: cannot read event JSON: ${err.message}`);
    return 1;
  }
  const { default: handler } = await import(new URL("./outbox-relay/handler.js", import.meta.url));
  const result = await handler(event);
  process.stdout.write(JSON.stringify(result) + "\n");
  return result?.ok ? 0 : 1;
}

// Explicit exit: do not linger on keep-alive sockets after the answer is in.
main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`run-hook: ${err?.message ?? err}`);
    process.exit(1);
  },
);
