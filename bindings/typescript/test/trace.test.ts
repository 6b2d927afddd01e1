/**
 * Trace context and spans (`src/trace.ts`): the helpers, the span recorder's batching and
 * failure handling, propagation through a provider's handlers and a client's calls
 * against a scripted peer, and a provider and a client traced through the real runtime
 * (`target/debug/polycall`, or `POLYCALL_BIN`; the test fails when it is not built). Every test
 * is bounded in time.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Client } from "../src/client.js";
import { type Frame } from "../src/frame.js";
import type { ConnectOptions, Peer } from "../src/peer.js";
import type { TraceContext } from "../src/meta.js";
import { Payload } from "../src/payload.js";
import { type CallContext, Methods, Provider } from "../src/provider.js";
import { PolycallError } from "../src/status.js";
import {
  DEFAULT_SERVICE_NAME,
  type SpanContext,
  type SpanRecord,
  SpanRecorder,
  currentTrace,
  isSampled,
  newSpanId,
  newTraceContext,
  newTraceId,
  runWithTrace,
  spanContextOf,
  toHex,
  traceStorage,
} from "../src/trace.js";
import { F, type ScriptConn, ScriptServer, text } from "./script.js";
import { REPO_ROOT, hex } from "./util.js";

/** Every test is bounded in time. */
const T = { timeout: 15_000 };

const servers: ScriptServer[] = [];
/** Connections the tests open, closed at the end even when a test failed midway. */
const peers: Peer[] = [];
after(async () => {
  await Promise.all(peers.map((p) => p.close().catch(() => undefined)));
  for (const s of servers) s.close();
});

async function scripted(): Promise<ScriptServer> {
  const s = await ScriptServer.listen();
  servers.push(s);
  return s;
}

/** Options of the connections under test: spans leave only when flushed (or 64 are buffered). */
const QUIET: ConnectOptions = { serviceName: "trace-test", tracing: { flushDelayMs: 60_000 } };

/** A provider of `methods` connected to a fresh scripted peer (which accepts its REGISTER). */
async function provider(methods: Methods, options: ConnectOptions = QUIET): Promise<{ p: Provider; peer: ScriptConn }> {
  const s = await scripted();
  const pending = Provider.connect(s.endpoint, methods, options);
  const peer = await s.accept();
  const register = await peer.expect("register");
  peer.send(F.reply(register.callId, "", { stream: false }));
  const p = await pending;
  peers.push(p);
  return { p, peer };
}

async function client(options: ConnectOptions = QUIET): Promise<{ c: Client; peer: ScriptConn }> {
  const s = await scripted();
  const [c, peer] = await Promise.all([Client.connect(s.endpoint, options), s.accept()]);
  peers.push(c);
  return { c, peer };
}

type Call = Extract<Frame, { type: "call" }>;

/** Full method names of calls a scripted peer received (the first names it, later ones use its id). */
const interned = new WeakMap<ScriptConn, Map<number, string>>();
function methodOf(peer: ScriptConn, f: Call): string {
  const names = interned.get(peer) ?? new Map<number, string>();
  interned.set(peer, names);
  if (f.methodName !== null) names.set(f.methodId, f.methodName);
  return f.methodName ?? names.get(f.methodId) ?? `#${f.methodId}`;
}

/** Takes the next `sys.trace.export` call, answers it, and returns its spans. */
async function exported(peer: ScriptConn, recording = true): Promise<SpanRecord[]> {
  const f = await peer.expect("call");
  assert.equal(methodOf(peer, f), "sys.trace.export");
  assert.equal(f.meta.trace, undefined, "the export call carries no trace");
  const { spans } = JSON.parse(text(f)) as { spans: SpanRecord[] };
  peer.send(F.reply(f.callId, Payload.json({ accepted: spans.length, recording }), { stream: false }));
  return spans;
}

