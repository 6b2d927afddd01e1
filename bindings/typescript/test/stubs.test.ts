/**
 * Type descriptors of generated stubs (JSON conversion and its checks), and the streaming
 * helpers (`serverStream`, `clientStream`, `bidiStream`, `serveServerStream`,
 * `serveClientStream`, `serveBidiStream`) through the generated conformance client and
 * provider, against a scripted peer. Every test is bounded in time.
 */

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Client } from "../src/client.js";
import { Payload } from "../src/payload.js";
import { type CallContext, Methods, Provider } from "../src/provider.js";
import { PolycallError, codeName, codeNumber, isCode } from "../src/status.js";
import * as s from "../src/stubs.js";
import {
  AddInputType,
  type AddInput,
  type AddOutput,
  ConformanceClient,
  ConformanceProvider,
  type CountInput,
  type Counted,
  type Empty,
  type Term as NumberMessage,
  SERVICE,
  type Total,
} from "../generated/conformance.js";
import { F, type ScriptConn, ScriptServer, text } from "./script.js";

interface Inner {
  photo: Uint8Array | null;
}
interface Outer {
  itemId: string;
  tags: string[];
  inner?: Inner | null;
}
const InnerType = s.message<Inner>("Inner", () => [["photo", "photo", s.optional(s.BYTES), true]]);
const OuterType = s.message<Outer>("Outer", () => [
  ["item_id", "itemId", s.STRING, false],
  ["tags", "tags", s.listOf(s.STRING), false],
  ["inner", "inner", s.optional(InnerType), true],
]);

test("messages map JSON keys to properties, bytes to base64, absent optionals to null", () => {
  const v: Outer = { itemId: "w", tags: ["a"], inner: { photo: Uint8Array.of(1, 2, 3) } };
  const j = OuterType.toJson(v, "request");
  assert.deepEqual(j, { item_id: "w", tags: ["a"], inner: { photo: "AQID" } });
  assert.deepEqual(OuterType.fromJson(j, "reply"), v);
  assert.deepEqual(OuterType.fromJson({ item_id: "w", tags: [], extra: 1 }, "reply"), { itemId: "w", tags: [], inner: null });
});

test("values that do not fit their type are refused with the path", () => {
  const bad = (f: () => unknown, path: string) =>
    assert.throws(f, (e: unknown) => e instanceof PolycallError && e.code === "invalid_input" && e.detail.startsWith(path));
  bad(() => OuterType.fromJson({ tags: [] }, "reply"), "reply.item_id");
  bad(() => OuterType.fromJson({ item_id: 1, tags: [] }, "reply"), "reply.item_id");
  bad(() => OuterType.fromJson({ item_id: "x", tags: [1] }, "reply"), "reply.tags[0]");
  bad(() => OuterType.fromJson({ item_id: "x", tags: [], inner: { photo: "not base64!" } }, "reply"), "reply.inner.photo");
  bad(() => s.INT.fromJson(1.5, "n"), "n");
  bad(() => OuterType.fromJson([], "reply"), "reply");
});

test("the generated conformance stubs check their messages", () => {
  assert.equal(SERVICE, "conformance");
  assert.deepEqual(AddInputType.toJson({ a: 2, b: 40 }, "request"), { a: 2, b: 40 });
  assert.throws(() => AddInputType.fromJson({ a: 2 }, "request"), PolycallError);
  assert.deepEqual(s.decode(AddInputType, Payload.json({ a: 1, b: 2 }), "request"), { a: 1, b: 2 });
  assert.equal(s.encode(s.RAW, Uint8Array.of(9), "request").contentType, "raw");
});

test("status codes have the protocol's numbers and names", () => {
  assert.equal(codeNumber("deadline_exceeded"), 4);
  assert.equal(codeNumber("failed_precondition"), 16);
  assert.equal(codeName(13), "unknown_method");
  assert.equal(codeName(999), "unknown");
  assert.equal(isCode("busy"), true);
  assert.equal(isCode("nope"), false);
  const e = PolycallError.fromWire(999, "from the future");
  assert.equal(e.code, "unknown");
  assert.equal(e.codeNumber, 999);
});

