"""W3C trace context: the traceparent encoding, span ids, the spans recorded and their
export (``sys.trace.export``) in batches, context propagation through a provider's
handler into the calls it makes (against a scripted peer), and one run against the
real runtime. Every test is bounded in time."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any, Awaitable, Callable, Optional

import polycall
from polycall import frame as F
from polycall import trace
from polycall.connection import FEATURE_STREAMING, Payload

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_connection import Peer  # noqa: E402
from test_streaming import BoundedTestCase, empty_reply, open_call, unary_reply  # noqa: E402

#: Seconds any one test may take.
TEST_LIMIT = 10.0
#: The runtime the end-to-end test starts (built by ``cargo build``).
RUNTIME = pathlib.Path(__file__).resolve().parents[3] / "target" / "debug" / "polycall"

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
PARENT_ID = bytes.fromhex("b7ad6b7169203331")


class TraceTestCase(BoundedTestCase):
    """Every ``async def test_*`` bounded by :data:`TEST_LIMIT` seconds."""

    @staticmethod
    def _bounded(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def run(self: "TraceTestCase") -> None:
            await asyncio.wait_for(fn(self), TEST_LIMIT)
        return run


# ---------------------------------------------------------------------------------------
# Encoding, ids, span records


class EncodingTests(unittest.TestCase):
    def test_traceparent_round_trips_through_its_25_bytes(self) -> None:
        b = trace.encode_traceparent(TRACE_ID, PARENT_ID, 1)
        self.assertEqual(len(b), 25)
        self.assertEqual(b, TRACE_ID + PARENT_ID + b"\x01")
        ctx = trace.decode_traceparent(b, "k=v")
        self.assertEqual(ctx, trace.TraceContext(TRACE_ID, PARENT_ID, 1, "k=v"))
        self.assertTrue(ctx.sampled)
        self.assertFalse(trace.decode_traceparent(TRACE_ID + PARENT_ID + b"\x02").sampled)

    def test_bad_traceparents_are_refused(self) -> None:
        for args in [(bytes(16), PARENT_ID, 1), (TRACE_ID, bytes(8), 1), (TRACE_ID[:15], PARENT_ID, 1),
                     (TRACE_ID, PARENT_ID + b"\x01", 1), (TRACE_ID, PARENT_ID, 256)]:
            with self.subTest(args=args), self.assertRaises(ValueError):
                trace.encode_traceparent(*args)
        for entry in [TRACE_ID + PARENT_ID, bytes(16) + PARENT_ID + b"\x01", TRACE_ID + bytes(8) + b"\x01"]:
            with self.subTest(entry=entry.hex()), self.assertRaises(ValueError):
                trace.decode_traceparent(entry)

    def test_ids_are_random_non_zero_and_of_the_right_size(self) -> None:
        spans = {trace.new_span_id() for _ in range(200)}
        self.assertEqual(len(spans), 200)
        self.assertTrue(all(len(s) == 8 and any(s) for s in spans))
        t = trace.new_trace_id()
        self.assertEqual(len(t), 16)
        self.assertTrue(any(t))
        ctx = trace.new_context(sampled=False)
        self.assertEqual((len(ctx.trace_id), len(ctx.span_id), ctx.flags), (16, 8, 0))

    def test_the_w3c_header_round_trips_in_lowercase_hex(self) -> None:
        ctx = trace.TraceContext(TRACE_ID, PARENT_ID, 1)
        header = ctx.header()
        self.assertEqual(header, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        self.assertEqual(trace.parse_header(header), ctx)
        for bad in ["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"]:
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                trace.parse_header(bad)

    def test_a_span_record_has_the_export_shape(self) -> None:
        ctx = trace.TraceContext(TRACE_ID, bytes.fromhex("00f067aa0ba902b7"), 1)
        span = trace.make_span(ctx, PARENT_ID, "greet.v1.hello", "server", "svc", 123, 456)
        self.assertEqual(span, {
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "00f067aa0ba902b7",
            "parent_id": "b7ad6b7169203331",
            "name": "greet.v1.hello",
            "kind": "server",
            "service": "svc",
            "start_unix_nanos": 123,
            "duration_nanos": 456,
            "attributes": [["rpc.system", "polycall"], ["rpc.service", "greet.v1"],
                           ["rpc.method", "hello"], ["polycall.language", "python"]],
        })
        rootless = trace.make_span(ctx, None, "a.b", "client", "svc", 1, 2, "deadline_exceeded")
        self.assertNotIn("parent_id", rootless)
        self.assertEqual(rootless["error"], "deadline_exceeded")
        json.dumps(span)  # JSON as is

    def test_use_sets_the_current_context_for_the_block(self) -> None:
        self.assertIsNone(trace.current())
        ctx = trace.new_context()
        with trace.use(ctx) as got:
            self.assertIs(got, ctx)
            self.assertIs(trace.current(), ctx)
            with trace.use(None):
                self.assertIsNone(trace.current())
            self.assertIs(trace.current(), ctx)
        self.assertIsNone(trace.current())

    def test_service_names_are_1_to_128_bytes(self) -> None:
        self.assertEqual(trace.check_service_name("x" * 128), "x" * 128)
        for bad in ["", "x" * 129, "é" * 65]:
            with self.subTest(bad=bad[:5]), self.assertRaises(ValueError):
                trace.check_service_name(bad)
        with self.assertRaises(ValueError):
            polycall.Provider("127.0.0.1:1", service_name="")


# ---------------------------------------------------------------------------------------
# The recorder, over a stand-in connection


class FakeConnection:
    """Answers ``sys.trace.export`` like the runtime (``answer`` decides how) and
    keeps what each export carried and the trace context it ran in."""

    def __init__(self, answer: Optional[Callable[[list], Any]] = None) -> None:
        self.is_closed = False
        self.answer = answer or (lambda spans: {"accepted": len(spans), "recording": True})
        self.exports: list[list[dict]] = []
        self.contexts: list[Optional[trace.TraceContext]] = []
        self.metas: list[Optional[F.Meta]] = []

    async def call(self, method: str, data: bytes, *, content_type: int, timeout: Optional[float],
                    meta: Optional[F.Meta] = None) -> Payload:
        assert method == "sys.trace.export" and content_type == F.JSON and timeout
        spans = json.loads(data)["spans"]
        self.exports.append(spans)
        self.contexts.append(trace.current())
        self.metas.append(meta)
        got = self.answer(spans)
        if isinstance(got, BaseException):
            raise got
        return Payload(json.dumps(got).encode(), F.JSON)


def span(i: int = 0, sampled: bool = True) -> dict:
    ctx = trace.TraceContext(TRACE_ID, trace.new_span_id(), 1 if sampled else 0)
    return trace.make_span(ctx, PARENT_ID, f"svc.m{i}", "server", "svc", time.time_ns(), 1000)


async def until(check: Callable[[], bool], seconds: float = 3.0) -> None:
    """Waits (bounded) until ``check()``."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.01)