const TRACE_ID = Uint8Array.from(Buffer.from("0af7651916cd43dd8448eb211c80319c", "hex"));
const PARENT_ID = Uint8Array.from(Buffer.from("b7ad6b7169203331", "hex"));
const sampled = (flags = 1): TraceContext => ({ traceId: TRACE_ID, parentId: PARENT_ID, flags });

const ATTRS = (service: string, method: string) => [
  ["rpc.system", "polycall"],
  ["rpc.service", service],
  ["rpc.method", method],
  ["polycall.language", "typescript"],
];

/** A span built for recorder tests. */
function fakeSpan(i: number): SpanRecord {
  return {
    trace_id: hex(TRACE_ID),
    span_id: (i + 1).toString(16).padStart(16, "0"),
    name: "a.b",
    kind: "server",
    service: "x",
    start_unix_nanos: 1,
    duration_nanos: 2,
    attributes: [],
  };
}

/** A recorder whose exports land in `batches`, answered `recording`. */
function recorderInto(options: ConstructorParameters<typeof SpanRecorder>[1] = {}, recording = true) {
  const batches: SpanRecord[][] = [];
  const r = new SpanRecorder(async (spans) => {
    batches.push(spans);
    return { accepted: spans.length, recording };
  }, options);
  return { r, batches };
}

// ------------------------------------------------------------------------ helpers

test("ids are random, of their length and never all zero; hex is lowercase", T, () => {
  const ids = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const s = newSpanId();
    assert.equal(s.length, 8);
    assert.ok(s.some((b) => b !== 0));
    ids.add(toHex(s));
  }
  assert.equal(ids.size, 200);
  const t = newTraceId();
  assert.equal(t.length, 16);
  assert.match(toHex(t), /^[0-9a-f]{32}$/);
  assert.equal(toHex(Uint8Array.of(0xab, 0x01)), "ab01");
  assert.equal(isSampled(1), true);
  assert.equal(isSampled(3), true);
  assert.equal(isSampled(2), false);
  assert.deepEqual(spanContextOf({ ...sampled(), tracestate: "k=v" }), { traceId: TRACE_ID, spanId: PARENT_ID, flags: 1, tracestate: "k=v" });
  const root = newTraceContext();
  assert.deepEqual([root.traceId.length, root.spanId.length, root.flags], [16, 8, 1]);
  assert.equal(newTraceContext(false).flags, 0);
  assert.equal(DEFAULT_SERVICE_NAME, "polycall-typescript");
});

test("the current trace follows async code, nests, and is cleared by runWithTrace(undefined)", T, async () => {
  assert.equal(currentTrace(), undefined);
  const a: SpanContext = { traceId: newTraceId(), spanId: newSpanId(), flags: 1 };
  const b: SpanContext = { ...a, spanId: newSpanId() };
  await runWithTrace(a, async () => {
    assert.equal(currentTrace(), a);
    await sleep(1);
    assert.equal(currentTrace(), a);
    await runWithTrace(b, async () => {
      await sleep(1);
      assert.equal(currentTrace(), b);
    });
    assert.equal(currentTrace(), a);
    runWithTrace(undefined, () => assert.equal(currentTrace(), undefined));
    const inTimer = await new Promise<SpanContext | undefined>((r) => setTimeout(() => r(traceStorage.getStore()), 1));
    assert.equal(inTimer, a, "timers set inside keep the context");
  });
  assert.equal(currentTrace(), undefined);
});

// ------------------------------------------------------------------------ the recorder

test("the recorder exports a batch at once when 64 spans are buffered", T, async () => {
  const { r, batches } = recorderInto({ service: "svc" });
  for (let i = 0; i < 63; i++) r.record(fakeSpan(i));
  assert.equal(batches.length, 0);
  assert.equal(r.buffered, 63);
  r.record(fakeSpan(63));
  assert.equal(batches.length, 1);
  assert.equal(batches[0]!.length, 64);
  assert.equal(r.buffered, 0);
  await r.flush();
  assert.equal(batches.length, 1, "nothing left to flush");
});

