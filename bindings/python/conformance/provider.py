"""The Python conformance provider: serves bindings/conformance/conformance.toml under a
service name given on the command line, through the generated stubs (the streaming
methods count, total and relay included).

    python3 bindings/python/conformance/provider.py --endpoint HOST:PORT --service NAME

Prints ``ready`` once registered and serves until killed (or until ``exit_now``, which
ends the process at once without replying).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from typing import AsyncIterator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import polycall  # noqa: E402
from generated import conformance as gen  # noqa: E402


class Conformance(gen.ConformanceProvider):
    """The conformance interface, implemented."""

    async def echo(self, request: bytes, ctx: polycall.CallContext) -> bytes:
        return request

    async def add(self, request: gen.AddInput, ctx: polycall.CallContext) -> gen.AddOutput:
        return gen.AddOutput(sum=request.a + request.b)

    async def fail(self, request: gen.FailInput, ctx: polycall.CallContext) -> gen.Empty:
        try:
            raise polycall.error_named(request.code, request.message)
        except ValueError:
            raise polycall.InvalidInputError(f"fail: {request.code!r} is not a status code name") from None

    async def sleep(self, request: gen.SleepInput, ctx: polycall.CallContext) -> gen.Empty:
        await asyncio.sleep(request.ms / 1000)
        return gen.Empty()

    async def exit_now(self, request: bytes, ctx: polycall.CallContext) -> bytes:
        sys.stdout.flush()
        os._exit(0)

    async def count(self, request: gen.CountInput, ctx: polycall.CallContext) -> AsyncIterator[gen.Counted]:
        for i in range(max(request.n, 0)):
            if request.fail_after is not None and i == request.fail_after:
                raise polycall.FailedPreconditionError(
                    f"count failed after {request.fail_after} messages, as asked")
            yield gen.Counted(i=i)

    async def total(self, requests: AsyncIterator[gen.Term], ctx: polycall.CallContext) -> gen.Total:
        total = 0
        async for number in requests:
            total += number.n
        return gen.Total(sum=total)

    async def relay(self, requests: AsyncIterator[bytes], ctx: polycall.CallContext) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="the runtime, HOST:PORT")
    ap.add_argument("--service", default=gen.SERVICE, help="the service name to register")
    args = ap.parse_args()
    provider = await polycall.Provider.connect(args.endpoint)
    Conformance().register(provider, args.service)
    await provider.start()
    print("ready", flush=True)
    await provider.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
