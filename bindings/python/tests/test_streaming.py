"""Streaming calls against a scripted peer on loopback: the three kinds as caller and as
provider, EMPTY opens, zero-message streams, END / ERROR / CANCEL, stream windows both
ways (STREAM_CREDIT withheld and returned), and malformed streaming input ending the
connection with a typed error. Every test is bounded in time."""

from __future__ import annotations

import asyncio
import functools
import pathlib
import struct
import sys
import unittest
from typing import Any, Awaitable, Callable, Optional

import polycall
from polycall import frame as F
from polycall.connection import FEATURE_STREAMING, Connection, Payload, Settings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_connection import Peer  # noqa: E402

#: Seconds any one test may take.
TEST_LIMIT = 20.0
#: How long "nothing arrives" is watched for.
QUIET = 0.3


def raw_frame(ftype: int, flags: int, call_id: int, body: bytes) -> bytes:
    """A frame built by hand (for input the encoder refuses to produce)."""
    return struct.pack("<IBBHI", len(body), ftype, flags, 0, call_id) + body


def stream_reply(call_id: int, data: bytes) -> F.Reply:
    return F.Reply(call_id, F.RAW, F.NONE, False, None, True, data)


def empty_reply(call_id: int) -> F.Reply:
    return F.Reply(call_id, F.RAW, F.NONE, False, None, True, b"", True)


def unary_reply(call_id: int, data: bytes, ct: int = F.RAW) -> F.Reply:
    return F.Reply(call_id, ct, F.NONE, False, None, False, data)


def further(call_id: int, data: bytes, ct: int = F.RAW) -> F.Data:
    """DATA with FIRST: a further whole message of a stream."""
    return F.Data(call_id, (ct, F.NONE), False, None, data)


def open_call(call_id: int, method: str, data: bytes = b"", *, stream: bool = False,
              empty: bool = False, meta: Optional[F.Meta] = None) -> F.Call:
    return F.Call(call_id, 0, method, F.RAW, F.NONE, meta or F.Meta(), False, None, stream, data, empty)


class Messages:
    """Reassembles the messages of one call from the frames a peer receives."""

    def __init__(self) -> None:
        self.done: list[bytes] = []
        self.current: Optional[bytearray] = None
        self.payload_bytes = 0

    def add(self, f: F.Frame) -> None:
        """Takes a CALL, REPLY or DATA frame."""
        self.payload_bytes += len(f.payload)
        starts = isinstance(f, (F.Call, F.Reply)) or (isinstance(f, F.Data) and f.first is not None)
        if starts:
            assert self.current is None, "a message started inside another"
            if getattr(f, "empty", False):
                return
            self.current = bytearray(f.payload)
        else:
            assert self.current is not None, "a continuation without a message"
            self.current += f.payload
        if not f.more:
            self.done.append(bytes(self.current))
            self.current = None