test("the recorder exports about flushDelayMs after the first span, and on flush()", T, async () => {
  const { r, batches } = recorderInto({ flushDelayMs: 30 });
  r.record(fakeSpan(0));
  r.record(fakeSpan(1));
  await sleep(5);
  assert.equal(batches.length, 0);
  const deadline = Date.now() + 3000;
  while (batches.length === 0 && Date.now() < deadline) await sleep(5);
  assert.deepEqual(
    batches.map((b) => b.length),
    [2],
  );
  r.record(fakeSpan(2));
  await r.flush();
  assert.deepEqual(
    batches.map((b) => b.length),
    [2, 1],
  );
  await sleep(60);
  assert.equal(batches.length, 2, "flush() cancelled the timer");
});

test("one export at a time, of at most 1000 spans; the buffer is bounded meanwhile", T, async () => {
  const batches: number[] = [];
  let inFlight = 0;
  let most = 0;
  let release: () => void = () => undefined;
  const r = new SpanRecorder(
    async (spans) => {
      batches.push(spans.length);
      most = Math.max(most, ++inFlight);
      await new Promise<void>((resolve) => (release = resolve));
      inFlight--;
      return { accepted: spans.length, recording: true };
    },
    { batchSize: 5000, maxBuffered: 1500 },
  );
  for (let i = 0; i < 1000; i++) r.record(fakeSpan(i));
  assert.deepEqual(batches, [1000], "the batch size is capped at 1000");
  for (let i = 1000; i < 2501; i++) r.record(fakeSpan(i));
  assert.equal(r.buffered, 1500);
  assert.equal(r.dropped, 1, "beyond maxBuffered spans are dropped while an export is under way");
  const flushed = r.flush();
  for (let n = 1; n <= 3; n++) {
    while (batches.length < n) await sleep(1);
    release();
  }
  await flushed;
  assert.deepEqual(batches, [1000, 1000, 500]);
  assert.equal(most, 1);
  assert.equal(r.pending, false);
});

test("recording: false stops the recorder for good", T, async () => {
  const { r, batches } = recorderInto({}, false);
  r.record(fakeSpan(0));
  await r.flush();
  assert.equal(r.recording, false);
  r.record(fakeSpan(1));
  assert.equal(r.buffered, 0);
  await r.flush();
  assert.equal(batches.length, 1);
});

test("export failures go to onError or to console.warn once, never to the caller", T, async (t) => {
  const errors: unknown[] = [];
  const failing = new SpanRecorder(() => Promise.reject(new PolycallError("unavailable", "gone")), { onError: (e) => errors.push(e) });
  failing.record(fakeSpan(0));
  await failing.flush();
  failing.record(fakeSpan(1));
  await failing.flush();
  assert.equal(errors.length, 2);
  assert.ok(errors.every((e) => e instanceof PolycallError && e.code === "unavailable"));
  assert.equal(failing.recording, true, "a transient failure does not stop recording");

  const warn = t.mock.method(console, "warn", () => undefined);
  const throwing = new SpanRecorder(() => {
    throw new Error("boom");
  });
  for (let i = 0; i < 3; i++) {
    throwing.record(fakeSpan(i));
    await throwing.flush();
  }
  assert.equal(warn.mock.callCount(), 1);
  assert.match(String(warn.mock.calls[0]!.arguments[0]), /exporting spans failed.*boom/);

  // A runtime without sys.trace.export: stop asking.
  const old = new SpanRecorder(() => Promise.reject(new PolycallError("unknown_method", "no such method")), { onError: () => undefined });
  old.record(fakeSpan(0));
  await old.flush();
  assert.equal(old.recording, false);
});

