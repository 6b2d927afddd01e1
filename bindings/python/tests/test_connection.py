"""The connection against a scripted peer on loopback: handshake, fragmentation within
the peer's max_frame, flow-control credit, interning, deadlines, cancellation, typed
errors, calls the peer opens."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import unittest
from typing import Optional

import polycall
from polycall import codec
from polycall import frame as F
from polycall.connection import Connection, Payload, Settings


class Peer:
    """The accepting side, scripted: answers HELLO with a WELCOME of ``limits`` (agreeing
    to ``features``), then hands frames to the test."""

    def __init__(self, limits: Optional[F.Limits] = None, compressions: Optional[list[int]] = None,
                 features: int = 0) -> None:
        self.limits = limits or F.Limits()
        self.compressions = compressions
        self.features = features
        self.hello: Optional[F.Hello] = None
        self.connected = asyncio.Event()
        self.buf = bytearray()
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.bodies: list[int] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        assert await reader.readexactly(8) == F.PREFACE
        f = await self.recv()
        assert isinstance(f, F.Hello), f
        self.hello = f
        comps = self.compressions if self.compressions is not None else [c for c in f.compressions]
        welcome = F.Welcome(1, self.features & f.features, self.limits, [1, 0], comps, 0, "scripted")
        writer.write(F.PREFACE + F.encode(welcome))
        await writer.drain()
        self.connected.set()

    async def recv(self, timeout: float = 5.0) -> F.Frame:
        while True:
            got = F.decode(self.buf, 1 << 30, False)
            if got is not None:
                f, used = got
                self.bodies.append(used - F.HEADER_LEN)
                del self.buf[:used]
                return f
            assert self.reader is not None
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            if not chunk:
                raise EOFError("client closed")
            self.buf.extend(chunk)

    def send(self, f: F.Frame) -> None:
        assert self.writer is not None
        self.writer.write(F.encode(f))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()


class ConnectionTests(unittest.IsolatedAsyncioTestCase):
    async def connect(self, peer: Peer, handler=None, settings: Optional[Settings] = None) -> Connection:
        ep = await peer.start()
        conn = await Connection.open(ep, settings, handler)
        await peer.connected.wait()
        self.addAsyncCleanup(peer.close)
        async def close() -> None:
            conn.close()
            await conn.wait_closed()
        self.addAsyncCleanup(close)
        return conn

    async def test_hello_offers_what_this_binding_does(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        h = peer.hello
        self.assertEqual((h.min_version, h.max_version), (1, 1))
        self.assertEqual(h.features & 1, 0, "CRC32C is not offered")
        self.assertEqual(h.compressions, codec.compressions_offered())
        self.assertEqual(h.compressions[-1], F.NONE)
        self.assertIn(F.ZSTD in h.compressions, (codec.zstd_available(),))
        self.assertTrue(h.agent.startswith("polycall-python/"))
        self.assertEqual(conn.negotiated.peer_agent, "scripted")

    def test_without_zstandard_zstd_is_not_offered(self) -> None:
        root = pathlib.Path(__file__).resolve().parents[1]
        out = subprocess.run(
            [sys.executable, "-c",
             "from polycall.connection import Settings; print(Settings().hello().compressions)"],
            cwd=root, env={**os.environ, "POLYCALL_NO_ZSTD": "1"}, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[0]")

    async def test_large_messages_are_fragmented_within_max_frame_and_credit(self) -> None:
        window = 16 * 1024
        peer = Peer(F.Limits(max_frame=4096, initial_window=window))
        conn = await self.connect(peer)
        data = os.urandom(100_000)
        task = asyncio.create_task(conn.call("svc.big", data))
        first = await peer.recv()
        self.assertIsInstance(first, F.Call)
        self.assertTrue(first.more)
        self.assertEqual(first.message_len, len(data))
        got = bytearray(first.payload)
        outstanding = len(first.payload)
        while len(got) < len(data):
            f = await peer.recv()
            self.assertIsInstance(f, F.Data)
            self.assertEqual(f.call_id, first.call_id)
            got += f.payload
            outstanding += len(f.payload)
            self.assertLessEqual(outstanding, window, "sent beyond the credit granted")
            if outstanding >= window // 2:
                peer.send(F.Credit(outstanding))
                outstanding = 0
            self.assertEqual(f.more, len(got) < len(data))
        self.assertEqual(bytes(got), data)
        self.assertTrue(all(b <= 4096 for b in peer.bodies), max(peer.bodies))
        # The reply comes back in fragments too (the client's max_frame is larger).
        back = os.urandom(300_000)
        peer.send(F.Reply(first.call_id, F.RAW, F.NONE, True, len(back), False, back[:1000]))
        for off in range(1000, len(back), 50_000):
            chunk = back[off:off + 50_000]
            peer.send(F.Data(first.call_id, None, off + len(chunk) < len(back), None, chunk))
        reply = await asyncio.wait_for(task, 5)
        self.assertEqual(reply.data, back)

    async def test_method_names_are_interned_on_first_use(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        for i in range(2):
            t = asyncio.create_task(conn.call("inventory.get", b"x", content_type=F.JSON))
            f = await peer.recv()
            self.assertEqual(f.method_id, 1)
            self.assertEqual(f.method_name, "inventory.get" if i == 0 else None)
            self.assertEqual(f.call_id, 1 + 2 * i)
            peer.send(F.Reply(f.call_id, F.JSON, F.NONE, False, None, False, b"{}"))
            self.assertEqual(await t, Payload(b"{}", F.JSON))

    async def test_a_deadline_travels_and_ends_the_call_with_cancel(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        t = asyncio.create_task(conn.call("svc.slow", b"", timeout=0.2, priority="high", idempotent=True))
        f = await peer.recv()
        self.assertLessEqual(f.meta.timeout_us, 200_000)
        self.assertGreater(f.meta.timeout_us, 100_000)
        self.assertEqual(f.meta.priority, 1)
        self.assertTrue(f.meta.idempotent)
        with self.assertRaises(polycall.DeadlineExceededError):
            await t
        c = await peer.recv()
        self.assertEqual(c, F.Cancel(f.call_id))
        # A late reply to the abandoned call is ignored; the connection goes on.
        peer.send(F.Reply(f.call_id, F.RAW, F.NONE, False, None, False, b"late"))
        t2 = asyncio.create_task(conn.call("svc.slow", b"again"))
        f2 = await peer.recv()
        peer.send(F.Reply(f2.call_id, F.RAW, F.NONE, False, None, False, b"ok"))
        self.assertEqual((await t2).data, b"ok")

    async def test_cancelling_the_caller_sends_cancel(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        t = asyncio.create_task(conn.call("svc.wait", b""))
        f = await peer.recv()
        t.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await t
        self.assertEqual(await peer.recv(), F.Cancel(f.call_id))
        self.assertEqual(conn.in_flight, 0)

    async def test_errors_are_typed(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        cases = [(8, polycall.BusyError, 10), (13, polycall.UnknownMethodError, None),
                 (4, polycall.DeadlineExceededError, None), (999, polycall.UnknownError, None)]
        for code, cls, retry in cases:
            t = asyncio.create_task(conn.call("svc.x", b""))
            f = await peer.recv()
            peer.send(F.Error(f.call_id, code, f"code {code}", retry))
            with self.assertRaises(cls) as cm:
                await t
            self.assertEqual(cm.exception.code, code)
            self.assertEqual(cm.exception.message, f"code {code}")
            if retry:
                self.assertAlmostEqual(cm.exception.retry_after, 0.01)

    async def test_a_connection_error_fails_open_calls_with_the_peers_code_then_unavailable(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        t = asyncio.create_task(conn.call("svc.x", b""))
        await peer.recv()
        peer.send(F.Error(0, 7, "going down"))
        with self.assertRaises(polycall.UnavailableError):
            await t
        await asyncio.wait_for(conn.wait_closed(), 5)
        with self.assertRaises(polycall.UnavailableError):
            await conn.call("svc.x", b"")

    async def test_a_bad_frame_from_the_peer_ends_the_connection(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        t = asyncio.create_task(conn.call("svc.x", b""))
        await peer.recv()
        assert peer.writer is not None
        peer.writer.write(bytes.fromhex("000000007f00000000000000"))  # unknown frame type
        with self.assertRaises(polycall.UnavailableError):
            await t
        f = await peer.recv()
        self.assertIsInstance(f, F.Error)
        self.assertEqual((f.call_id, f.code), (0, 14))

    async def test_a_dictionary_the_binding_did_not_agree_to_ends_the_connection(self) -> None:
        peer = Peer()
        conn = await self.connect(peer)
        self.assertEqual(peer.hello.features & 4, 0, "dictionaries are not offered")
        t = asyncio.create_task(conn.call("svc.x", b""))
        await peer.recv()
        peer.send(F.Dictionary(32768, bytes.fromhex("37a430ec00800000")))
        with self.assertRaises(polycall.UnavailableError):
            await t
        f = await peer.recv()
        self.assertIsInstance(f, F.Error)
        self.assertEqual(f.call_id, 0)
        self.assertIn("dictionaries were not agreed", f.message)

    async def test_calls_the_peer_opens_are_served_and_cancelled(self) -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def handler(call: polycall.IncomingCall):
            if call.method == "svc.echo":
                return Payload(call.payload, call.content_type)
            if call.method == "svc.fail":
                raise polycall.NotFoundError("no such item")
            if call.method == "svc.crash":
                raise ValueError("a bug")
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        peer = Peer(F.Limits(max_frame=2048))
        await self.connect(peer, handler)
        big = os.urandom(10_000)
        peer.send(F.Call(2, 7, "svc.echo", F.RAW, F.NONE, F.Meta(), True, len(big), False, big[:1000]))
        peer.send(F.Data(2, None, False, None, big[1000:]))
        r = await peer.recv()
        self.assertIsInstance(r, F.Reply)
        self.assertEqual(r.call_id, 2)
        got = bytearray(r.payload)
        while len(got) < len(big):
            d = await peer.recv()
            got += d.payload
        self.assertEqual(bytes(got), big)
        self.assertTrue(all(b <= 2048 for b in peer.bodies))
        # The interned id 7 names svc.echo from now on.
        peer.send(F.Call(4, 7, None, F.JSON, F.NONE, F.Meta(), False, None, False, b"{}"))
        r = await peer.recv()
        self.assertEqual((r.call_id, r.content_type, r.payload), (4, F.JSON, b"{}"))
        peer.send(F.Call(6, 0, "svc.fail", F.RAW, F.NONE, F.Meta(), False, None, False, b""))
        self.assertEqual(await peer.recv(), F.Error(6, 3, "no such item"))
        peer.send(F.Call(8, 0, "svc.crash", F.RAW, F.NONE, F.Meta(), False, None, False, b""))
        e = await peer.recv()
        self.assertEqual((e.call_id, e.code), (8, 10))
        self.assertIn("a bug", e.message)
        peer.send(F.Call(10, 0, "svc.wait", F.RAW, F.NONE, F.Meta(), False, None, False, b""))
        await asyncio.wait_for(started.wait(), 5)
        peer.send(F.Cancel(10))
        await asyncio.wait_for(cancelled.wait(), 5)
        # A deadline the caller set is enforced while serving.
        started.clear()
        peer.send(F.Call(12, 0, "svc.wait", F.RAW, F.NONE, F.Meta(timeout_us=100_000), False, None, False, b""))
        e = await peer.recv()
        self.assertEqual((e.call_id, e.code), (12, 4))


class ErrorTableTests(unittest.TestCase):
    def test_the_code_table_matches_the_rust_one(self) -> None:
        import re
        status = pathlib.Path(__file__).resolve().parents[3] / "crates/polycall-core/src/status.rs"
        rows = re.findall(r"^\s*\w+ = (\d+), \"(\w+)\",", status.read_text(), re.M)
        self.assertGreater(len(rows), 15)
        self.assertEqual({int(n): name for n, name in rows}, polycall.CODES)
        for n, name in rows:
            if int(n) != 0:
                e = polycall.error_named(name, "m")
                self.assertEqual((e.code, e.name), (int(n), name))
        with self.assertRaises(ValueError):
            polycall.error_named("nope", "m")


if __name__ == "__main__":
    unittest.main()
