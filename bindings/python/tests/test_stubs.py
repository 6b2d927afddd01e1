"""Generated stubs and their support: checked JSON conversion of messages (nested,
lists, optional fields, bytes as base64), a typed provider and client talking through
a real connection pair on loopback, and the streaming helpers (server stream, client
stream, bidi) as caller and as provider against a scripted peer and end to end through
an in-process relay. Every streaming test is bounded in time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import sys
import unittest
from typing import Any, AsyncIterator, Optional

import polycall
from polycall import frame as F
from polycall import stubs as _s
from polycall.connection import FEATURE_STREAMING

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "conformance"))
from generated import conformance as gen  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_connection import Peer  # noqa: E402
from test_streaming import BoundedTestCase, further  # noqa: E402

#: The methods of the conformance interface, in schema order.
UNARY = ["echo", "add", "fail", "sleep", "exit_now"]
STREAMING = ["count", "total", "relay"]


@dataclasses.dataclass(kw_only=True)
class Photo:
    data: bytes
    _polycall_fields = (("data", "data", _s.BYTES),)


@dataclasses.dataclass(kw_only=True)
class Item:
    name: str
    tags: list[str]
    weight: float
    photo: Optional[Photo] = None
    next: Optional["Item"] = None
    _polycall_fields = (
        ("name", "name", _s.STRING),
        ("tags", "tags", _s.list_of(_s.STRING)),
        ("weight", "weight", _s.FLOAT),
        ("photo", "photo", _s.optional(_s.message(lambda: Photo))),
        ("next", "next", _s.optional(_s.message(lambda: Item))),
    )


class ConversionTests(unittest.TestCase):
    def test_messages_round_trip_through_json(self) -> None:
        item = Item(name="a", tags=["x", "y"], weight=2, photo=Photo(data=b"\x00\xff"),
                    next=Item(name="b", tags=[], weight=0.5))
        j = _s.to_json(item, _s.message(lambda: Item))
        self.assertEqual(j, {"name": "a", "tags": ["x", "y"], "weight": 2.0, "photo": {"data": "AP8="},
                             "next": {"name": "b", "tags": [], "weight": 0.5}})
        back = _s.from_json(j, _s.message(lambda: Item))
        self.assertEqual(back, Item(name="a", tags=["x", "y"], weight=2.0, photo=Photo(data=b"\x00\xff"),
                                    next=Item(name="b", tags=[], weight=0.5)))

    def test_values_that_do_not_fit_are_refused_with_their_path(self) -> None:
        t = _s.message(lambda: Item)
        bad = [
            ({"name": "a", "tags": ["x", 3], "weight": 1}, "$.tags[1]"),
            ({"name": "a", "tags": [], "weight": "heavy"}, "$.weight"),
            ({"tags": [], "weight": 1}, "'name' is missing"),
            ({"name": "a", "tags": [], "weight": 1, "photo": {"data": "not base64!"}}, "$.photo.data"),
            ([], "expected an object"),
        ]
        for value, where in bad:
            with self.assertRaises(_s.ConversionError) as cm:
                _s.from_json(value, t)
            self.assertIn(where, str(cm.exception))
        with self.assertRaises(_s.ConversionError):
            _s.to_json(gen.AddInput(a=True, b=1), _s.message(lambda: gen.AddInput))
        with self.assertRaises(_s.ConversionError):
            _s.to_json(1 << 64, _s.INT)

    def test_the_generated_module_describes_the_conformance_interface(self) -> None:
        self.assertEqual(gen.SERVICE, "conformance")
        self.assertEqual([f[0] for f in gen.AddInput._polycall_fields], ["a", "b"])
        self.assertEqual([f[0] for f in gen.CountInput._polycall_fields], ["n", "fail_after"])
        self.assertEqual(gen.CountInput(n=1), gen.CountInput(n=1, fail_after=None))
        for m in UNARY:
            self.assertTrue(callable(getattr(gen.ConformanceClient, m)), m)
        for m in UNARY + STREAMING:
            self.assertTrue(callable(getattr(gen.ConformanceProvider, m)), m)
        # The support functions the generated code calls exist.
        for f in ("call", "serve", "server_stream", "client_stream", "bidi",
                  "serve_server_stream", "serve_client_stream", "serve_bidi"):
            self.assertTrue(callable(getattr(_s, f)), f)
        self.assertIs(_s.bidi, _s.bidi_stream)
        self.assertIs(_s.serve_bidi, _s.serve_bidi_stream)

    def test_the_streaming_client_methods_are_methods_of_the_client_class(self) -> None:
        """Every method of the interface, streaming or not, is a method of the
        generated client class (a template that starts a ``def`` line with a block tag
        would put it at module level)."""
        methods = [m for m in dir(gen.ConformanceClient) if not m.startswith("_")]
        self.assertEqual(sorted(methods), sorted(UNARY + STREAMING))


class TypedEndToEnd(unittest.IsolatedAsyncioTestCase):
    async def test_a_typed_provider_and_client_over_loopback(self) -> None:
        """A minimal in-process runtime stand-in: the provider's connection is the
        'server' for the client's calls, relayed by a tiny router."""
        from polycall import frame as F

        provider = polycall.Provider("unused:0")

        class Impl(gen.ConformanceProvider):
            async def add(self, request: gen.AddInput, ctx: polycall.CallContext) -> gen.AddOutput:
                return gen.AddOutput(sum=request.a + request.b)

        Impl().register(provider, "calc")
        self.assertEqual(provider.methods, [f"calc.{m}" for m in UNARY + STREAMING])

        # Route: accept the client, open each of its calls on the provider's handler.
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(8) == F.PREFACE
            buf = bytearray()
            while True:
                got = F.decode(buf, 1 << 20, False)
                if got:
                    break
                buf += await reader.read(4096)
            hello, used = got
            del buf[:used]
            writer.write(F.PREFACE + F.encode(F.Welcome(1, 0, F.Limits(), [1, 0], [0], 0, "relay")))
            names: dict[int, str] = {}
            while True:
                got = F.decode(buf, 1 << 20, False)
                if not got:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                f, used = got
                del buf[:used]
                if isinstance(f, F.Call):
                    if f.method_name:
                        names[f.method_id] = f.method_name
                    method = f.method_name or names[f.method_id]
                    ctx = polycall.CallContext(method, f.meta, None, f.call_id)
                    try:
                        r = await provider._dispatch(polycall.IncomingCall(method, f.payload, f.content_type, ctx))
                        writer.write(F.encode(F.Reply(f.call_id, r.content_type, 0, False, None, False, r.data)))
                    except polycall.PolycallError as e:
                        writer.write(F.encode(F.Error(f.call_id, e.code, e.message)))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = await polycall.Client.connect(f"127.0.0.1:{port}")
        calc = gen.ConformanceClient(client, "calc")
        self.assertEqual(await calc.add(gen.AddInput(a=2, b=40)), gen.AddOutput(sum=42))
        with self.assertRaises(polycall.UnsupportedError):
            await calc.echo(b"x")  # not implemented by Impl
        with self.assertRaises(polycall.InvalidInputError) as cm:
            await client.call_json("calc.add", {"a": "two", "b": 1})
        self.assertIn("$.a", cm.exception.message)
        with self.assertRaises(TypeError):
            await calc.add(gen.AddInput(a="2", b=1))
        await client.close()
        server.close()