test("record() clips attributes to the export's limits and refuses malformed ids", T, async () => {
  const { r, batches } = recorderInto();
  const many = Array.from({ length: 70 }, (_, i): [string, string] => [`k${i}`.padEnd(200, "k"), "é".repeat(600)]);
  r.record({ ...fakeSpan(0), attributes: many, error: undefined, parent_id: undefined });
  await r.flush();
  const s = batches[0]![0]!;
  assert.equal(s.attributes.length, 64);
  assert.ok(s.attributes.every(([k, v]) => Buffer.byteLength(k) <= 128 && Buffer.byteLength(v) <= 1024 && !v.includes("\uFFFD")));
  assert.ok(!("error" in s) && !("parent_id" in s), "absent fields are left out of the JSON");
  const bad = (span: Partial<SpanRecord>) => assert.throws(() => r.record({ ...fakeSpan(0), ...span }), (e: unknown) => e instanceof PolycallError && e.code === "invalid_input");
  bad({ span_id: "0000000000000000" });
  bad({ trace_id: "ABC" });
  bad({ parent_id: "xyz" });
  assert.throws(() => new SpanRecorder(async () => ({ accepted: 0, recording: true }), { service: "" }), PolycallError);
  assert.throws(() => new SpanRecorder(async () => ({ accepted: 0, recording: true }), { service: "s".repeat(129) }), PolycallError);
  await assert.rejects(Client.connect("127.0.0.1:1", { serviceName: "" }), (e: unknown) => e instanceof PolycallError && e.code === "invalid_input");
});

// ------------------------------------------------------------------------ propagation

/** Methods whose `calc.outer` calls `calc.inner` on the same connection and reports what it saw. */
function nested(seen: { ctx?: CallContext; current?: SpanContext | undefined }) {
  let self: Provider | null = null;
  const methods = new Methods().add("calc.outer", async (req, ctx) => {
    seen.ctx = ctx;
    seen.current = currentTrace();
    await sleep(1); // still inside after an await
    const reply = await self!.call("calc", "inner", req);
    return Payload.raw(`outer(${reply.text()})`);
  });
  return { methods, bind: (p: Provider) => (self = p) };
}

test("a handler of a sampled call runs in a server span; its nested call carries a client span under it", T, async () => {
  const seen: { ctx?: CallContext; current?: SpanContext | undefined } = {};
  const { methods, bind } = nested(seen);
  const { p, peer } = await provider(methods);
  bind(p);
  peer.send(F.call(2, "calc.outer", "x", { stream: false, meta: { trace: { ...sampled(), tracestate: "vendor=1" } } }));
  const inner = await peer.expect("call");
  assert.equal(methodOf(peer, inner), "calc.inner");
  const server = seen.ctx!.trace!;
  assert.deepEqual(seen.current, server, "the handler runs inside the server span's context");
  assert.equal(hex(server.traceId), hex(TRACE_ID));
  assert.notEqual(hex(server.spanId), hex(PARENT_ID));
  const t = inner.meta.trace!;
  assert.deepEqual([hex(t.traceId), t.flags, t.tracestate], [hex(TRACE_ID), 1, "vendor=1"]);
  assert.notEqual(hex(t.parentId), hex(server.spanId), "the nested call carries its own client span");
  peer.send(F.reply(inner.callId, "in", { stream: false }));
  const reply = await peer.expect("reply");
  assert.deepEqual([reply.callId, text(reply)], [2, "outer(in)"]);

  const flushed = p.flushSpans();
  const spans = await exported(peer);
  await flushed;
  const client = spans.find((s) => s.kind === "client")!;
  const srv = spans.find((s) => s.kind === "server")!;
  assert.equal(spans.length, 2);
  assert.deepEqual(
    { ...client, start_unix_nanos: 0, duration_nanos: 0 },
    {
      trace_id: hex(TRACE_ID),
      span_id: hex(t.parentId),
      parent_id: hex(server.spanId),
      name: "calc.inner",
      kind: "client",
      service: "trace-test",
      start_unix_nanos: 0,
      duration_nanos: 0,
      attributes: ATTRS("calc", "inner"),
    },
  );
  assert.deepEqual(
    { ...srv, start_unix_nanos: 0, duration_nanos: 0 },
    {
      trace_id: hex(TRACE_ID),
      span_id: hex(server.spanId),
      parent_id: hex(PARENT_ID),
      name: "calc.outer",
      kind: "server",
      service: "trace-test",
      start_unix_nanos: 0,
      duration_nanos: 0,
      attributes: ATTRS("calc", "outer"),
    },
  );
  assert.ok(srv.start_unix_nanos <= client.start_unix_nanos && client.duration_nanos <= srv.duration_nanos);
  assert.ok(Math.abs(srv.start_unix_nanos / 1e6 - Date.now()) < 60_000, "start is Unix time");
  assert.ok(Number.isInteger(srv.start_unix_nanos) && Number.isInteger(srv.duration_nanos));
  await p.close();
});

