"""An open-loop HTTP load generator at a fixed rate (wrk has no rate limit): a separate process.

Request i is due at start + i/rate. Free connections take due requests in order; latency is
measured from the time a request was *due*, not when it was sent, so a stalled server cannot hide
its stall by slowing the generator down (no coordinated omission).

Usage: python bench/loadgen.py HOST PORT PATH BODIES_FILE RUN_PREFIX RATE SECONDS CONNECTIONS
Prints one JSON line: {"sent", "ok", "errors", "achieved_rate", "p50_ms", "p99_ms", "max_ms"}.
"""

import asyncio
import json
import sys
import time


async def worker(host, port, path, queue, results, errors):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            due, body = item
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/json; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            writer.write(head + body)
            await writer.drain()
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            done = time.perf_counter()
            if status.split()[1:2] == [b"200"]:
                results.append(done - due)
            else:
                errors.append(status.decode("latin-1").strip())
    finally:
        writer.close()


async def main(host, port, path, bodies, prefix, rate, seconds, connections):
    queue = asyncio.Queue()
    results, errors = [], []
    workers = [asyncio.create_task(worker(host, port, path, queue, results, errors))
               for _ in range(connections)]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = bodies[i % len(bodies)].replace(b"@@MID@@", f"{prefix}{i:024d}".encode(), 1)
        queue.put_nowait((due, body))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    lat = sorted(results)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 2) if lat else None

    return {"sent": total, "ok": len(results), "errors": len(errors), "first_error": errors[:1],
            "achieved_rate": round(total / elapsed, 1), "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None}


if __name__ == "__main__":
    host, port, path, bodies_file, prefix, rate, seconds, conns = sys.argv[1:9]
    with open(bodies_file, "rb") as f:
        bodies = [line for line in f.read().splitlines() if line]
    out = asyncio.run(main(host, int(port), path, bodies, prefix, float(rate), float(seconds), int(conns)))
    print(json.dumps(out))