class BoundedTestCase(unittest.IsolatedAsyncioTestCase):
    """Runs every ``async def test_*`` under ``asyncio.wait_for(..., TEST_LIMIT)``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, fn in list(vars(cls).items()):
            if name.startswith("test_") and asyncio.iscoroutinefunction(fn):
                setattr(cls, name, cls._bounded(fn))

    @staticmethod
    def _bounded(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def run(self: "BoundedTestCase") -> None:
            await asyncio.wait_for(fn(self), TEST_LIMIT)
        return run

    async def connect(self, peer: Peer, handler: Any = None, settings: Optional[Settings] = None) -> Connection:
        ep = await peer.start()
        conn = await Connection.open(ep, settings, handler)
        await peer.connected.wait()
        self.addAsyncCleanup(peer.close)

        async def close() -> None:
            conn.close()
            await conn.wait_closed()
        self.addAsyncCleanup(close)
        return conn

    async def client(self, peer: Peer, settings: Optional[Settings] = None) -> polycall.Client:
        return polycall.Client(await self.connect(peer, settings=settings))

    async def provider(self, peer: Peer, setup: Callable[[polycall.Provider], None],
                       settings: Optional[Settings] = None) -> polycall.Provider:
        """A provider on ``peer`` with the methods ``setup`` adds, registered (the peer
        accepts the REGISTER, which it keeps in ``peer.register``)."""
        ep = await peer.start()
        prov = polycall.Provider(ep, settings)
        setup(prov)
        started = asyncio.create_task(prov.start())
        await peer.connected.wait()
        reg = await peer.recv()
        self.assertIsInstance(reg, F.Register)
        peer.register = reg
        peer.send(unary_reply(reg.call_id, b""))
        await started
        self.addAsyncCleanup(peer.close)
        self.addAsyncCleanup(prov.close)
        return prov

    async def quiet(self, peer: Peer, seconds: float = QUIET,
                    allowed: tuple[type, ...] = (F.Credit,)) -> list[F.Frame]:
        """Asserts that no frame but ``allowed`` ones arrives for ``seconds``; returns
        those that did."""
        got: list[F.Frame] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                f = await peer.recv(timeout=left)
            except (TimeoutError, asyncio.TimeoutError):
                break
            self.assertIsInstance(f, allowed, f"expected silence, got {f}")
            got.append(f)
        return got

    async def recv_skipping(self, peer: Peer, skip: tuple[type, ...] = (F.Credit,)) -> F.Frame:
        """The next frame that is not one of ``skip``."""
        while True:
            f = await peer.recv()
            if not isinstance(f, skip):
                return f

    async def assert_connection_error(self, conn: Connection, peer: Peer, pending: "asyncio.Task",
                                      text: str) -> None:
        """The binding ended the connection with ERROR(0, malformed) naming ``text``,
        failed the open call, and reports the reason."""
        while True:
            f = await peer.recv()
            if isinstance(f, F.Error) and f.call_id == 0:
                break
        self.assertEqual(f.code, polycall.MalformedError.CODE)
        self.assertIn(text, f.message)
        with self.assertRaises(polycall.UnavailableError) as cm:
            await pending
        self.assertIn(text, cm.exception.message)
        await conn.wait_closed()
        self.assertIsInstance(conn.close_reason, polycall.MalformedError)
        self.assertIn(text, conn.close_reason.message)


# ---------------------------------------------------------------------------------------
# The codec


class StreamingFrameTests(unittest.TestCase):
    def roundtrip(self, f: F.Frame) -> bytes:
        b = F.encode(f)
        got, used = F.decode(b, 1 << 20)
        self.assertEqual(used, len(b))
        self.assertEqual(got, f)
        self.assertEqual(F.encode(got), b)
        return b

    def bad(self, b: bytes, kind: str = "malformed", reason: Optional[str] = None) -> None:
        with self.assertRaises(F.FrameError) as cm:
            F.decode(b, 1 << 20)
        self.assertEqual(cm.exception.kind, kind)
        if reason is not None:
            self.assertEqual(cm.exception.details.get("reason"), reason)

    def test_empty_call_and_reply_round_trip_with_the_empty_bit(self) -> None:
        b = self.roundtrip(open_call(1, "svc.m", stream=True, empty=True))
        self.assertEqual(b[5], F.STREAM | F.NAMED | F.EMPTY)
        b = self.roundtrip(empty_reply(3))
        self.assertEqual(b[5], F.STREAM | F.EMPTY)
        self.assertEqual(b[12:], b"\x00\x00")

    def test_stream_credit_and_first_data_round_trip(self) -> None:
        b = self.roundtrip(F.StreamCredit(5, 65536))
        self.assertEqual(b, raw_frame(0x24, 0, 5, struct.pack("<I", 65536)))
        self.roundtrip(F.Data(5, (F.JSON, F.NONE), True, 100, b"{"))
        self.roundtrip(F.Data(5, (F.RAW, F.NONE), False, None, b""))
        self.roundtrip(F.End(5))

    def test_register_carries_the_stream_flags(self) -> None:
        methods = [F.MethodEntry("a.b", True), F.MethodEntry("a.c", False, request_stream=True),
                   F.MethodEntry("a.d", False, reply_stream=True),
                   F.MethodEntry("a.e", True, "s", "i", "o", True, True)]
        b = self.roundtrip(F.Register(7, methods))
        flags = []
        pos = 12 + 2
        for _ in methods:
            pos += 1 + b[pos]
            flags.append(b[pos])
            pos += 1
            for _ in range(3):
                pos += 2 + struct.unpack_from("<H", b, pos)[0]
        self.assertEqual(flags, [1, 2, 4, 7])
        body = struct.pack("<H", 1) + b"\x03a.b" + b"\x08" + b"\x00\x00" * 3
        self.bad(raw_frame(0x30, 0, 7, body), reason="undefined method flag bits")

    def test_the_encoder_refuses_a_non_canonical_empty(self) -> None:
        for f in (F.Call(1, 0, "a.b", F.RAW, F.NONE, F.Meta(), False, None, False, b"", True),
                  F.Call(1, 0, "a.b", F.RAW, F.NONE, F.Meta(), True, 5, True, b"", True),
                  F.Reply(1, F.JSON, F.NONE, False, None, True, b"", True),
                  F.Reply(1, F.RAW, F.NONE, False, None, True, b"x", True)):
            with self.assertRaises(ValueError):
                F.encode(f)

    def test_the_decoder_refuses_empty_without_stream_or_with_more_or_a_message(self) -> None:
        call_body = struct.pack("<H", 0) + b"\x03a.b" + b"\x00\x00" + struct.pack("<H", 0)
        self.bad(raw_frame(0x10, F.NAMED | F.EMPTY, 1, call_body), reason="EMPTY without STREAM")
        self.bad(raw_frame(0x10, F.NAMED | F.EMPTY | F.STREAM | F.MORE, 1, call_body + struct.pack("<I", 9)),
                 reason="EMPTY with MORE")
        self.bad(raw_frame(0x10, F.NAMED | F.EMPTY | F.STREAM, 1, call_body + b"x"),
                 reason="EMPTY frame carries a message")
        self.bad(raw_frame(0x11, F.EMPTY, 1, b"\x00\x00"), reason="EMPTY without STREAM")
        self.bad(raw_frame(0x11, F.EMPTY | F.STREAM | F.MORE, 1, b"\x00\x00" + struct.pack("<I", 9)),
                 reason="EMPTY with MORE")
        self.bad(raw_frame(0x11, F.EMPTY | F.STREAM, 1, b"\x01\x00"),
                 reason="EMPTY frame carries a message")
        self.bad(raw_frame(0x11, F.EMPTY | F.STREAM, 1, b"\x00\x00x"), reason="EMPTY frame carries a message")

    def test_the_decoder_refuses_bad_stream_credit(self) -> None:
        self.bad(raw_frame(0x24, 0, 0, struct.pack("<I", 10)), kind="bad_call_id")
        self.bad(raw_frame(0x24, 0, 3, struct.pack("<I", 0)), reason="stream credit increment of 0")
        self.bad(raw_frame(0x24, 0, 3, struct.pack("<IB", 10, 0)), reason="trailing bytes after the last field")
        self.bad(raw_frame(0x24, 0, 3, b"\x01\x00"), reason="increment is missing")
        self.bad(raw_frame(0x24, F.EMPTY, 3, struct.pack("<I", 10)), kind="unknown_flags")
        self.bad(raw_frame(0x15, F.EMPTY, 3, b""), kind="unknown_flags")


# ---------------------------------------------------------------------------------------
# The binding calls (the scripted peer serves)


class StreamingCallerTests(BoundedTestCase):
    async def test_streaming_is_offered_and_calls_refused_without_it(self) -> None:
        self.assertEqual(Settings().hello().features & FEATURE_STREAMING, FEATURE_STREAMING)
        self.assertEqual(Settings(streaming=False).hello().features & FEATURE_STREAMING, 0)
        peer = Peer(features=FEATURE_STREAMING)
        conn = await self.connect(peer)
        self.assertTrue(peer.hello.features & FEATURE_STREAMING)
        self.assertTrue(conn.streaming)
        plain = Peer()
        client = await self.client(plain)
        self.assertFalse(client.connection.streaming)
        with self.assertRaises(polycall.UnsupportedError):
            async for _ in client.server_stream("svc.list", b""):
                pass
        with self.assertRaises(polycall.UnsupportedError):
            await client.client_stream("svc.sum", [b"1"])

    async def test_a_server_stream_yields_every_reply_until_end(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        big = bytes(range(256)) * 1000

        async def consume() -> list[bytes]:
            return [r async for r in client.server_stream("files.list", b"dir", timeout=5, priority="low")]

        t = asyncio.create_task(consume())
        c = await peer.recv()
        self.assertIsInstance(c, F.Call)
        self.assertFalse(c.stream, "one request: the CALL itself is unary")
        self.assertEqual(c.payload, b"dir")
        self.assertEqual(c.meta.priority, 3)
        self.assertGreater(c.meta.timeout_us, 4_000_000)
        peer.send(stream_reply(c.call_id, b"a"))
        peer.send(further(c.call_id, b"bb"))
        peer.send(F.Data(c.call_id, (F.RAW, F.NONE), True, len(big), big[:1000]))
        peer.send(F.Data(c.call_id, None, True, None, big[1000:100_000]))
        peer.send(F.Data(c.call_id, None, False, None, big[100_000:]))
        peer.send(further(c.call_id, b""))
        peer.send(F.End(c.call_id))
        self.assertEqual(await t, [b"a", b"bb", big, b""])
        self.assertEqual(client.connection.in_flight, 0)

    async def test_a_server_stream_opened_empty_and_one_of_zero_messages(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        t = asyncio.create_task(self._collect(client.server_stream("svc.none")))
        c = await peer.recv()
        peer.send(empty_reply(c.call_id))
        peer.send(F.End(c.call_id))
        self.assertEqual(await t, [])
        t = asyncio.create_task(self._collect(client.server_stream_json("svc.later", {"n": 1})))
        c = await peer.recv()
        self.assertEqual((c.content_type, c.payload), (F.JSON, b'{"n":1}'))
        peer.send(empty_reply(c.call_id))
        peer.send(further(c.call_id, b'{"x":1}', F.JSON))
        peer.send(further(c.call_id, b'[2]', F.JSON))
        peer.send(F.End(c.call_id))
        self.assertEqual(await t, [{"x": 1}, [2]])

    async def _collect(self, stream: polycall.ReplyStream) -> list:
        return [r async for r in stream]

    async def test_an_error_ends_the_stream_after_the_replies_before_it(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        replies = client.server_stream("svc.list", b"")
        async with replies:
            c = await peer.recv()
            peer.send(stream_reply(c.call_id, b"1"))
            peer.send(further(c.call_id, b"2"))
            peer.send(F.Error(c.call_id, 3, "the list went away"))
            self.assertEqual(await replies.__anext__(), b"1")
            self.assertEqual(await replies.__anext__(), b"2")
            with self.assertRaises(polycall.NotFoundError) as cm:
                await replies.__anext__()
            self.assertEqual(cm.exception.message, "the list went away")
        # An ERROR ends the call: no CANCEL follows it.
        await self.quiet(peer)

    async def test_leaving_a_stream_early_sends_cancel(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)

        async def first_only() -> bytes:
            async for r in client.server_stream("svc.feed", b""):
                return r
            raise AssertionError("no reply")

        t = asyncio.create_task(first_only())
        c = await peer.recv()
        peer.send(stream_reply(c.call_id, b"one"))
        self.assertEqual(await t, b"one")
        self.assertEqual(await peer.recv(), F.Cancel(c.call_id))
        # Frames already in flight for it are ignored; the connection goes on.
        peer.send(further(c.call_id, b"two"))
        peer.send(F.End(c.call_id))
        peer.send(F.StreamCredit(c.call_id, 100))
        # aclose() and the end of `async with` cancel the same way.
        replies = client.server_stream("svc.feed", b"")
        async with replies:
            c2 = await peer.recv()
        self.assertEqual(await peer.recv(), F.Cancel(c2.call_id))
        replies = client.server_stream("svc.feed", b"")
        t = asyncio.create_task(replies.__anext__())
        c3 = await peer.recv()
        t.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await t
        self.assertEqual(await peer.recv(), F.Cancel(c3.call_id))
        t = asyncio.create_task(client.call("svc.echo", b"x"))
        f = await peer.recv()
        peer.send(unary_reply(f.call_id, b"x"))
        self.assertEqual(await t, b"x")
        self.assertEqual(client.connection.in_flight, 0)

    async def test_a_client_stream_sends_call_stream_data_first_and_end(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        t = asyncio.create_task(client.client_stream("svc.sum", [b"1", b"22", b"333"], idempotent=True))
        c = await peer.recv()
        self.assertIsInstance(c, F.Call)
        self.assertEqual((c.stream, c.empty, c.more, c.payload), (True, False, False, b"1"))
        self.assertTrue(c.meta.idempotent)
        self.assertEqual(await peer.recv(), further(c.call_id, b"22"))
        self.assertEqual(await peer.recv(), further(c.call_id, b"333"))
        self.assertEqual(await peer.recv(), F.End(c.call_id))
        peer.send(unary_reply(c.call_id, b"6"))
        self.assertEqual(await t, b"6")
        # JSON requests, and Payload items keep their own content type.
        t = asyncio.create_task(client.client_stream_json("svc.sum", [{"a": 1}, None]))
        c = await peer.recv()
        self.assertEqual((c.content_type, c.payload), (F.JSON, b'{"a":1}'))
        self.assertEqual(await peer.recv(), further(c.call_id, b"{}", F.JSON))
        self.assertEqual(await peer.recv(), F.End(c.call_id))
        peer.send(unary_reply(c.call_id, b'{"sum":1}', F.JSON))
        self.assertEqual(await t, {"sum": 1})

    async def test_a_client_stream_with_nothing_ready_opens_empty(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        q: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await q.get()) is not None:
                yield item

        t = asyncio.create_task(client.client_stream("svc.sum", requests()))
        c = await peer.recv()
        self.assertEqual((c.stream, c.empty, c.payload), (True, True, b""))
        self.assertEqual(F.encode(c)[5] & F.EMPTY, F.EMPTY)
        await q.put(b"x")
        self.assertEqual(await peer.recv(), further(c.call_id, b"x"))
        await q.put(Payload(b"[1]", F.JSON))
        self.assertEqual(await peer.recv(), further(c.call_id, b"[1]", F.JSON))
        await q.put(None)
        self.assertEqual(await peer.recv(), F.End(c.call_id))
        peer.send(unary_reply(c.call_id, b"ok"))
        self.assertEqual(await t, b"ok")

    async def test_a_client_stream_of_zero_messages_is_empty_then_end(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)

        async def nothing():
            return
            yield b""  # noqa: unreachable - makes this an async generator

        for requests in ([], nothing()):
            t = asyncio.create_task(client.client_stream("svc.count", requests))
            c = await peer.recv()
            self.assertEqual((c.stream, c.empty, c.payload), (True, True, b""))
            self.assertEqual(await peer.recv(), F.End(c.call_id))
            peer.send(unary_reply(c.call_id, b"0"))
            self.assertEqual(await t, b"0")

    async def test_a_client_stream_expects_exactly_one_reply(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        t = asyncio.create_task(client.client_stream("svc.sum", [b"1"]))
        c = await peer.recv()
        await peer.recv()  # END
        peer.send(stream_reply(c.call_id, b"a"))
        peer.send(further(c.call_id, b"b"))
        with self.assertRaises(polycall.MalformedError):
            await t
        self.assertEqual(await peer.recv(), F.Cancel(c.call_id))

    async def test_a_bidi_stream_interleaves_requests_and_replies(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        q: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await q.get()) is not None:
                yield item

        await q.put(b"hi")
        replies = client.bidi_stream("chat.talk", requests())
        t = asyncio.create_task(replies.__anext__())
        c = await peer.recv()
        self.assertEqual((c.stream, c.empty, c.payload), (True, False, b"hi"))
        peer.send(stream_reply(c.call_id, b"HI"))
        self.assertEqual(await t, b"HI")
        await q.put(b"yo")
        self.assertEqual(await peer.recv(), further(c.call_id, b"yo"))
        peer.send(further(c.call_id, b"YO"))
        self.assertEqual(await replies.__anext__(), b"YO")
        await q.put(None)
        self.assertEqual(await peer.recv(), F.End(c.call_id))
        peer.send(further(c.call_id, b"BYE"))
        peer.send(F.End(c.call_id))
        self.assertEqual(await self._collect(replies), [b"BYE"])
        await self.quiet(peer)

    async def test_a_callee_that_ends_first_cuts_the_request_stream_with_cancel(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        closed = asyncio.Event()

        async def endless():
            try:
                while True:
                    yield b"x"
                    await asyncio.sleep(0.01)
            finally:
                closed.set()

        replies = client.bidi_stream("chat.talk", endless())
        t = asyncio.create_task(self._collect(replies))
        c = await peer.recv()
        peer.send(empty_reply(c.call_id))
        peer.send(F.End(c.call_id))
        self.assertEqual(await t, [])
        await asyncio.wait_for(closed.wait(), 5)
        while (f := await peer.recv()) != F.Cancel(c.call_id):
            self.assertEqual(f.call_id, c.call_id)
            self.assertIsInstance(f, F.Data)
        await self.quiet(peer)

    async def test_an_error_stops_the_request_stream_without_cancel(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        q: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await q.get()) is not None:
                yield item

        t = asyncio.create_task(client.client_stream("svc.sum", requests()))
        c = await peer.recv()
        peer.send(F.Error(c.call_id, 2, "no more, thanks"))
        with self.assertRaises(polycall.InvalidInputError):
            await t
        await q.put(b"late")
        await self.quiet(peer)

    async def test_a_failing_request_iterator_fails_the_call_with_cancel(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)

        async def requests():
            yield b"1"
            await asyncio.sleep(0.05)
            raise ValueError("the source broke")

        t = asyncio.create_task(client.client_stream("svc.sum", requests()))
        c = await peer.recv()
        self.assertEqual(c.payload, b"1")
        self.assertEqual(await peer.recv(), F.Cancel(c.call_id))
        with self.assertRaises(ValueError):
            await t
        with self.assertRaises(TypeError):
            await client.client_stream("svc.sum", [b"ok", 5])
        c = await peer.recv()
        self.assertEqual(await peer.recv(), F.Cancel(c.call_id))

    async def test_a_deadline_covers_the_whole_stream(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        replies = client.server_stream("svc.slow", b"", timeout=0.3)
        t = asyncio.create_task(self._collect(replies))
        c = await peer.recv()
        self.assertLessEqual(c.meta.timeout_us, 300_000)
        peer.send(stream_reply(c.call_id, b"1"))
        self.assertEqual(await peer.recv(timeout=5), F.Cancel(c.call_id))
        with self.assertRaises(polycall.DeadlineExceededError):
            await t
        # A client stream whose requests never end is cut off by its deadline too.
        never = asyncio.Event()

        async def requests():
            yield b"1"
            await never.wait()

        with self.assertRaises(polycall.DeadlineExceededError):
            await client.client_stream("svc.sum", requests(), timeout=0.2)
        c = await peer.recv()
        self.assertEqual(await peer.recv(), F.Cancel(c.call_id))

    async def test_the_sender_stops_after_one_window_and_resumes_on_stream_credit(self) -> None:
        window = 4096
        peer = Peer(F.Limits(max_frame=2048, initial_window=window), features=FEATURE_STREAMING)
        client = await self.client(peer)
        sent = [bytes([i]) * 1000 for i in range(10)]
        t = asyncio.create_task(client.client_stream("svc.upload", sent))
        got = Messages()

        async def take(n: int) -> None:
            """Receives ``n`` payload bytes, returning connection credit at once (so only
            the stream window holds the binding back)."""
            end = got.payload_bytes + n
            while got.payload_bytes < end:
                f = await peer.recv()
                got.add(f)
                if f.payload:
                    peer.send(F.Credit(len(f.payload)))
            self.assertEqual(got.payload_bytes, end, "sent beyond the stream window")

        c = await peer.recv()
        self.assertTrue(c.stream)
        got.add(c)
        peer.send(F.Credit(len(c.payload)))
        await take(window - len(c.payload))
        # The window is full: the binding stops.
        self.assertEqual(len(got.done), 4)
        await self.quiet(peer, allowed=())
        peer.send(F.StreamCredit(c.call_id, window))
        await take(window)
        await self.quiet(peer, allowed=())
        peer.send(F.StreamCredit(c.call_id, 10 * window))
        await take(10_000 - 2 * window)
        self.assertEqual(await peer.recv(), F.End(c.call_id))
        self.assertEqual(got.done, sent)
        self.assertTrue(all(b <= 2048 for b in peer.bodies), max(peer.bodies))
        peer.send(unary_reply(c.call_id, b"done"))
        self.assertEqual(await t, b"done")

    async def test_the_receiver_withholds_stream_credit_while_the_application_does_not_read(self) -> None:
        window = 4096
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer, Settings(limits=F.Limits(initial_window=window)))
        replies = client.server_stream("svc.feed", b"")
        async with replies:
            c = await peer.recv()
            n = await push_until_stalled(self, peer, c.call_id, lambda d: stream_reply(c.call_id, d), window)
            # Nothing was read: stream credit stopped once half a window waited, so the
            # binding holds less than 1.5 windows.
            self.assertGreaterEqual(n * 1024, window)
            self.assertLess(n * 1024, 1.5 * window + 1024)
            for i in range(n):
                self.assertEqual(await replies.__anext__(), bytes([i % 256]) * 1024)
            # Reading returned the credit.
            f = await self.recv_skipping(peer)
            self.assertIsInstance(f, F.StreamCredit)
            self.assertEqual(f.call_id, c.call_id)
            peer.send(F.End(c.call_id))
            with self.assertRaises(StopAsyncIteration):
                await replies.__anext__()

    async def test_stream_credit_for_an_ended_call_is_ignored_for_a_never_opened_one_an_error(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        t = asyncio.create_task(client.client_stream("svc.sum", [b"1"]))
        c = await peer.recv()
        await peer.recv()
        peer.send(unary_reply(c.call_id, b"1"))
        await t
        peer.send(F.StreamCredit(c.call_id, 1000))
        t = asyncio.create_task(client.call("svc.x", b""))
        f = await peer.recv()
        peer.send(F.StreamCredit(99, 1000))
        await self.assert_connection_error(client.connection, peer, t,
                                           "STREAM_CREDIT for call 99, which was never opened")


async def push_until_stalled(test: BoundedTestCase, peer: Peer, call_id: int,
                             opener: Optional[Callable[[bytes], F.Frame]], window: int) -> int:
    """Sends 1 KiB messages on ``call_id`` (the first through ``opener``, unless it is
    None: the stream is open already) while the stream window and the connection window
    (both ``window`` at first) allow, taking STREAM_CREDIT and CREDIT as they come;
    returns how many it sent once no credit came for a while. Checks that connection
    credit kept flowing while stream credit stopped."""
    stream_window = window
    conn_window = window
    n = 0
    while True:
        while stream_window >= 1024 and conn_window >= 1024:
            data = bytes([n % 256]) * 1024
            peer.send(opener(data) if (n == 0 and opener is not None) else further(call_id, data))
            n += 1
            stream_window -= 1024
            conn_window -= 1024
        try:
            f = await peer.recv(timeout=2 * QUIET)
        except (TimeoutError, asyncio.TimeoutError):
            break
        if isinstance(f, F.Credit):
            conn_window += f.increment
        elif isinstance(f, F.StreamCredit):
            test.assertEqual(f.call_id, call_id)
            stream_window += f.increment
        else:
            test.fail(f"unexpected {f}")
    # Connection credit came back for the bytes held (all but less than a quarter window).
    test.assertGreater(conn_window, window - window // 4)
    test.assertLess(stream_window, 1024)
    return n


class StreamingMalformedInputTests(BoundedTestCase):
    """Malformed streaming input is a connection error: ERROR(0, malformed) to the peer,
    open calls fail, :attr:`Connection.close_reason` names it."""

    async def open_stream(self, settings: Optional[Settings] = None, features: int = FEATURE_STREAMING):
        peer = Peer(features=features)
        client = await self.client(peer, settings)
        t = asyncio.create_task(self.collect(client.server_stream("svc.feed", b"")))
        c = await peer.recv()
        return client.connection, peer, t, c.call_id

    async def collect(self, replies: polycall.ReplyStream) -> list:
        return [r async for r in replies]

    async def test_empty_with_more(self) -> None:
        conn, peer, t, cid = await self.open_stream()
        peer.writer.write(raw_frame(0x11, F.STREAM | F.EMPTY | F.MORE, cid, b"\x00\x00" + struct.pack("<I", 10)))
        await self.assert_connection_error(conn, peer, t, "EMPTY with MORE")

    async def test_empty_without_stream(self) -> None:
        conn, peer, t, cid = await self.open_stream()
        peer.writer.write(raw_frame(0x11, F.EMPTY, cid, b"\x00\x00"))
        await self.assert_connection_error(conn, peer, t, "EMPTY without STREAM")

    async def test_stream_credit_with_call_id_0(self) -> None:
        conn, peer, t, cid = await self.open_stream()
        peer.writer.write(raw_frame(0x24, 0, 0, struct.pack("<I", 100)))
        await self.assert_connection_error(conn, peer, t, "bad_call_id")

    async def test_stream_credit_of_0(self) -> None:
        conn, peer, t, cid = await self.open_stream()
        peer.writer.write(raw_frame(0x24, 0, cid, struct.pack("<I", 0)))
        await self.assert_connection_error(conn, peer, t, "stream credit increment of 0")

    async def test_stream_bytes_over_the_window(self) -> None:
        window = 4096
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer, Settings(limits=F.Limits(initial_window=window)))
        replies = client.server_stream("svc.feed", b"")
        await replies.__aenter__()  # open, but read nothing
        c = await peer.recv()
        t = asyncio.create_task(client.call("svc.other", b""))
        await peer.recv()
        peer.send(stream_reply(c.call_id, b"x" * window))
        # The connection credit comes back (the bytes arrived) but not the stream's
        # (nobody reads): one byte more breaks the stream window only.
        self.assertEqual(await peer.recv(), F.Credit(window))
        peer.send(further(c.call_id, b"y"))
        await self.assert_connection_error(client.connection, peer, t, "beyond its stream window of 0")
        # The stream gives what it had, then fails with the connection.
        self.assertEqual(await replies.__anext__(), b"x" * window)
        with self.assertRaises(polycall.UnavailableError):
            await replies.__anext__()

    async def test_end_without_an_open_stream(self) -> None:
        conn, peer, t, cid = await self.open_stream()
        peer.send(F.End(cid))
        await self.assert_connection_error(conn, peer, t, "has no open stream from the peer")

    async def test_streaming_frames_when_it_was_not_negotiated(self) -> None:
        for frame, text in ((lambda cid: stream_reply(cid, b"x"), "streaming REPLY"),
                            (lambda cid: F.StreamCredit(cid, 10), "STREAM_CREDIT"),
                            (lambda cid: further(cid, b"x"), "DATA starting a stream message")):
            with self.subTest(text):
                peer = Peer()
                client = await self.client(peer)
                t = asyncio.create_task(client.call("svc.x", b""))
                c = await peer.recv()
                peer.send(frame(c.call_id))
                await self.assert_connection_error(client.connection, peer, t,
                                                   f"{text}, but streaming was not negotiated")


# ---------------------------------------------------------------------------------------
# The binding serves (the scripted peer calls)


class StreamingProviderTests(BoundedTestCase):
    async def test_register_carries_flag_bits_1_and_2(self) -> None:
        async def unary(call):
            return b""

        async def gen(call):
            yield b""

        peer = Peer(features=FEATURE_STREAMING)

        def setup(p: polycall.Provider) -> None:
            p.add_method("svc.unary", unary, idempotent=True)
            p.add_server_stream("svc.down", gen, summary="server stream")
            p.add_client_stream("svc.up", unary)
            p.add_bidi_stream("svc.both", gen)

        await self.provider(peer, setup)
        flags = {m.name: (m.idempotent, m.request_stream, m.reply_stream) for m in peer.register.methods}
        self.assertEqual(flags, {
            "svc.unary": (True, False, False), "svc.down": (False, False, True),
            "svc.up": (False, True, False), "svc.both": (False, True, True)})
        self.assertEqual([m.flags for m in peer.register.methods], [1, 4, 2, 6])

    async def test_a_server_stream_handler_replies_stream_then_end(self) -> None:
        async def count(call):
            for i in range(int(call.payload)):
                yield str(i).encode()

        async def nothing(call):
            if False:
                yield b""

        async def fails(call):
            yield b"0"
            raise polycall.NotFoundError("no more items")

        async def fails_at_once(call):
            raise polycall.PermissionDeniedError("not yours")
            yield b""  # noqa: unreachable

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: (p.add_server_stream("svc.count", count),
                                             p.add_server_stream("svc.nothing", nothing),
                                             p.add_server_stream("svc.fails", fails),
                                             p.add_server_stream("svc.denied", fails_at_once)))
        peer.send(open_call(2, "svc.count", b"3"))
        self.assertEqual(await self.recv_skipping(peer), stream_reply(2, b"0"))
        self.assertEqual(await self.recv_skipping(peer), further(2, b"1"))
        self.assertEqual(await self.recv_skipping(peer), further(2, b"2"))
        self.assertEqual(await self.recv_skipping(peer), F.End(2))
        peer.send(open_call(4, "svc.nothing"))
        self.assertEqual(await self.recv_skipping(peer), empty_reply(4))
        self.assertEqual(await self.recv_skipping(peer), F.End(4))
        peer.send(open_call(6, "svc.fails"))
        self.assertEqual(await self.recv_skipping(peer), stream_reply(6, b"0"))
        self.assertEqual(await self.recv_skipping(peer), F.Error(6, 3, "no more items"))
        peer.send(open_call(8, "svc.denied"))
        self.assertEqual(await self.recv_skipping(peer), F.Error(8, 6, "not yours"))
        await self.quiet(peer)

    async def test_a_client_stream_handler_reads_every_request(self) -> None:
        async def total(call):
            n = [len(r.data) async for r in call.requests]
            return f"{len(n)}:{sum(n)}".encode()

        async def unary(call):
            return b"unary"

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: (p.add_client_stream("svc.total", total),
                                             p.add_method("svc.unary", unary)))
        # Opened empty, then two messages (one fragmented), END.
        peer.send(open_call(2, "svc.total", stream=True, empty=True))
        peer.send(further(2, b"a"))
        peer.send(F.Data(2, (F.RAW, F.NONE), True, 3000, b"b" * 1000))
        peer.send(F.Data(2, None, False, None, b"b" * 2000))
        peer.send(F.End(2))
        self.assertEqual(await self.recv_skipping(peer), unary_reply(2, b"2:3001"))
        # The CALL carries the first message.
        peer.send(open_call(4, "svc.total", b"xy", stream=True))
        peer.send(F.End(4))
        self.assertEqual(await self.recv_skipping(peer), unary_reply(4, b"1:2"))
        # Zero messages.
        peer.send(open_call(6, "svc.total", stream=True, empty=True))
        peer.send(F.End(6))
        self.assertEqual(await self.recv_skipping(peer), unary_reply(6, b"0:0"))
        # A unary request is a stream of one.
        peer.send(open_call(8, "svc.total", b"abc"))
        self.assertEqual(await self.recv_skipping(peer), unary_reply(8, b"1:3"))
        # A unary method does not take a stream (invalid_input, as the reference says).
        peer.send(open_call(10, "svc.unary", b"x", stream=True))
        e = await self.recv_skipping(peer)
        self.assertEqual((e.call_id, e.code), (10, polycall.InvalidInputError.CODE))
        self.assertIn("takes one request message (unary), not a stream", e.message)
        peer.send(further(10, b"ignored"))
        peer.send(F.End(10))
        await self.quiet(peer)

    async def test_a_bidi_handler_answers_as_requests_arrive(self) -> None:
        async def shout(call):
            async for r in call.requests:
                yield r.data.upper()
            yield b"BYE"

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: p.add_bidi_stream("chat.shout", shout))
        peer.send(open_call(2, "chat.shout", b"hi", stream=True))
        self.assertEqual(await self.recv_skipping(peer), stream_reply(2, b"HI"))
        peer.send(further(2, b"yo"))
        self.assertEqual(await self.recv_skipping(peer), further(2, b"YO"))
        peer.send(F.End(2))
        self.assertEqual(await self.recv_skipping(peer), further(2, b"BYE"))
        self.assertEqual(await self.recv_skipping(peer), F.End(2))

    async def test_cancel_stops_a_streaming_handler(self) -> None:
        started = asyncio.Event()
        stopped = asyncio.Event()

        async def listen(call):
            try:
                started.set()
                async for r in call.requests:
                    yield r.data
            finally:
                stopped.set()

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: p.add_bidi_stream("chat.listen", listen))
        peer.send(open_call(2, "chat.listen", stream=True, empty=True))
        await asyncio.wait_for(started.wait(), 5)
        peer.send(F.Cancel(2))
        await asyncio.wait_for(stopped.wait(), 5)
        # Nothing more is sent for it, and its late frames are ignored.
        peer.send(further(2, b"late"))
        peer.send(F.End(2))
        await self.quiet(peer)

    async def test_a_deadline_ends_a_reply_stream_with_deadline_exceeded(self) -> None:
        async def slow(call):
            yield b"first"
            await asyncio.sleep(30)
            yield b"never"

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: p.add_server_stream("svc.slow", slow))
        peer.send(open_call(2, "svc.slow", meta=F.Meta(timeout_us=200_000)))
        self.assertEqual(await self.recv_skipping(peer), stream_reply(2, b"first"))
        e = await self.recv_skipping(peer)
        self.assertEqual((e.call_id, e.code), (2, polycall.DeadlineExceededError.CODE))

    async def test_a_reply_stream_waits_for_stream_credit_and_holds_the_generator_back(self) -> None:
        window = 4096
        pulled = 0
        stopped = asyncio.Event()

        async def feed(call):
            nonlocal pulled
            try:
                while True:
                    pulled += 1
                    yield bytes([pulled % 256]) * 1000
            finally:
                stopped.set()

        peer = Peer(F.Limits(initial_window=window), features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: p.add_server_stream("svc.feed", feed))
        peer.send(open_call(2, "svc.feed"))
        got = Messages()

        async def take(n: int) -> None:
            end = got.payload_bytes + n
            while got.payload_bytes < end:
                f = await self.recv_skipping(peer)
                got.add(f)
                peer.send(F.Credit(len(f.payload)))  # the connection window never binds
            self.assertEqual(got.payload_bytes, end, "sent beyond the stream window")

        await take(window)
        await self.quiet(peer)
        # Four whole replies and part of the fifth left; the generator was not pulled
        # past the reply waiting for the window.
        self.assertEqual(len(got.done), 4)
        self.assertEqual(pulled, 5)
        peer.send(F.StreamCredit(2, window))
        await take(window)
        await self.quiet(peer)
        self.assertEqual(pulled, 9)
        self.assertEqual(got.done, [bytes([i]) * 1000 for i in range(1, 9)])
        peer.send(F.Cancel(2))
        await asyncio.wait_for(stopped.wait(), 5)
        await self.quiet(peer)

    async def test_a_handler_that_does_not_read_holds_back_only_its_callers_stream(self) -> None:
        window = 4096
        release = asyncio.Event()

        async def lazy(call):
            await release.wait()
            n = 0
            async for r in call.requests:
                n += len(r.data)
            return str(n).encode()

        async def echo(call):
            return call.payload

        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: (p.add_client_stream("svc.lazy", lazy),
                                             p.add_method("svc.echo", echo)),
                            Settings(limits=F.Limits(initial_window=window)))
        peer.send(open_call(2, "svc.lazy", stream=True, empty=True))
        n = await push_until_stalled(self, peer, 2, None, window)
        self.assertGreaterEqual(n * 1024, window)
        self.assertLess(n * 1024, 1.5 * window + 1024)
        # Other calls of the connection go on.
        peer.send(open_call(4, "svc.echo", b"still here"))
        self.assertEqual(await self.recv_skipping(peer), unary_reply(4, b"still here"))
        release.set()
        f = await self.recv_skipping(peer)
        self.assertIsInstance(f, F.StreamCredit)
        self.assertEqual(f.call_id, 2)
        peer.send(F.End(2))
        self.assertEqual(await self.recv_skipping(peer, (F.Credit, F.StreamCredit)),
                         unary_reply(2, str(n * 1024).encode()))

    async def test_a_request_stream_over_its_window_is_a_connection_error(self) -> None:
        window = 4096
        started = asyncio.Event()

        async def lazy(call):
            started.set()
            await asyncio.sleep(30)
            return b""

        peer = Peer(features=FEATURE_STREAMING)
        prov = await self.provider(peer, lambda p: p.add_client_stream("svc.lazy", lazy),
                                   Settings(limits=F.Limits(initial_window=window)))
        peer.send(open_call(2, "svc.lazy", b"x" * window, stream=True))
        self.assertEqual(await peer.recv(), F.Credit(window))
        peer.send(further(2, b"y"))
        f = await peer.recv()
        self.assertEqual((f.call_id, f.code), (0, polycall.MalformedError.CODE))
        self.assertIn("beyond its stream window", f.message)
        await prov.connection.wait_closed()
        self.assertIsInstance(prov.connection.close_reason, polycall.MalformedError)


if __name__ == "__main__":
    unittest.main()