test("an unsampled trace is continued but nothing is recorded; no trace, no propagation", T, async () => {
  const seen: { ctx?: CallContext; current?: SpanContext | undefined } = {};
  const { methods, bind } = nested(seen);
  const { p, peer } = await provider(methods);
  bind(p);
  peer.send(F.call(2, "calc.outer", "x", { stream: false, meta: { trace: sampled(0) } }));
  let inner = await peer.expect("call");
  assert.deepEqual([hex(inner.meta.trace!.traceId), inner.meta.trace!.flags], [hex(TRACE_ID), 0]);
  assert.equal(hex(inner.meta.trace!.parentId).length, 16);
  peer.send(F.reply(inner.callId, "in", { stream: false }));
  await peer.expect("reply");

  peer.send(F.call(4, "calc.outer", "x", { stream: false }));
  inner = await peer.expect("call");
  assert.equal(inner.meta.trace, undefined);
  assert.equal(seen.ctx!.trace, undefined);
  assert.equal(seen.current, undefined);
  peer.send(F.reply(inner.callId, "in", { stream: false }));
  await peer.expect("reply");

  await p.flushSpans();
  assert.equal(p.spanRecorder.buffered, 0);
  assert.deepEqual(await peer.drain(50), [], "no export: nothing was sampled");
  await p.close();
});

test("a failing handler's server span records the status code's name", T, async () => {
  const methods = new Methods()
    .add("calc.missing", () => {
      throw new PolycallError("not_found", "no such thing");
    })
    .add("calc.crash", () => {
      throw new Error("bug");
    });
  const { p, peer } = await provider(methods);
  peer.send(F.call(2, "calc.missing", "", { stream: false, meta: { trace: sampled() } }));
  await peer.expect("error");
  peer.send(F.call(4, "calc.crash", "", { stream: false, meta: { trace: sampled() } }));
  await peer.expect("error");
  const flushed = p.flushSpans();
  const spans = await exported(peer);
  await flushed;
  assert.deepEqual(
    spans.map((s) => [s.name, s.kind, s.error]),
    [
      ["calc.missing", "server", "not_found"],
      ["calc.crash", "server", "internal"],
    ],
  );
  await p.close();
});