class SpanRecorderTests(TraceTestCase):
    async def test_a_full_batch_is_exported_at_once_a_partial_one_after_the_delay(self) -> None:
        conn = FakeConnection()
        rec = trace.SpanRecorder(conn, "svc")  # type: ignore[arg-type]
        for i in range(trace.BATCH_SIZE):
            rec.record(span(i))
        await until(lambda: len(conn.exports) == 1, 0.15)
        self.assertEqual(len(conn.exports[0]), trace.BATCH_SIZE)
        started = time.monotonic()
        rec.record(span())
        await asyncio.sleep(0.05)
        self.assertEqual(len(conn.exports), 1, "a lone span waits for the delay")
        await until(lambda: len(conn.exports) == 2)
        self.assertGreaterEqual(time.monotonic() - started, trace.BATCH_DELAY * 0.8)
        self.assertEqual((rec.accepted, rec.pending, rec.recording), (trace.BATCH_SIZE + 1, 0, True))

    async def test_flush_exports_everything_in_calls_of_at_most_1000_spans(self) -> None:
        conn = FakeConnection()
        seen: list[int] = []
        rec = trace.SpanRecorder(conn, "svc", batch_size=trace.MAX_EXPORT,  # type: ignore[arg-type]
                                 on_export=lambda batch: seen.append(len(batch)))
        for i in range(2500):
            rec.record(span(i))
        await rec.flush()
        self.assertEqual([len(e) for e in conn.exports], [1000, 1000, 500])
        self.assertEqual(seen, [1000, 1000, 500])
        self.assertEqual((rec.accepted, rec.pending), (2500, 0))
        await rec.flush()  # nothing to do
        self.assertEqual(len(conn.exports), 3)

    async def test_the_export_runs_outside_any_trace(self) -> None:
        conn = FakeConnection()
        rec = trace.SpanRecorder(conn, "svc")  # type: ignore[arg-type]
        for i in range(3):
            rec.record(span(i))
        with trace.use(trace.new_context()):
            await rec.flush()
        self.assertEqual(conn.contexts, [None], "the export itself is never traced")
        self.assertTrue(all(m is None or m.traceparent is None for m in conn.metas))

    async def test_recording_false_stops_recording_for_the_connection(self) -> None:
        conn = FakeConnection(lambda spans: {"accepted": len(spans), "recording": False})
        rec = trace.SpanRecorder(conn, "svc")  # type: ignore[arg-type]
        rec.record(span())
        await rec.flush()
        self.assertFalse(rec.recording)
        rec.record(span())
        await rec.flush()
        self.assertEqual((len(conn.exports), rec.pending, rec.accepted), (1, 0, 1))

    async def test_export_failures_are_logged_never_raised(self) -> None:
        conn = FakeConnection(lambda spans: polycall.InternalError("exporter down"))
        rec = trace.SpanRecorder(conn, "svc")  # type: ignore[arg-type]
        rec.record(span())
        with self.assertLogs("polycall.trace", "WARNING") as logs:
            await rec.flush()
        self.assertIn("exporter down", "\n".join(logs.output))
        self.assertEqual((rec.dropped, rec.recording), (1, True))
        conn.answer = lambda spans: polycall.UnknownMethodError("no such method")
        rec.record(span())
        with self.assertLogs("polycall.trace", "WARNING"):
            await rec.flush()
        self.assertFalse(rec.recording, "a peer without sys.trace.export gets no more spans")

    async def test_a_span_is_recorded_once_and_only_when_sampled(self) -> None:
        conn = FakeConnection()
        rec = trace.SpanRecorder(conn, "svc")  # type: ignore[arg-type]
        parent = trace.TraceContext(TRACE_ID, PARENT_ID, 1)
        s = trace.OpenSpan.client(rec, "a.b", parent)
        s.finish(polycall.BusyError("later"))
        s.finish()
        trace.OpenSpan.client(rec, "a.b", parent._replace(flags=0)).finish()
        await rec.flush()
        self.assertEqual(len(conn.exports), 1)
        [got] = conn.exports[0]
        self.assertEqual((got["kind"], got["parent_id"], got["error"]), ("client", PARENT_ID.hex(), "busy"))


