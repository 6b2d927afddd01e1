"""A Python provider for the cross-language trace test: `py.relay` asks `ts.upper`
(through the runtime) and answers with its reply. Prints "ready" once registered and
serves until its stdin closes; flushes its spans every 200 ms meanwhile.

usage: python3 py_relay.py ENDPOINT
"""

import asyncio
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bindings" / "python"))

import polycall  # noqa: E402


async def main() -> None:
    provider = await polycall.Provider.connect(sys.argv[1], service_name="py-relay")
    client = provider.client

    async def relay(call: polycall.IncomingCall) -> bytes:
        return await client.call("ts.upper", call.payload, timeout=5.0)

    provider.add_method("py.relay", relay, summary="asks ts.upper and answers with its reply")
    await provider.start()
    print("ready", flush=True)
    # Serve until the test closes stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await provider.close()


asyncio.run(main())