test("streaming handlers run in their server span until the stream ends", T, async () => {
  let self: Provider | null = null;
  const methods = new Methods()
    .addServerStream("feed.count", async function* (req) {
      for (let i = 0; i < Number(req.text()); i++) {
        await sleep(1);
        yield Payload.raw(toHex(currentTrace()!.spanId));
      }
    })
    .addBidiStream("feed.relay", async function* (requests) {
      for await (const r of requests) {
        const reply = await self!.call("calc", "inner", r);
        yield reply;
      }
    });
  const { p, peer } = await provider(methods);
  self = p;
  peer.send(F.call(2, "feed.count", "2", { stream: false, meta: { trace: sampled() } }));
  const counted: string[] = [];
  for (let f = await peer.next(); f.type !== "end"; f = await peer.next()) {
    if ((f.type === "reply" || f.type === "data") && f.payload.length > 0) counted.push(text(f));
  }
  assert.equal(counted.length, 2);
  const serverSpan = counted[0]!;
  assert.equal(counted[1], serverSpan, "the context lasts the whole stream");

  peer.send(F.call(4, "feed.relay", null, { meta: { trace: sampled() } }), F.message(4, "a"));
  const inner = await peer.expect("call");
  assert.equal(methodOf(peer, inner), "calc.inner");
  assert.equal(hex(inner.meta.trace!.traceId), hex(TRACE_ID));
  peer.send(F.reply(inner.callId, "A", { stream: false }), F.end(4));
  const frames: Frame[] = [];
  while (!frames.some((f) => f.type === "end")) frames.push(await peer.next());

  const flushed = p.flushSpans();
  const spans = await exported(peer);
  await flushed;
  const byName = new Map(spans.map((s) => [s.name, s]));
  assert.deepEqual([...byName.keys()].sort(), ["calc.inner", "feed.count", "feed.relay"]);
  assert.equal(byName.get("feed.count")!.span_id, serverSpan);
  assert.equal(byName.get("calc.inner")!.parent_id, byName.get("feed.relay")!.span_id);
  assert.equal(byName.get("calc.inner")!.span_id, hex(inner.meta.trace!.parentId));
  assert.ok(spans.every((s) => s.error === undefined));
  await p.close();
});

test("a cancelled call's server span records cancelled", T, async () => {
  const methods = new Methods().add("calc.wait", (_req, ctx) => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason))));
  const { p, peer } = await provider(methods);
  peer.send(F.call(2, "calc.wait", "", { stream: false, meta: { trace: sampled() } }));
  await sleep(20);
  peer.send(F.cancel(2));
  await sleep(20);
  const flushed = p.flushSpans();
  const spans = await exported(peer);
  await flushed;
  assert.deepEqual(
    spans.map((s) => [s.name, s.error]),
    [["calc.wait", "cancelled"]],
  );
  await p.close();
});

test("a client call inside a trace context opens a client span; an explicit trace is sent as is", T, async () => {
  const { c, peer } = await client();
  const ctx: SpanContext = { traceId: newTraceId(), spanId: newSpanId(), flags: 1 };

  // Outside a context: no trace.
  const plain = c.call("calc", "add", Payload.raw("1"));
  let call = await peer.expect("call");
  assert.equal(call.meta.trace, undefined);
  peer.send(F.reply(call.callId, "ok", { stream: false }));
  await plain;

  // Inside: a client span, ended before the caller resumes.
  const failing = runWithTrace(ctx, () => c.call("calc", "add", Payload.raw("1")));
  call = await peer.expect("call");
  const sent = call.meta.trace!;
  assert.deepEqual([hex(sent.traceId), sent.flags], [hex(ctx.traceId), 1]);
  assert.notEqual(hex(sent.parentId), hex(ctx.spanId));
  peer.send(F.error(call.callId, "not_found", "nope"));
  await assert.rejects(failing, (e: unknown) => e instanceof PolycallError && e.code === "not_found");
  assert.equal(c.spanRecorder.buffered, 1);

  // Explicit trace inside a context: sent unchanged, nothing recorded.
  const explicit = runWithTrace(ctx, () => c.call("calc", "add", Payload.raw("1"), { trace: sampled() }));
  call = await peer.expect("call");
  assert.deepEqual([hex(call.meta.trace!.traceId), hex(call.meta.trace!.parentId), call.meta.trace!.flags], [hex(TRACE_ID), hex(PARENT_ID), 1]);
  peer.send(F.reply(call.callId, "ok", { stream: false }));
  await explicit;
  assert.equal(c.spanRecorder.buffered, 1);

  // A server stream inside the context: its span ends with the stream.
  const stream = runWithTrace(ctx, () => c.callServerStream("feed", "count", Payload.raw("2")));
  call = await peer.expect("call");
  const streamParent = hex(call.meta.trace!.parentId);
  peer.send(F.reply(call.callId, "a", { stream: true }), F.message(call.callId, "b"), F.end(call.callId));
  assert.deepEqual(
    (await stream.collect()).map((m) => m.text()),
    ["a", "b"],
  );
  // A client stream: likewise.
  const total = runWithTrace(ctx, () => c.callClientStream("stats", "sum", [Payload.raw("1")]));
  call = await peer.expect("call");
  const clientStreamParent = hex(call.meta.trace!.parentId);
  await peer.expect("end");
  peer.send(F.reply(call.callId, "1", { stream: false }));
  assert.equal((await total).text(), "1");

  const flushed = c.flushSpans();
  const spans = await exported(peer);
  await flushed;
  assert.deepEqual(
    spans.map((s) => [s.name, s.kind, s.parent_id, s.error, s.service]),
    [
      ["calc.add", "client", hex(ctx.spanId), "not_found", "trace-test"],
      ["feed.count", "client", hex(ctx.spanId), undefined, "trace-test"],
      ["stats.sum", "client", hex(ctx.spanId), undefined, "trace-test"],
    ],
  );
  assert.deepEqual(
    spans.map((s) => s.span_id),
    [hex(sent.parentId), streamParent, clientStreamParent],
  );
  await c.close();
});