// ------------------------------------------------------------------------ streaming helpers

/** Every streaming test is bounded in time. */
const T = { timeout: 15_000 };

const servers: ScriptServer[] = [];
after(() => {
  for (const x of servers) x.close();
});

async function scripted(): Promise<ScriptServer> {
  const x = await ScriptServer.listen();
  servers.push(x);
  return x;
}

/** The generated client of service "calc" on a connection to a fresh scripted peer. */
async function calcClient(): Promise<{ c: Client; calc: ConformanceClient; peer: ScriptConn }> {
  const x = await scripted();
  const [c, peer] = await Promise.all([Client.connect(x.endpoint), x.accept()]);
  return { c, calc: new ConformanceClient(c, "calc"), peer };
}

/** A provider serving `impl` as service "calc", connected to a fresh scripted peer that accepted its REGISTER. */
async function calcProvider(impl: ConformanceProvider) {
  const x = await scripted();
  const pending = Provider.connect(x.endpoint, impl.register(new Methods(), "calc"));
  const peer = await x.accept();
  const register = await peer.expect("register");
  peer.send(F.reply(register.callId, "", { stream: false }));
  return { p: await pending, peer, register };
}

const code = (name: Parameters<typeof codeNumber>[0]) => (e: unknown) => e instanceof PolycallError && e.code === name;
const json = (f: Parameters<typeof text>[0]) => JSON.parse(text(f)) as unknown;
const enc = new TextEncoder();

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test("serverStream sends the typed request and decodes each reply until END", T, async () => {
  const { c, calc, peer } = await calcClient();
  const replies = collect(calc.count({ n: 3 }, { deadlineMs: 5000, priority: "high" }));
  const call = await peer.expect("call");
  assert.deepEqual([call.methodName, call.stream, call.contentType], ["calc.count", false, "json"]);
  assert.deepEqual(json(call), { n: 3, fail_after: null });
  assert.equal(call.meta.priority, "high");
  assert.ok(!call.meta.idempotent);
  assert.ok(call.meta.timeoutUs !== undefined && call.meta.timeoutUs > 4_000_000n);
  peer.send(
    F.reply(call.callId, Payload.json({ i: 0 }), { stream: true }),
    F.message(call.callId, Payload.json({ i: 1 })),
    F.message(call.callId, Payload.json({ i: 2, extra: "ignored" })),
    F.end(call.callId),
  );
  assert.deepEqual(await replies, [{ i: 0 }, { i: 1 }, { i: 2 }]);
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("serverStream: the callee's error comes after the replies before it", T, async () => {
  const { c, calc, peer } = await calcClient();
  const got: Counted[] = [];
  const done = assert.rejects(
    (async () => {
      for await (const x of calc.count({ n: 10, failAfter: 2 })) got.push(x);
    })(),
    (e: unknown) => code("failed_precondition")(e) && (e as PolycallError).detail === "enough",
  );
  const call = await peer.expect("call");
  assert.deepEqual(json(call), { n: 10, fail_after: 2 });
  peer.send(
    F.reply(call.callId, Payload.json({ i: 0 }), { stream: true }),
    F.message(call.callId, Payload.json({ i: 1 })),
    F.error(call.callId, "failed_precondition", "enough"),
  );
  await done;
  assert.deepEqual(got, [{ i: 0 }, { i: 1 }]);
  await c.close();
});

test("serverStream: a request that does not fit is refused unsent; a reply that does not fit is malformed and cancels", T, async () => {
  const { c, calc, peer } = await calcClient();
  const bad = calc.count({ n: "3" } as unknown as CountInput);
  await assert.rejects(bad.next(), (e: unknown) => code("invalid_input")(e) && /request\.n/.test((e as PolycallError).detail));
  assert.equal((await bad.next()).done, true);
  await peer.drain(30);
  assert.equal(c.inFlight, 0, "nothing was sent");
  const replies = collect(calc.count({ n: 2 }));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, Payload.json({ i: 0 }), { stream: true }), F.message(call.callId, Payload.json({ i: "one" })));
  await assert.rejects(replies, (e: unknown) => code("malformed")(e) && /reply\[1\]\.i/.test((e as PolycallError).detail));
  assert.equal((await peer.expect("cancel")).callId, call.callId);
  await c.close();
});