# ---------------------------------------------------------------------------------------
# Propagation, against a scripted peer


def traced(call_id: int, method: str, data: bytes = b"", flags: int = 1, **kw: Any) -> F.Call:
    return open_call(call_id, method, data, meta=F.Meta(traceparent=TRACE_ID + PARENT_ID + bytes([flags])), **kw)


class PropagationTests(TraceTestCase):
    async def answer_export(self, peer: Peer, recording: bool = True) -> list[dict]:
        """Takes the next ``sys.trace.export`` call and answers it; its spans."""
        while True:
            f = await peer.recv()
            if isinstance(f, F.Call):
                break
        self.assertEqual(f.method_name, "sys.trace.export")
        self.assertIsNone(f.meta.traceparent, "the export carries no traceparent")
        spans = json.loads(f.payload)["spans"]
        peer.send(unary_reply(f.call_id, json.dumps({"accepted": len(spans), "recording": recording}).encode(),
                              F.JSON))
        return spans

    async def test_a_handler_continues_the_callers_trace_in_its_nested_calls(self) -> None:
        seen: dict[str, Any] = {}

        async def outer(call: polycall.IncomingCall) -> bytes:
            seen["current"] = trace.current()
            seen["context"] = call.context.trace

            async def in_a_task() -> Optional[trace.TraceContext]:
                return trace.current()
            seen["task"] = await asyncio.create_task(in_a_task())
            return b"outer:" + await prov.client.call("svc.inner", b"x")

        def setup(p: polycall.Provider) -> None:
            p.service_name = "trace-test"
            p.add_method("svc.outer", outer)

        peer = Peer()
        prov = await self.provider(peer, setup)
        peer.send(traced(2, "svc.outer", b"hi"))
        nested = await self.recv_skipping(peer)
        self.assertIsInstance(nested, F.Call)
        self.assertEqual(nested.method_name, "svc.inner")
        server_ctx = seen["current"]
        self.assertIsNotNone(server_ctx)
        self.assertEqual(seen["context"], server_ctx)
        self.assertEqual(seen["task"], server_ctx, "tasks the handler starts inherit the context")
        self.assertEqual(server_ctx.trace_id, TRACE_ID)
        self.assertNotIn(server_ctx.span_id, (PARENT_ID, bytes(8)))
        tp = trace.decode_traceparent(nested.meta.traceparent)
        self.assertEqual((tp.trace_id, tp.flags), (TRACE_ID, 1))
        self.assertNotIn(tp.span_id, (PARENT_ID, server_ctx.span_id), "the nested call's parent is its client span")
        peer.send(unary_reply(nested.call_id, b"in"))
        reply = await self.recv_skipping(peer)
        self.assertIsInstance(reply, F.Reply)
        self.assertEqual((reply.call_id, reply.payload), (2, b"outer:in"))
        self.assertIsNone(trace.current(), "the serving context stays in its task")

        flushed = asyncio.create_task(prov.flush_spans(timeout=5))
        spans = {s["kind"]: s for s in await self.answer_export(peer)}
        await flushed
        server, client = spans["server"], spans["client"]
        self.assertEqual(server["trace_id"], TRACE_ID.hex())
        self.assertEqual(server["parent_id"], PARENT_ID.hex(), "the server span's parent is the caller's span")
        self.assertEqual(server["span_id"], server_ctx.span_id.hex())
        self.assertEqual((server["name"], server["service"]), ("svc.outer", "trace-test"))
        self.assertNotIn("error", server)
        self.assertIn(["rpc.method", "outer"], server["attributes"])
        self.assertEqual(client["parent_id"], server_ctx.span_id.hex(),
                         "the nested call's client span is a child of the server span")
        self.assertEqual(client["span_id"], tp.span_id.hex())
        self.assertEqual(client["name"], "svc.inner")
        self.assertEqual(prov.connection.span_recorder.accepted, 2)

    async def test_unsampled_and_untraced_calls_propagate_without_recording(self) -> None:
        nested_ctx: list[Optional[trace.TraceContext]] = []

        async def outer(call: polycall.IncomingCall) -> bytes:
            nested_ctx.append(trace.current())
            return await prov.client.call("svc.inner")

        peer = Peer()
        with trace.use(trace.new_context()):  # the opener's trace does not reach served calls
            prov = await self.provider(peer, lambda p: p.add_method("svc.outer", outer))
        for call_id, frame in [(2, traced(2, "svc.outer", flags=0)), (4, open_call(4, "svc.outer"))]:
            peer.send(frame)
            nested = await self.recv_skipping(peer)
            if call_id == 2:
                tp = trace.decode_traceparent(nested.meta.traceparent)
                self.assertEqual((tp.trace_id, tp.flags), (TRACE_ID, 0), "an unsampled trace still propagates")
            else:
                self.assertIsNone(nested.meta.traceparent)
                self.assertIsNone(nested_ctx[-1])
            peer.send(unary_reply(nested.call_id, b""))
            self.assertIsInstance(await self.recv_skipping(peer), F.Reply)
        self.assertEqual(prov.connection.span_recorder.pending, 0)
        await prov.flush_spans(timeout=1)
        await self.quiet(peer, 0.1)

    async def test_failed_and_streaming_calls_record_their_server_spans(self) -> None:
        async def fails(call: polycall.IncomingCall) -> bytes:
            raise polycall.InvalidInputError("no")

        async def count(call: polycall.IncomingCall):
            self.assertIsNotNone(trace.current())
            for i in range(2):
                yield str(i).encode()

        async def upload(call: polycall.IncomingCall) -> bytes:
            return b"".join([m.data async for m in call.requests])

        def setup(p: polycall.Provider) -> None:
            p.add_method("svc.fails", fails)
            p.add_server_stream("svc.count", count)
            p.add_client_stream("svc.upload", upload)

        peer = Peer(features=FEATURE_STREAMING)
        prov = await self.provider(peer, setup)
        peer.send(traced(2, "svc.fails"))
        self.assertIsInstance(await self.recv_skipping(peer), F.Error)
        peer.send(traced(4, "svc.count"))
        while not isinstance(await self.recv_skipping(peer), F.End):
            pass
        peer.send(traced(6, "svc.upload", b"a", stream=True))
        peer.send(F.End(6))
        self.assertIsInstance(await self.recv_skipping(peer, (F.Credit, F.StreamCredit)), F.Reply)
        flushed = asyncio.create_task(prov.flush_spans(timeout=5))
        spans = {s["name"]: s for s in await self.answer_export(peer)}
        await flushed
        self.assertEqual(spans["svc.fails"]["error"], "invalid_input")
        for name in ("svc.count", "svc.upload"):
            self.assertNotIn("error", spans[name])
            self.assertEqual((spans[name]["kind"], spans[name]["parent_id"]), ("server", PARENT_ID.hex()))

    async def test_calls_made_in_a_trace_open_client_spans(self) -> None:
        peer = Peer(features=FEATURE_STREAMING)
        client = await self.client(peer)
        rec = client.connection.span_recorder

        task = asyncio.create_task(client.call("svc.plain"))
        f = await peer.recv()
        self.assertIsNone(f.meta.traceparent, "no trace, no traceparent")
        peer.send(unary_reply(f.call_id, b""))
        await task

        ctx = trace.new_context()
        explicit = F.Meta(traceparent=TRACE_ID + PARENT_ID + b"\x01")
        with trace.use(ctx):
            task = asyncio.create_task(client.connection.call("svc.explicit", meta=explicit))
            f = await peer.recv()
            self.assertEqual(f.meta.traceparent, TRACE_ID + PARENT_ID + b"\x01", "an explicit one is sent as is")
            peer.send(unary_reply(f.call_id, b""))
            await task
            self.assertEqual(rec.pending, 0)

            task = asyncio.create_task(client.call("svc.unary", timeout=5))
            f = await peer.recv()
            unary_tp = trace.decode_traceparent(f.meta.traceparent)
            peer.send(F.Error(f.call_id, polycall.NotFoundError.CODE, "gone"))
            with self.assertRaises(polycall.NotFoundError):
                await task

            replies = client.server_stream("svc.stream", b"")
            task = asyncio.create_task(self.collect(replies))
            f = await peer.recv()
            stream_tp = trace.decode_traceparent(f.meta.traceparent)
            peer.send(empty_reply(f.call_id))
            peer.send(F.End(f.call_id))
            self.assertEqual(await task, [])
        self.assertEqual(explicit.traceparent, TRACE_ID + PARENT_ID + b"\x01")
        for tp in (unary_tp, stream_tp):
            self.assertEqual((tp.trace_id, tp.flags), (ctx.trace_id, 1))
            self.assertNotEqual(tp.span_id, ctx.span_id)

        flushed = asyncio.create_task(client.flush_spans(timeout=5))
        f = await peer.recv()
        self.assertEqual(f.method_name, "sys.trace.export")
        self.assertIsNone(f.meta.traceparent)
        spans = {s["name"]: s for s in json.loads(f.payload)["spans"]}
        peer.send(unary_reply(f.call_id, b'{"accepted": 2, "recording": true}', F.JSON))
        await flushed
        self.assertEqual(set(spans), {"svc.unary", "svc.stream"})
        self.assertEqual(spans["svc.unary"]["error"], "not_found")
        self.assertNotIn("error", spans["svc.stream"])
        for name, tp in (("svc.unary", unary_tp), ("svc.stream", stream_tp)):
            s = spans[name]
            self.assertEqual((s["kind"], s["service"]), ("client", trace.DEFAULT_SERVICE))
            self.assertEqual((s["span_id"], s["parent_id"]), (tp.span_id.hex(), ctx.span_id.hex()))

    async def collect(self, replies: polycall.ReplyStream) -> list:
        return [r async for r in replies]