test("spans leave on their own after flushDelayMs; recording: false stops them; close() flushes", T, async () => {
  const batches: (readonly SpanRecord[])[] = [];
  const { c, peer } = await client({ serviceName: "auto", tracing: { flushDelayMs: 20, onBatch: (b) => batches.push(b) } });
  const ctx: SpanContext = { traceId: newTraceId(), spanId: newSpanId(), flags: 1 };
  const one = async () => {
    const p = runWithTrace(ctx, () => c.call("calc", "add", Payload.raw("1")));
    const call = await peer.expect("call");
    peer.send(F.reply(call.callId, "ok", { stream: false }));
    await p;
  };
  await one();
  const spans = await exported(peer); // no flushSpans(): the timer sent it
  assert.deepEqual(
    spans.map((s) => [s.name, s.service]),
    [["calc.add", "auto"]],
  );
  assert.equal(batches.length, 1);
  await one();
  await exported(peer, false); // the runtime does not record
  await sleep(20);
  assert.equal(c.spanRecorder.recording, false);
  await one();
  assert.equal(c.spanRecorder.buffered, 0);
  assert.deepEqual(await peer.drain(60), []);
  await c.close();

  // A fresh connection: close() sends what is buffered first.
  const { c: c2, peer: peer2 } = await client();
  const p = runWithTrace(ctx, () => c2.call("calc", "add", Payload.raw("1")));
  const call = await peer2.expect("call");
  peer2.send(F.reply(call.callId, "ok", { stream: false }));
  await p;
  const closing = c2.close();
  assert.equal((await exported(peer2)).length, 1);
  await closing;
});

test("the export call is not traced even when flushed from inside a trace context", T, async () => {
  const { c, peer } = await client();
  const ctx: SpanContext = { traceId: newTraceId(), spanId: newSpanId(), flags: 1 };
  const p = runWithTrace(ctx, () => c.call("calc", "add", Payload.raw("1")));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, "ok", { stream: false }));
  await p;
  const flushed = runWithTrace(ctx, () => c.flushSpans());
  assert.equal((await exported(peer)).length, 1); // exported() checks the call has no trace
  await flushed;
  assert.equal(c.spanRecorder.buffered, 0, "the export made no span of its own");
  await c.close();
});

// ------------------------------------------------------------------------ the real runtime

const RUNTIME = process.env["POLYCALL_BIN"] ?? path.join(REPO_ROOT, "target", "debug", process.platform === "win32" ? "polycall.exe" : "polycall");

