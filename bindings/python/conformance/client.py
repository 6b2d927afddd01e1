"""The Python conformance client: runs the scenarios against a provider of
bindings/conformance/conformance.toml registered under a given service name, through
the generated stubs, on one connection.

    python3 bindings/python/conformance/client.py --endpoint HOST:PORT --service NAME [--skip exit_now]

Prints one JSON line per scenario ``{"scenario", "ok", "detail"}``; exits 0 iff all
passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import polycall  # noqa: E402
from generated import conformance as gen  # noqa: E402

SCENARIOS = ["echo_small", "add", "error_typed", "unknown_method", "deadline", "big_8mib",
             "concurrent_1000", "stream_server", "stream_error", "stream_client", "stream_bidi",
             "provider_disconnect"]


class Failed(Exception):
    """A scenario's expectation did not hold."""


def expect_error(e: BaseException, cls: type, what: str) -> polycall.PolycallError:
    if isinstance(e, cls):
        return e
    if isinstance(e, polycall.PolycallError):
        raise Failed(f"{what}: expected {cls.__name__}, got {type(e).__name__} ({e})")
    raise Failed(f"{what}: expected {cls.__name__}, got {type(e).__name__}: {e}")


async def scenario(name: str, svc: gen.ConformanceClient, client: polycall.Client, service: str) -> str:
    if name == "echo_small":
        data = os.urandom(64)
        back = await svc.echo(data)
        if back != data:
            raise Failed(f"echo returned {len(back)} different bytes")
        return "64 bytes back unchanged"
    if name == "add":
        r = await svc.add(gen.AddInput(a=2, b=40))
        if r.sum != 42:
            raise Failed(f"2 + 40 gave {r.sum}")
        return "2 + 40 = 42"
    if name == "error_typed":
        try:
            await svc.fail(gen.FailInput(code="invalid_input", message="bad x"))
        except BaseException as e:  # noqa: BLE001
            err = expect_error(e, polycall.InvalidInputError, "fail")
            if "bad x" not in err.message or err.name != "invalid_input":
                raise Failed(f"error {err.name} {err.message!r} lacks \"bad x\"") from None
            return f"invalid_input: {err.message}"
        raise Failed("fail answered without an error")
    if name == "unknown_method":
        try:
            await client.call(f"{service}.nope", b"")
        except BaseException as e:  # noqa: BLE001
            err = expect_error(e, polycall.UnknownMethodError, "nope")
            return f"unknown_method: {err.message}"
        raise Failed("a method that does not exist answered")
    if name == "deadline":
        # A 200 ms deadline on a 10 s sleep: typically answered after ~200 ms; the 5 s
        # bound (25x) tells "at the deadline" from "after the sleep", and a loaded 2-core
        # machine cannot break it.
        start = time.monotonic()
        try:
            await asyncio.wait_for(svc.sleep(gen.SleepInput(ms=10_000), timeout=0.2), 15)
        except BaseException as e:  # noqa: BLE001
            took = time.monotonic() - start
            expect_error(e, polycall.DeadlineExceededError, "sleep 10000 ms")
            if took >= 5.0:
                raise Failed(f"deadline_exceeded only after {took * 1000:.0f} ms") from None
            return f"deadline_exceeded after {took * 1000:.0f} ms"
        raise Failed("sleeping 10000 ms within a 200 ms deadline answered")
    if name == "big_8mib":
        data = os.urandom(8 << 20)
        back = await svc.echo(data)
        if back != data:
            raise Failed(f"8 MiB echo returned {len(back)} bytes that differ")
        return "8 MiB back unchanged"
    if name == "concurrent_1000":
        results = await asyncio.gather(
            *(svc.add(gen.AddInput(a=i, b=3 * i + 1)) for i in range(1000)), return_exceptions=True)
        bad = [(i, r) for i, r in enumerate(results)
               if isinstance(r, BaseException) or r.sum != 4 * i + 1]
        if bad:
            raise Failed(f"{len(bad)} of 1000 wrong, first: #{bad[0][0]}: {bad[0][1]}")
        return "1000 concurrent adds, each reply matching its input"
    if name == "stream_server":
        got: list[int] = []
        try:
            async for c in svc.count(gen.CountInput(n=5), timeout=30):
                got.append(c.i)
        except polycall.PolycallError as e:
            raise Failed(f"count 5 failed after {got}: {e.name}: {e.message}") from None
        if got != [0, 1, 2, 3, 4]:
            raise Failed(f"count 5 gave {got}")
        return "count 5: 0..4, then the end"
    if name == "stream_error":
        got = []
        try:
            async for c in svc.count(gen.CountInput(n=10, fail_after=3), timeout=30):
                got.append(c.i)
        except BaseException as e:  # noqa: BLE001
            err = expect_error(e, polycall.FailedPreconditionError, "count 10 failing after 3")
            if got != [0, 1, 2]:
                raise Failed(f"expected 3 messages then failed_precondition, got {got} then it") from None
            return f"3 messages, then failed_precondition: {err.message}"
        raise Failed(f"expected 3 messages then failed_precondition, got {got} then the end")
    if name == "stream_client":
        async def numbers():
            for n in range(1, 101):
                yield gen.Term(n=n)
        try:
            t = await svc.total(numbers(), timeout=30)
        except polycall.PolycallError as e:
            raise Failed(f"total: {e.name}: {e.message}") from None
        if t.sum != 5050:
            raise Failed(f"the total of 1..=100 came back as {t.sum}")
        return "1 + … + 100 = 5050 over a request stream"
    if name == "stream_bidi":
        sent = [os.urandom(1 + (i * 997) % 70_000) for i in range(50)]
        back: list[bytes] = []
        try:
            async for message in svc.relay(sent, timeout=60):
                back.append(message)
        except polycall.PolycallError as e:
            raise Failed(f"relay failed after {len(back)} messages: {e.name}: {e.message}") from None
        if back != sent:
            same = next((i for i, (a, b) in enumerate(zip(back, sent)) if a != b), min(len(back), len(sent)))
            raise Failed(f"{len(back)} messages back, not the 50 sent (the first difference at #{same})")
        sizes = [len(m) for m in sent]
        return f"50 messages ({min(sizes)} B to {max(sizes)} B) relayed in order, unchanged"
    if name == "provider_disconnect":
        try:
            await svc.exit_now(b"bye", timeout=10)
        except BaseException as e:  # noqa: BLE001
            err = expect_error(e, polycall.UnavailableError, "exit_now")
            return f"unavailable: {err.message}"
        raise Failed("exit_now answered")
    raise Failed(f"unknown scenario {name}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="the runtime, HOST:PORT")
    ap.add_argument("--service", default=gen.SERVICE, help="the service name to call")
    ap.add_argument("--skip", action="append", default=[], help="a scenario (or method exit_now) to skip")
    args = ap.parse_args()
    client = await polycall.Client.connect(args.endpoint)
    svc = gen.ConformanceClient(client, args.service)
    all_ok = True
    for name in SCENARIOS:
        if name in args.skip or (name == "provider_disconnect" and "exit_now" in args.skip):
            continue
        try:
            detail = await scenario(name, svc, client, args.service)
            ok = True
        except Failed as e:
            ok, detail = False, str(e)
        except BaseException as e:  # noqa: BLE001 - report, go on
            ok, detail = False, f"{type(e).__name__}: {e}"
        all_ok &= ok
        print(json.dumps({"scenario": name, "ok": ok, "detail": detail}), flush=True)
    await client.close()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