# ---------------------------------------------------------------------------------------
# Streaming helpers


def json_call(call_id: int, method: str, value: Any = None, *, stream: bool = False) -> F.Call:
    """A CALL with a JSON message (``None``: a request stream opened EMPTY)."""
    if value is None:
        return F.Call(call_id, 0, method, F.RAW, F.NONE, F.Meta(), False, None, True, b"", True)
    return F.Call(call_id, 0, method, F.JSON, F.NONE, F.Meta(), False, None, stream, j(value))


def j(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_stream_reply(call_id: int, value: Any) -> F.Reply:
    return F.Reply(call_id, F.JSON, F.NONE, False, None, True, j(value))


def json_reply(call_id: int, value: Any) -> F.Reply:
    return F.Reply(call_id, F.JSON, F.NONE, False, None, False, j(value))


def raw_stream_reply(call_id: int, data: bytes) -> F.Reply:
    return F.Reply(call_id, F.RAW, F.NONE, False, None, True, data)


async def recv_skipping_credit(peer: Peer) -> F.Frame:
    while True:
        f = await peer.recv()
        if not isinstance(f, (F.Credit, F.StreamCredit)):
            return f


async def take_all(stream: Any) -> list[Any]:
    return [x async for x in stream]


class StreamingStubCallerTests(BoundedTestCase):
    """``server_stream``, ``client_stream`` and ``bidi`` through the generated client,
    against a scripted callee."""

    async def calc(self) -> tuple[gen.ConformanceClient, Peer]:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        return gen.ConformanceClient(client, "calc"), peer

    async def test_a_server_stream_sends_the_typed_request_and_decodes_each_reply(self) -> None:
        calc, peer = await self.calc()
        t = asyncio.create_task(take_all(calc.count(gen.CountInput(n=3), timeout=5, priority="high")))
        c = await recv_skipping_credit(peer)
        self.assertIsInstance(c, F.Call)
        self.assertEqual((c.method_name, c.stream, c.content_type), ("calc.count", False, F.JSON))
        self.assertEqual(json.loads(c.payload), {"n": 3}, "an absent optional field is left out")
        self.assertEqual(c.meta.priority, 1)
        self.assertFalse(c.meta.idempotent)
        self.assertGreater(c.meta.timeout_us, 4_000_000)
        peer.send(json_stream_reply(c.call_id, {"i": 0}))
        peer.send(further(c.call_id, j({"i": 1}), F.JSON))
        peer.send(further(c.call_id, j({"i": 2, "extra": True}), F.JSON))
        peer.send(F.End(c.call_id))
        self.assertEqual(await t, [gen.Counted(i=0), gen.Counted(i=1), gen.Counted(i=2)])
        self.assertEqual(calc._client.connection.in_flight, 0)

    async def test_a_server_stream_error_comes_after_the_replies_before_it(self) -> None:
        calc, peer = await self.calc()
        got: list[gen.Counted] = []

        async def read() -> None:
            async for c in calc.count(gen.CountInput(n=10, fail_after=2)):
                got.append(c)

        t = asyncio.create_task(read())
        c = await recv_skipping_credit(peer)
        self.assertEqual(json.loads(c.payload), {"n": 10, "fail_after": 2})
        peer.send(json_stream_reply(c.call_id, {"i": 0}))
        peer.send(further(c.call_id, j({"i": 1}), F.JSON))
        peer.send(F.Error(c.call_id, polycall.FailedPreconditionError.CODE, "enough"))
        with self.assertRaises(polycall.FailedPreconditionError) as cm:
            await t
        self.assertEqual(cm.exception.message, "enough")
        self.assertEqual(got, [gen.Counted(i=0), gen.Counted(i=1)])

    async def test_a_server_stream_refuses_a_request_or_a_reply_that_does_not_fit(self) -> None:
        calc, peer = await self.calc()
        with self.assertRaises(TypeError) as cm:
            calc.count(gen.CountInput(n="3"))
        self.assertIn("$.n", str(cm.exception))
        stream = calc.count(gen.CountInput(n=2))
        t = asyncio.create_task(take_all(stream))
        c = await recv_skipping_credit(peer)
        self.assertEqual(json.loads(c.payload), {"n": 2}, "the refused request was never sent")
        peer.send(json_stream_reply(c.call_id, {"i": 0}))
        peer.send(further(c.call_id, j({"i": "one"}), F.JSON))
        with self.assertRaises(polycall.MalformedError) as cm2:
            await t
        self.assertIn("reply #1", cm2.exception.message)
        self.assertIn("$.i", cm2.exception.message)
        self.assertEqual(await recv_skipping_credit(peer), F.Cancel(c.call_id))

    async def test_a_client_stream_sends_each_typed_request_and_decodes_the_reply(self) -> None:
        calc, peer = await self.calc()

        async def numbers() -> AsyncIterator[gen.Term]:
            for n in (1, 2, 3):
                yield gen.Term(n=n)

        t = asyncio.create_task(calc.total(numbers(), timeout=5))
        c = await recv_skipping_credit(peer)
        self.assertEqual((c.method_name, c.stream, c.content_type), ("calc.total", True, F.JSON))
        self.assertEqual(json.loads(c.payload), {"n": 1})
        for n in (2, 3):
            d = await recv_skipping_credit(peer)
            self.assertIsInstance(d, F.Data)
            self.assertEqual(d.first, (F.JSON, F.NONE))
            self.assertEqual(json.loads(d.payload), {"n": n})
        self.assertEqual(await recv_skipping_credit(peer), F.End(c.call_id))
        peer.send(json_reply(c.call_id, {"sum": 6}))
        self.assertEqual(await t, gen.Total(sum=6))
        # A plain iterable works too; none at all is CALL(STREAM, EMPTY) then END.
        t = asyncio.create_task(calc.total([]))
        c = await recv_skipping_credit(peer)
        self.assertTrue(c.empty)
        self.assertEqual(await recv_skipping_credit(peer), F.End(c.call_id))
        peer.send(json_reply(c.call_id, {"sum": 0}))
        self.assertEqual(await t, gen.Total(sum=0))

    async def test_a_client_stream_refuses_requests_and_replies_that_do_not_fit(self) -> None:
        calc, peer = await self.calc()
        with self.assertRaises(TypeError):
            await calc.total(gen.Term(n=1))  # one value, not a stream of them
        # A request that does not fit, after one that does: the call is cancelled.
        t = asyncio.create_task(calc.total([gen.Term(n=1), gen.Term(n=2.5)]))
        c = await recv_skipping_credit(peer)
        self.assertEqual(json.loads(c.payload), {"n": 1})
        self.assertEqual(await recv_skipping_credit(peer), F.Cancel(c.call_id))
        with self.assertRaises(TypeError) as cm:
            await t
        self.assertIn("request #1", str(cm.exception))
        # A reply that does not fit its type.
        t = asyncio.create_task(calc.total([gen.Term(n=1)]))
        c = await recv_skipping_credit(peer)
        self.assertEqual(await recv_skipping_credit(peer), F.End(c.call_id))
        peer.send(json_reply(c.call_id, {"total": 1}))
        with self.assertRaises(polycall.MalformedError) as cm2:
            await t
        self.assertIn("'sum' is missing", cm2.exception.message)

    async def test_bidi_sends_raw_requests_as_they_come_and_reads_replies_meanwhile(self) -> None:
        calc, peer = await self.calc()
        queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue()

        async def requests() -> AsyncIterator[bytes]:
            while (item := await queue.get()) is not None:
                yield item

        await queue.put(b"hi")
        replies = calc.relay(requests(), timeout=5)
        it = replies.__aiter__()
        first = asyncio.create_task(it.__anext__())
        c = await recv_skipping_credit(peer)
        self.assertEqual((c.method_name, c.stream, c.content_type, c.payload), ("calc.relay", True, F.RAW, b"hi"))
        peer.send(raw_stream_reply(c.call_id, b"hi"))
        self.assertEqual(await first, b"hi")
        await queue.put(bytes(range(256)))
        d = await recv_skipping_credit(peer)
        self.assertEqual((d.first, d.payload), ((F.RAW, F.NONE), bytes(range(256))))
        peer.send(further(c.call_id, d.payload))
        self.assertEqual(await it.__anext__(), bytes(range(256)))
        await queue.put(None)
        self.assertEqual(await recv_skipping_credit(peer), F.End(c.call_id))
        peer.send(F.End(c.call_id))
        with self.assertRaises(StopAsyncIteration):
            await it.__anext__()
        # A request that is not bytes fails the call before anything is sent.
        with self.assertRaises(TypeError):
            await take_all(calc.relay(["text"]))
        await self.quiet(peer)


class StreamingStubProviderTests(BoundedTestCase):
    """``serve_server_stream``, ``serve_client_stream`` and ``serve_bidi`` through the
    generated provider base class, called by a scripted caller."""

    class Impl(gen.ConformanceProvider):
        async def count(self, request: gen.CountInput, ctx: polycall.CallContext) -> AsyncIterator[gen.Counted]:
            for i in range(request.n):
                if i == request.fail_after:
                    raise polycall.FailedPreconditionError(f"failed after {i}")
                yield gen.Counted(i=i) if i < 100 else "not a Counted"  # type: ignore[misc]

        async def total(self, requests: AsyncIterator[gen.Term], ctx: polycall.CallContext) -> gen.Total:
            s = 0
            async for r in requests:
                s += r.n
            return gen.Total(sum=s) if s >= 0 else s  # type: ignore[return-value]

        async def relay(self, requests: AsyncIterator[bytes], ctx: polycall.CallContext) -> AsyncIterator[bytes]:
            async for r in requests:
                yield r

        async def add(self, request: gen.AddInput, ctx: polycall.CallContext) -> gen.AddOutput:
            return gen.AddOutput(sum=request.a + request.b)

    async def served(self) -> Peer:
        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: self.Impl().register(p, "calc"))
        return peer

    async def test_register_names_each_methods_kind_and_hints(self) -> None:
        peer = await self.served()
        entries = {m.name: m for m in peer.register.methods}
        self.assertEqual(list(entries), [f"calc.{m}" for m in UNARY + STREAMING])
        kinds = {n: (m.idempotent, m.request_stream, m.reply_stream) for n, m in entries.items()}
        self.assertEqual(kinds["calc.count"], (False, False, True))
        self.assertEqual(kinds["calc.total"], (False, True, False))
        self.assertEqual(kinds["calc.relay"], (False, True, True))
        self.assertEqual(kinds["calc.add"], (True, False, False))
        self.assertEqual(entries["calc.count"].input, '{"n": int, "fail_after": optional<int>}')
        self.assertEqual(entries["calc.count"].output, '{"i": int}')
        self.assertEqual(entries["calc.relay"].input, "bytes")

    async def test_a_server_stream_answers_typed_replies_then_end_or_the_methods_error(self) -> None:
        peer = await self.served()
        peer.send(json_call(2, "calc.count", {"n": 3}))
        self.assertEqual(await recv_skipping_credit(peer), json_stream_reply(2, {"i": 0}))
        self.assertEqual(await recv_skipping_credit(peer), further(2, j({"i": 1}), F.JSON))
        self.assertEqual(await recv_skipping_credit(peer), further(2, j({"i": 2}), F.JSON))
        self.assertEqual(await recv_skipping_credit(peer), F.End(2))
        peer.send(json_call(4, "calc.count", {"n": 10, "fail_after": 1}))
        self.assertEqual(await recv_skipping_credit(peer), json_stream_reply(4, {"i": 0}))
        self.assertEqual(await recv_skipping_credit(peer),
                         F.Error(4, polycall.FailedPreconditionError.CODE, "failed after 1"))
        peer.send(json_call(6, "calc.count", {"n": 0}))
        self.assertEqual(await recv_skipping_credit(peer),
                         F.Reply(6, F.RAW, F.NONE, False, None, True, b"", True))
        self.assertEqual(await recv_skipping_credit(peer), F.End(6))

    async def test_a_server_stream_refuses_a_request_or_a_reply_that_does_not_fit(self) -> None:
        peer = await self.served()
        peer.send(json_call(2, "calc.count", {"n": "three"}))
        e = await recv_skipping_credit(peer)
        self.assertEqual((e.call_id, e.code), (2, polycall.InvalidInputError.CODE))
        self.assertIn("$.n", e.message)
        # Reply #100 is not a Counted: internal, after the 100 before it.
        peer.send(json_call(4, "calc.count", {"n": 101}))
        frames = [await recv_skipping_credit(peer) for _ in range(101)]
        self.assertEqual(frames[0], json_stream_reply(4, {"i": 0}))
        self.assertEqual(frames[99], further(4, j({"i": 99}), F.JSON))
        e = frames[100]
        self.assertEqual((e.call_id, e.code), (4, polycall.InternalError.CODE))
        self.assertIn("reply #100", e.message)
        await self.quiet(peer)

    async def test_a_client_stream_reads_typed_requests_and_answers_one_reply(self) -> None:
        peer = await self.served()
        peer.send(json_call(2, "calc.total"))
        for n in (1, 2, 39):
            peer.send(further(2, j({"n": n}), F.JSON))
        peer.send(F.End(2))
        self.assertEqual(await recv_skipping_credit(peer), json_reply(2, {"sum": 42}))
        # A unary request is a stream of one.
        peer.send(json_call(4, "calc.total", {"n": 5}))
        self.assertEqual(await recv_skipping_credit(peer), json_reply(4, {"sum": 5}))
        # A request that does not fit: invalid_input, naming it.
        peer.send(json_call(6, "calc.total", {"n": 1}, stream=True))
        peer.send(further(6, j({"n": "x"}), F.JSON))
        e = await recv_skipping_credit(peer)
        self.assertEqual((e.call_id, e.code), (6, polycall.InvalidInputError.CODE))
        self.assertIn("request #1", e.message)
        # A reply that does not fit (the implementation returns an int): internal.
        peer.send(json_call(8, "calc.total", {"n": -1}, stream=True))
        peer.send(F.End(8))
        e = await recv_skipping_credit(peer)
        self.assertEqual((e.call_id, e.code), (8, polycall.InternalError.CODE))
        await self.quiet(peer, allowed=(F.Credit, F.StreamCredit))

    async def test_bidi_relays_raw_requests_as_they_arrive(self) -> None:
        peer = await self.served()
        peer.send(F.Call(2, 0, "calc.relay", F.RAW, F.NONE, F.Meta(), False, None, True, b"hi"))
        self.assertEqual(await recv_skipping_credit(peer), raw_stream_reply(2, b"hi"))
        peer.send(further(2, b"\x00\xff"))
        self.assertEqual(await recv_skipping_credit(peer), further(2, b"\x00\xff"))
        peer.send(F.End(2))
        self.assertEqual(await recv_skipping_credit(peer), F.End(2))

    async def test_the_generated_defaults_answer_unsupported(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        await self.provider(peer, lambda p: gen.ConformanceProvider().register(p, "calc"))
        peer.send(json_call(2, "calc.count", {"n": 1}))
        peer.send(json_call(4, "calc.total", {"n": 1}, stream=True))
        peer.send(F.End(4))
        peer.send(F.Call(6, 0, "calc.relay", F.RAW, F.NONE, F.Meta(), False, None, True, b"x"))
        codes = {}
        while len(codes) < 3:
            f = await recv_skipping_credit(peer)
            if isinstance(f, F.Error):
                codes[f.call_id] = f.code
        self.assertEqual(codes, {i: polycall.UnsupportedError.CODE for i in (2, 4, 6)})


class Relay:
    """A stand-in runtime for in-process tests: answers the handshake (streaming
    offered) and REGISTER, and forwards each call a connection opens to the connection
    that registered its method, frame by frame, with call ids mapped (the callee's are
    even, as a runtime's are) and connection CREDIT returned for every payload byte."""

    def __init__(self) -> None:
        self.providers: dict[str, "Relay.Side"] = {}
        self.routes: dict[tuple[int, int], tuple["Relay.Side", int]] = {}
        self.sides: list[Relay.Side] = []
        self.tasks: list[asyncio.Task] = []

    class Side:
        def __init__(self, writer: asyncio.StreamWriter) -> None:
            self.writer = writer
            self.names: dict[int, str] = {}
            self.next_id = 2

        def send(self, f: F.Frame) -> None:
            self.writer.write(F.encode(f))

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        for side in self.sides:
            side.writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.append(asyncio.current_task())
        side = Relay.Side(writer)
        self.sides.append(side)
        try:
            assert await reader.readexactly(8) == F.PREFACE
            buf = bytearray()
            while True:
                got = F.decode(buf, 1 << 30, False)
                if not got:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                f, used = got
                del buf[:used]
                self._on_frame(side, f)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            return

    def _on_frame(self, side: "Relay.Side", f: F.Frame) -> None:
        if isinstance(f, F.Hello):
            side.writer.write(F.PREFACE + F.encode(F.Welcome(
                1, f.features & FEATURE_STREAMING, F.Limits(), [1, 0], [F.NONE], 0, "relay")))
            return
        if isinstance(f, F.Register):
            for m in f.methods:
                self.providers[m.name] = side
            side.send(F.Reply(f.call_id, F.RAW, F.NONE, False, None, False, b""))
            return
        if isinstance(f, (F.Credit, F.Ping, F.Pong)):
            return
        if isinstance(f, (F.Call, F.Reply, F.Data)) and f.payload:
            side.send(F.Credit(len(f.payload)))
        if isinstance(f, F.Call):
            if f.method_name:
                side.names[f.method_id] = f.method_name
            name = f.method_name or side.names[f.method_id]
            callee = self.providers.get(name)
            if callee is None:
                side.send(F.Error(f.call_id, polycall.UnknownMethodError.CODE, f"no provider of {name}"))
                return
            cid = callee.next_id
            callee.next_id += 2
            self.routes[(id(side), f.call_id)] = (callee, cid)
            self.routes[(id(callee), cid)] = (side, f.call_id)
            callee.send(dataclasses.replace(f, call_id=cid, method_id=0, method_name=name))
            return
        route = self.routes.get((id(side), getattr(f, "call_id", 0)))
        if route is not None:
            other, cid = route
            other.send(dataclasses.replace(f, call_id=cid))


class StreamingStubEndToEnd(BoundedTestCase):
    async def test_generated_streaming_stubs_talk_to_each_other_through_a_relay(self) -> None:
        relay = Relay()
        endpoint = await relay.start()
        self.addAsyncCleanup(relay.close)
        provider = polycall.Provider(endpoint)
        StreamingStubProviderTests.Impl().register(provider, "calc")
        await provider.start()
        self.addAsyncCleanup(provider.close)
        client = await polycall.Client.connect(endpoint)
        self.addAsyncCleanup(client.close)
        calc = gen.ConformanceClient(client, "calc")

        self.assertEqual(await take_all(calc.count(gen.CountInput(n=5))),
                         [gen.Counted(i=i) for i in range(5)])
        got: list[int] = []
        with self.assertRaises(polycall.FailedPreconditionError):
            async for c in calc.count(gen.CountInput(n=10, fail_after=3)):
                got.append(c.i)
        self.assertEqual(got, [0, 1, 2])
        self.assertEqual(await calc.total(gen.Term(n=n) for n in range(1, 101)), gen.Total(sum=5050))
        sent = [bytes([i]) * (1 + i * 997) for i in range(20)]
        self.assertEqual(await take_all(calc.relay(sent, timeout=10)), sent)
        self.assertEqual(await calc.add(gen.AddInput(a=2, b=40)), gen.AddOutput(sum=42))
        # Leaving a stream early cancels it; the connection goes on.
        async for c in calc.count(gen.CountInput(n=1_000_000)):
            if c.i == 2:
                break
        self.assertEqual(await calc.add(gen.AddInput(a=1, b=1)), gen.AddOutput(sum=2))


if __name__ == "__main__":
    unittest.main()