/** Starts the runtime on a free loopback port; resolves with its endpoint once it listens. */
async function startRuntime(): Promise<{ endpoint: string; child: ChildProcess; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "polycall-ts-trace-"));
  const endpointFile = path.join(dir, "endpoint");
  const child = spawn(RUNTIME, ["run", "--endpoint", "127.0.0.1:0", "--endpoint-file", endpointFile, "--state-dir", path.join(dir, "state")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = fs.existsSync(endpointFile) ? fs.readFileSync(endpointFile, "utf8").trim() : "";
    if (/:\d+$/.test(text)) return { endpoint: text, child, dir };
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill();
      throw new Error(`the runtime did not start (exit ${child.exitCode}):\n${stderr}`);
    }
    await sleep(20);
  }
}

test("through the real runtime: provider spans of a traced call and its nested call", { timeout: 30_000 }, async () => {
  assert.ok(fs.existsSync(RUNTIME), `${RUNTIME} is not built (cargo build, or set POLYCALL_BIN)`);
  const { endpoint, child, dir } = await startRuntime();
  const cleanup: (() => Promise<unknown>)[] = [];
  try {
    const batches: SpanRecord[][] = [];
    let self: Provider | null = null;
    let outerCtx: SpanContext | undefined;
    const methods = new Methods()
      .add("tracee2e.inner", (req) => Payload.raw(req.text().toUpperCase()))
      .add("tracee2e.outer", async (req, ctx) => {
        outerCtx = ctx.trace;
        const reply = await self!.call("tracee2e", "inner", req, { deadlineMs: 5000 });
        return Payload.raw(`outer(${reply.text()})`);
      });
    const p = await Provider.connect(endpoint, methods, { serviceName: "trace-e2e", tracing: { flushDelayMs: 60_000, onBatch: (b) => batches.push([...b]) } });
    self = p;
    cleanup.push(() => p.close());
    const c = await Client.connect(endpoint, { serviceName: "trace-e2e-client" });
    cleanup.push(() => c.close());

    const reply = await c.call("tracee2e", "outer", Payload.raw("hi"), { deadlineMs: 5000, trace: sampled() });
    assert.equal(reply.text(), "outer(HI)");
    assert.equal(c.spanRecorder.buffered, 0, "a call with an explicit trace records no client span");
    assert.ok(outerCtx !== undefined && isSampled(outerCtx.flags));

    await p.flushSpans();
    assert.equal(batches.length, 1);
    const spans = batches[0]!;
    const byName = (name: string, kind: string) => spans.find((s) => s.name === name && s.kind === kind)!;
    const outer = byName("tracee2e.outer", "server");
    const call = byName("tracee2e.inner", "client");
    const inner = byName("tracee2e.inner", "server");
    assert.equal(spans.length, 3);
    assert.ok(spans.every((s) => s.trace_id === hex(TRACE_ID) && s.service === "trace-e2e" && s.error === undefined));
    assert.equal(outer.span_id, toHex(outerCtx.spanId));
    // The runtime's own span sits between the caller and each provider span.
    assert.match(outer.parent_id!, /^[0-9a-f]{16}$/);
    assert.notEqual(outer.parent_id, hex(PARENT_ID));
    assert.equal(call.parent_id, outer.span_id);
    assert.notEqual(inner.parent_id, call.span_id);
    assert.deepEqual(outer.attributes, ATTRS("tracee2e", "outer"));
    assert.ok(outer.start_unix_nanos <= call.start_unix_nanos && call.start_unix_nanos <= inner.start_unix_nanos);
    assert.ok(inner.duration_nanos <= call.duration_nanos && call.duration_nanos <= outer.duration_nanos);
    // Started without --otlp, the runtime took the batch and said it records nothing.
    assert.equal(p.spanRecorder.recording, false);
  } finally {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
    child.kill();
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once("exit", r)));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