# ---------------------------------------------------------------------------------------
# Against the runtime


class Runtime:
    """``polycall run --endpoint 127.0.0.1:0`` in a temporary directory, once it has
    written the endpoint it bound."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="polycall-py-trace-")
        ep_file = pathlib.Path(self.dir.name) / "endpoint"
        env = {k: v for k, v in os.environ.items() if k not in ("POLYCALL_ENDPOINT", "POLYCALL_CONFIG")}
        env["POLYCALL_LOG"] = "warn"
        self.process = subprocess.Popen(
            [str(RUNTIME), "run", "--endpoint", "127.0.0.1:0", "--endpoint-file", str(ep_file),
             "--state-dir", str(pathlib.Path(self.dir.name) / "state"), "--quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.ep_file = ep_file

    async def endpoint(self, seconds: float = 5.0) -> str:
        end = time.monotonic() + seconds
        while True:
            if self.ep_file.exists() and (text := self.ep_file.read_text()).endswith("\n"):
                return text.strip()
            if self.process.poll() is not None or time.monotonic() > end:
                raise AssertionError("the runtime did not start")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.dir.cleanup()


class RuntimeTraceTests(TraceTestCase):
    async def test_a_provider_exports_the_server_span_of_a_traced_call(self) -> None:
        runtime = Runtime()
        self.addCleanup(runtime.stop)
        ep = await runtime.endpoint()

        seen: dict[str, Any] = {}

        async def echo(call: polycall.IncomingCall) -> bytes:
            seen["traceparent"] = call.context.meta.traceparent
            seen["context"] = trace.current()
            return call.payload

        prov = await polycall.Provider.connect(ep, service_name="py-trace-e2e")
        self.addAsyncCleanup(prov.close)
        prov.add_method("pytrace.echo", echo)
        await prov.start(timeout=5)
        batches: list[list[dict]] = []
        rec = prov.connection.span_recorder
        rec.on_export = batches.append
        client = await polycall.Client.connect(ep)
        self.addAsyncCleanup(client.close)

        sent = TRACE_ID + PARENT_ID + b"\x01"
        reply = await client.connection.call("pytrace.echo", b"hi", timeout=5, meta=F.Meta(traceparent=sent))
        self.assertEqual(reply.data, b"hi")
        incoming = trace.decode_traceparent(seen["traceparent"])
        self.assertEqual((incoming.trace_id, incoming.flags), (TRACE_ID, 1))
        self.assertNotEqual(incoming.span_id, PARENT_ID, "the runtime's own span sits between")
        self.assertEqual(client.connection.span_recorder.pending, 0, "an explicit traceparent opens no client span")

        await prov.flush_spans(timeout=5)
        [batch] = batches
        [server] = [s for s in batch if s["trace_id"] == TRACE_ID.hex()]
        self.assertEqual(server["kind"], "server")
        self.assertEqual(server["name"], "pytrace.echo")
        self.assertEqual(server["service"], "py-trace-e2e")
        self.assertEqual(server["parent_id"], incoming.span_id.hex())
        self.assertEqual(server["span_id"], seen["context"].span_id.hex())
        self.assertEqual(rec.accepted, 1, "the runtime took the span")
        # Started without --otlp, the runtime records nothing: the provider stops too.
        self.assertFalse(rec.recording)
        await client.connection.call("pytrace.echo", b"again", timeout=5, meta=F.Meta(traceparent=sent))
        await prov.flush_spans(timeout=5)
        self.assertEqual((len(batches), rec.pending), (1, 0))


if __name__ == "__main__":
    unittest.main()
