"""Calls/s of the Python client against a runtime's ``debug.echo``.

    python3 bindings/python/bench/client.py --endpoint HOST:PORT --size 64 --inflight 16 --seconds S

One connection, ``inflight`` calls outstanding at all times, 1 s of warm-up, then
``seconds`` of load; prints one JSON line
``{"lang": "python", "calls": N, "seconds": T, "calls_per_sec": X}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import polycall  # noqa: E402


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    args = ap.parse_args()
    client = await polycall.Client.connect(args.endpoint)
    payload = os.urandom(args.size)
    counting = False
    calls = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal calls
        while time.monotonic() < stop_at:
            back = await client.call("debug.echo", payload)
            if len(back) != len(payload):
                raise RuntimeError("debug.echo returned another size")
            if counting:
                calls += 1

    start = time.monotonic()
    stop_at = start + args.warmup + args.seconds
    workers = [asyncio.create_task(worker()) for _ in range(args.inflight)]
    await asyncio.sleep(args.warmup)
    counting = True
    t0 = time.monotonic()
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - t0
    await client.close()
    print(json.dumps({"lang": "python", "calls": calls, "seconds": round(elapsed, 3),
                      "calls_per_sec": round(calls / elapsed, 1) if elapsed > 0 else 0.0}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