test("serverStream: return() before reading cancels the call at once", T, async () => {
  const { c, calc, peer } = await calcClient();
  const replies = calc.count({ n: 1_000_000 });
  const call = await peer.expect("call");
  await replies.return!();
  assert.equal((await peer.expect("cancel")).callId, call.callId);
  assert.equal((await replies.next()).done, true);
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("clientStream sends each typed request as it comes and decodes the one reply", T, async () => {
  const { c, calc, peer } = await calcClient();
  async function* numbers(): AsyncIterable<NumberMessage> {
    for (const n of [1, 2, 3]) yield { n };
  }
  const total = calc.total(numbers(), { deadlineMs: 5000 });
  const call = await peer.expect("call");
  assert.deepEqual([call.methodName, call.stream, call.empty, call.contentType], ["calc.total", true, false, "json"]);
  assert.deepEqual(json(call), { n: 1 });
  for (const n of [2, 3]) {
    const d = await peer.expect("data");
    assert.equal(d.first?.contentType, "json");
    assert.deepEqual(json(d), { n });
  }
  await peer.expect("end");
  peer.send(F.reply(call.callId, Payload.json({ sum: 6 }), { stream: false }));
  assert.deepEqual(await total, { sum: 6 });
  // A plain array works too; an empty one opens EMPTY, then END.
  const none = calc.total([]);
  const call2 = await peer.expect("call");
  assert.equal(call2.empty, true);
  await peer.expect("end");
  peer.send(F.reply(call2.callId, Payload.json({ sum: 0 }), { stream: false }));
  assert.deepEqual(await none, { sum: 0 });
  await c.close();
});

test("clientStream: a request that does not fit cancels the call with invalid_input; a reply that does not fit is malformed", T, async () => {
  const { c, calc, peer } = await calcClient();
  let stopped = false;
  function* numbers(): Iterable<NumberMessage> {
    try {
      yield { n: 1 };
      yield { n: "two" } as unknown as NumberMessage;
      yield { n: 3 };
    } finally {
      stopped = true;
    }
  }
  const failed = assert.rejects(calc.total(numbers()), (e: unknown) => code("invalid_input")(e) && /request\[1\]\.n/.test((e as PolycallError).detail));
  const call = await peer.expect("call");
  assert.deepEqual(json(call), { n: 1 });
  assert.equal((await peer.expect("cancel")).callId, call.callId);
  await failed;
  assert.ok(stopped, "the requests' producer was stopped");
  const total = calc.total([{ n: 1 }]);
  const call2 = await peer.expect("call");
  await peer.expect("end");
  peer.send(F.reply(call2.callId, Payload.json({ total: 1 }), { stream: false }));
  await assert.rejects(total, (e: unknown) => code("malformed")(e) && /reply\.sum/.test((e as PolycallError).detail));
  await c.close();
});

test("bidiStream sends raw requests while raw replies arrive; return() cancels", T, async () => {
  const { c, calc, peer } = await calcClient();
  const big = new Uint8Array(100_000).map((_, i) => i % 251);
  const replies = calc.relay([enc.encode("hi"), big], { deadlineMs: 5000 });
  const call = await peer.expect("call");
  assert.deepEqual([call.methodName, call.stream, call.contentType, text(call)], ["calc.relay", true, "raw", "hi"]);
  peer.send(F.reply(call.callId, "hi", { stream: true }));
  assert.equal(new TextDecoder().decode((await replies.next()).value), "hi");
  let got = 0;
  while (got < big.length) {
    const d = await peer.expect("data");
    got += d.payload.length;
  }
  await peer.expect("end");
  peer.send(F.message(call.callId, big), F.end(call.callId));
  assert.deepEqual((await replies.next()).value, big);
  assert.equal((await replies.next()).done, true);
  // Leaving early cancels the call; a request that is not bytes fails it.
  const open = calc.relay([enc.encode("x")]);
  const call2 = await peer.expect("call");
  await peer.expect("end");
  await open.return!();
  assert.equal((await peer.expect("cancel")).callId, call2.callId);
  await assert.rejects(collect(calc.relay(["text" as unknown as Uint8Array])), code("invalid_input"));
  assert.equal(c.inFlight, 0);
  await c.close();
});

/** The conformance interface, implemented for the provider tests (misfits on purpose where noted). */
class Calc extends ConformanceProvider {
  stopped = false;

  echo(request: Uint8Array): Uint8Array {
    return request;
  }

  add(request: AddInput): AddOutput {
    return { sum: request.a + request.b };
  }

  fail(): Empty {
    throw new PolycallError("invalid_input", "fail");
  }

  sleep(): Empty {
    return {};
  }

  exitNow(): Uint8Array {
    throw new PolycallError("unsupported", "not here");
  }

  async *count(request: CountInput, ctx: CallContext): AsyncIterable<Counted> {
    try {
      for (let i = 0; i < request.n && !ctx.signal.aborted; i++) {
        if (i === request.failAfter) throw new PolycallError("failed_precondition", `failed after ${i}`);
        // Reply #100 does not fit its type, on purpose.
        yield i < 100 ? { i } : ({ i: String(i) } as unknown as Counted);
      }
    } finally {
      this.stopped = true;
    }
  }

  async total(requests: AsyncIterable<NumberMessage>): Promise<Total> {
    let sum = 0;
    for await (const r of requests) sum += r.n;
    // A negative sum answers a reply that does not fit, on purpose.
    return sum >= 0 ? { sum } : ({ sum: "negative" } as unknown as Total);
  }

  relay(requests: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
    return (async function* () {
      for await (const r of requests) yield r;
    })();
  }
}

test("the generated provider registers count, total and relay with their stream flags and hints", T, async () => {
  const { p, register } = await calcProvider(new Calc());
  const byName = Object.fromEntries(register.methods.map((m) => [m.name, m]));
  assert.deepEqual(
    register.methods.map((m) => m.name),
    ["echo", "add", "fail", "sleep", "exit_now", "count", "total", "relay"].map((m) => `calc.${m}`),
  );
  const flags = (n: string) => [byName[n]!.idempotent, byName[n]!.requestStream ?? false, byName[n]!.replyStream ?? false];
  assert.deepEqual(flags("calc.count"), [false, false, true]);
  assert.deepEqual(flags("calc.total"), [false, true, false]);
  assert.deepEqual(flags("calc.relay"), [false, true, true]);
  assert.deepEqual(flags("calc.add"), [true, false, false]);
  assert.equal(byName["calc.count"]!.input, '{"n": int, "fail_after": optional<int>}');
  assert.equal(byName["calc.relay"]!.output, "bytes");
  await p.close();
});

test("serveServerStream answers typed replies then END, or the handler's error after them", T, async () => {
  const { p, peer } = await calcProvider(new Calc());
  peer.send(F.call(2, "calc.count", Payload.json({ n: 3 }), { stream: false }));
  const first = await peer.expect("reply");
  assert.deepEqual([first.stream, first.contentType, json(first)], [true, "json", { i: 0 }]);
  assert.deepEqual([json(await peer.expect("data")), json(await peer.expect("data"))], [{ i: 1 }, { i: 2 }]);
  await peer.expect("end");
  peer.send(F.call(4, "calc.count", Payload.json({ n: 10, fail_after: 1 }), { stream: false }));
  assert.deepEqual(json(await peer.expect("reply")), { i: 0 });
  const err = await peer.expect("error");
  assert.deepEqual([err.callId, err.code, err.message], [4, codeNumber("failed_precondition"), "failed after 1"]);
  assert.equal(p.serving, 0);
  await p.close();
});

test("serveServerStream: a request that does not fit is invalid_input, a reply that does not fit internal; CANCEL stops the handler", T, async () => {
  const impl = new Calc();
  const { p, peer } = await calcProvider(impl);
  peer.send(F.call(2, "calc.count", Payload.json({ n: "three" }), { stream: false }));
  const e1 = await peer.expect("error");
  assert.deepEqual([e1.callId, e1.code], [2, codeNumber("invalid_input")]);
  assert.match(e1.message, /request\.n/);
  peer.send(F.call(4, "calc.count", Payload.json({ n: 101 }), { stream: false }));
  assert.deepEqual(json(await peer.expect("reply")), { i: 0 });
  for (let i = 1; i < 100; i++) assert.deepEqual(json(await peer.expect("data")), { i });
  const e2 = await peer.expect("error");
  assert.deepEqual([e2.callId, e2.code], [4, codeNumber("internal")]);
  assert.match(e2.message, /reply\[100\]\.i/);
  impl.stopped = false;
  peer.send(F.call(6, "calc.count", Payload.json({ n: 1_000_000 }), { stream: false }));
  await peer.expect("reply");
  peer.send(F.cancel(6));
  await peer.until(() => impl.stopped, "the handler's generator to be stopped");
  await peer.until(() => p.serving === 0, "the call to end");
  await p.close();
});

test("serveClientStream reads typed requests and answers the typed reply; misfits are invalid_input and internal", T, async () => {
  const { p, peer } = await calcProvider(new Calc());
  peer.send(F.call(2, "calc.total", null), F.message(2, Payload.json({ n: 40 })), F.message(2, Payload.json({ n: 2 })), F.end(2));
  const r = await peer.expect("reply");
  assert.deepEqual([r.stream, r.contentType, json(r)], [false, "json", { sum: 42 }]);
  // A unary request is a stream of one.
  peer.send(F.call(4, "calc.total", Payload.json({ n: 5 }), { stream: false }));
  assert.deepEqual(json(await peer.expect("reply")), { sum: 5 });
  peer.send(F.call(6, "calc.total", Payload.json({ n: 1 }), { stream: true }), F.message(6, Payload.json({ n: "x" })));
  const e1 = await peer.expect("error");
  assert.deepEqual([e1.callId, e1.code], [6, codeNumber("invalid_input")]);
  assert.match(e1.message, /request\[1\]\.n/);
  peer.send(F.call(8, "calc.total", Payload.json({ n: -1 }), { stream: true }), F.end(8));
  const e2 = await peer.expect("error");
  assert.deepEqual([e2.callId, e2.code], [8, codeNumber("internal")]);
  await peer.until(() => p.serving === 0, "the calls to end");
  await p.close();
});

test("serveBidiStream relays raw requests as they arrive, END ends it", T, async () => {
  const { p, peer } = await calcProvider(new Calc());
  peer.send(F.call(2, "calc.relay", "hi", { stream: true }));
  const r = await peer.expect("reply");
  assert.deepEqual([r.stream, r.contentType, text(r)], [true, "raw", "hi"]);
  peer.send(F.message(2, Uint8Array.of(0, 255)));
  assert.deepEqual([...(await peer.expect("data")).payload], [0, 255]);
  peer.send(F.end(2));
  await peer.expect("end");
  assert.equal(p.serving, 0);
  await p.close();
});
