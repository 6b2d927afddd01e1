/**
 * Streaming calls (docs/protocol.md §3, §6.1) against a scripted peer that speaks raw
 * frames: server, client and bidirectional streams as caller and as provider, EMPTY
 * openings, zero-message streams, END / ERROR / CANCEL, stream windows both ways, and
 * malformed streaming input.
 */

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Client } from "../src/client.js";
import { Connection, ProtoError, defaultConnectionConfig } from "../src/connection.js";
import { FrameError } from "../src/errors.js";
import { type Frame, decodeFrame, encodeFrame } from "../src/frame.js";
import { defaultSettings, DEFAULT_LIMITS, FEATURES } from "../src/handshake.js";
import { Payload } from "../src/payload.js";
import { Methods, Provider } from "../src/provider.js";
import { PolycallError } from "../src/status.js";
import { MessageStream } from "../src/stream.js";
import { F, type ScriptConn, type ScriptOptions, ScriptServer, text } from "./script.js";

/** Every test is bounded in time. */
const T = { timeout: 15_000 };

const servers: ScriptServer[] = [];
after(() => {
  for (const s of servers) s.close();
});

async function scripted(opts: ScriptOptions = {}): Promise<ScriptServer> {
  const s = await ScriptServer.listen(opts);
  servers.push(s);
  return s;
}

/** A client connected to a fresh scripted peer. */
async function client(
  opts: ScriptOptions = {},
  settings: Parameters<typeof defaultSettings>[0] = {},
): Promise<{ c: Client; peer: ScriptConn }> {
  const s = await scripted(opts);
  const [c, peer] = await Promise.all([Client.connect(s.endpoint, { settings }), s.accept()]);
  return { c, peer };
}

/** A provider of `methods` connected to a fresh scripted peer (which accepts its REGISTER). */
async function provider(
  methods: Methods,
  opts: ScriptOptions = {},
  settings: Parameters<typeof defaultSettings>[0] = {},
): Promise<{ p: Provider; peer: ScriptConn; register: Extract<Frame, { type: "register" }> }> {
  const s = await scripted(opts);
  const pending = Provider.connect(s.endpoint, methods, { settings });
  const peer = await s.accept();
  const register = await peer.expect("register");
  peer.send(F.reply(register.callId, "", { stream: false }));
  const p = await pending;
  return { p, peer, register };
}

const isCode = (code: string) => (e: unknown) => e instanceof PolycallError && e.code === code;
const texts = (ps: Payload[]) => ps.map((p) => p.text());
const enc = new TextEncoder();

/** An async iterable fed by the test. */
class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private closed = false;
  private waiter: (() => void) | null = null;
  pulled = 0;

  push(v: T): void {
    this.items.push(v);
    this.waiter?.();
  }

  close(): void {
    this.closed = true;
    this.waiter?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      while (this.items.length === 0 && !this.closed) await new Promise<void>((r) => (this.waiter = r));
      this.waiter = null;
      if (this.items.length === 0) return;
      this.pulled++;
      yield this.items.shift()!;
    }
  }
}

// ------------------------------------------------------------------------ frames

test("streaming frames: EMPTY openings, STREAM_CREDIT and REGISTER's stream flags round-trip", T, () => {
  const frames: Frame[] = [
    F.call(3, "feed.watch", null, { meta: { timeoutUs: 5000n } }),
    F.reply(3, null),
    F.reply(5, "x", { stream: true }),
    F.message(3, "next"),
    F.streamCredit(7, 65536),
    {
      type: "register",
      callId: 9,
      methods: [
        { name: "a.unary", idempotent: true, requestStream: false, replyStream: false, summary: "", input: "", output: "" },
        { name: "a.bidi", idempotent: false, requestStream: true, replyStream: true, summary: "s", input: "i", output: "o" },
      ],
    },
  ];
  for (const f of frames) {
    const bytes = encodeFrame(f, false);
    const back = decodeFrame(bytes, 1 << 20, false);
    assert.ok(back !== null);
    assert.deepEqual(back.frame, f);
    assert.deepEqual(Buffer.from(encodeFrame(back.frame, false)), Buffer.from(bytes));
  }
  // The flag byte: CALL(STREAM|NAMED|EMPTY), REPLY(STREAM|EMPTY); the type byte of STREAM_CREDIT.
  assert.equal(encodeFrame(frames[0]!, false)[5], 0x02 | 0x04 | 0x08);
  assert.equal(encodeFrame(frames[1]!, false)[5], 0x02 | 0x08);
  assert.equal(encodeFrame(frames[4]!, false)[4], 0x24);
  assert.equal(encodeFrame(frames[5]!, false)[12 + 2 + 1 + "a.unary".length], 1);
});

/** `f` encoded, with header flag bits `or` added. */
function withFlags(f: Frame, or: number): Uint8Array {
  const b = encodeFrame(f, false);
  b[5] |= or;
  return b;
}

const MALFORMED: { name: string; bytes: () => Uint8Array; kind: string; reason: RegExp }[] = [
  {
    name: "EMPTY with MORE",
    bytes: () => encodeFrame({ ...(F.reply(3, null) as Extract<Frame, { type: "reply" }>), more: true, messageLen: 9, payload: Uint8Array.of(1) }, false),
    kind: "malformed",
    reason: /EMPTY with MORE/,
  },
  {
    name: "EMPTY without STREAM",
    bytes: () => encodeFrame({ ...(F.call(3, "a.b", null) as Extract<Frame, { type: "call" }>), stream: false }, false),
    kind: "malformed",
    reason: /EMPTY without STREAM/,
  },
  { name: "EMPTY with a fragment", bytes: () => withFlags(F.reply(3, "x", { stream: true }), 0x08), kind: "malformed", reason: /EMPTY frame carries a message/ },
  {
    name: "EMPTY with a content type",
    bytes: () => encodeFrame({ ...(F.reply(3, null) as Extract<Frame, { type: "reply" }>), contentType: "json" }, false),
    kind: "malformed",
    reason: /EMPTY frame carries a message/,
  },
  { name: "STREAM_CREDIT with call id 0", bytes: () => encodeFrame(F.streamCredit(0, 10), false), kind: "bad_call_id", reason: /STREAM_CREDIT frame with call id 0/ },
  { name: "STREAM_CREDIT with increment 0", bytes: () => encodeFrame(F.streamCredit(3, 0), false), kind: "malformed", reason: /stream credit increment of 0/ },
  {
    name: "STREAM_CREDIT without its increment",
    bytes: () => {
      const b = encodeFrame(F.streamCredit(3, 10), false).slice(0, 12);
      b[0] = 0; // a body of 0 bytes
      return b;
    },
    kind: "malformed",
    reason: /increment is missing/,
  },
];

test("malformed streaming frames fail to decode with a typed FrameError", T, () => {
  for (const m of MALFORMED) {
    assert.throws(
      () => decodeFrame(m.bytes(), 1 << 20, false),
      (e: unknown) => e instanceof FrameError && e.kind === m.kind && m.reason.test(e.message),
      m.name,
    );
  }
  // REGISTER flag bits above bit 2 are undefined.
  const reg = encodeFrame({ type: "register", callId: 1, methods: [{ name: "a.b", idempotent: false, summary: "", input: "", output: "" }] }, false);
  reg[12 + 2 + 1 + 3] = 8;
  assert.throws(() => decodeFrame(reg, 1 << 20, false), (e: unknown) => e instanceof FrameError && /undefined method flag bits/.test(e.message));
});

// ------------------------------------------------------------------------ sans-IO

test("two connections stream both ways in memory, credit flowing per stream", T, () => {
  const c = new Connection("client", defaultConnectionConfig(defaultSettings({ limits: { ...DEFAULT_LIMITS, initialWindow: 4096 } })));
  const s = new Connection("server", defaultConnectionConfig(defaultSettings({ limits: { ...DEFAULT_LIMITS, initialWindow: 4096 } })));
  const pump = () => {
    for (let i = 0; i < 1000; i++) {
      const x = c.pollTransmit(1 << 20);
      const y = s.pollTransmit(1 << 20);
      if (x.length === 0 && y.length === 0) return;
      for (const b of x) s.feed(b);
      for (const b of y) c.feed(b);
    }
    throw new Error("no quiet");
  };
  const evs = (x: Connection) => {
    const out = [];
    for (let e = x.pollEvent(); e !== undefined; e = x.pollEvent()) out.push(e);
    return out;
  };
  pump();
  evs(c);
  evs(s);
  assert.ok(c.streaming && s.streaming);
  const id = c.openStreamCall("chat", "talk", null);
  for (let i = 0; i < 5; i++) c.sendMessage(id, Payload.raw(new Uint8Array(1024).fill(i)));
  pump();
  // The server's application takes nothing: the window's four messages are held, the fifth waits.
  const got = evs(s);
  assert.equal(got[0]?.type, "streamCall");
  const msgs = got.filter((e) => e.type === "message");
  assert.equal(msgs.length, 4);
  assert.equal(c.streamWindow(id), 0);
  assert.equal(c.streamBacklog(id), 1024);
  for (const m of msgs) if (m.type === "message") s.streamTaken(id, m.wireLen);
  pump();
  const later = evs(s);
  assert.ok(later.some((e) => e.type === "message" && e.payload.bytes[0] === 4));
  assert.equal(c.streamBacklog(id), 0);
  c.sendEnd(id);
  s.sendReplyStream(id, Payload.raw("r1"));
  s.sendMessage(id, Payload.raw("r2"));
  pump();
  assert.ok(evs(s).some((e) => e.type === "end"));
  s.sendEnd(id);
  pump();
  const replies = evs(c);
  assert.deepEqual(
    replies.map((e) => e.type),
    ["replyStream", "message", "message", "end"],
  );
  assert.equal(c.openCalls, 0);
  assert.equal(s.openCalls, 0);
});

test("the smallest windows (1 KiB) never stall a sender that waits for credit", T, () => {
  const small = { ...DEFAULT_LIMITS, initialWindow: 1024 };
  const c = new Connection("client", defaultConnectionConfig(defaultSettings({ limits: small })));
  const s = new Connection("server", defaultConnectionConfig(defaultSettings({ limits: small })));
  const pump = () => {
    for (let i = 0; i < 1000; i++) {
      const x = c.pollTransmit(1 << 20);
      const y = s.pollTransmit(1 << 20);
      if (x.length === 0 && y.length === 0) return;
      for (const b of x) s.feed(b);
      for (const b of y) c.feed(b);
    }
    throw new Error("no quiet");
  };
  pump();
  const id = c.openStreamCall("blob", "put", Payload.raw(new Uint8Array(200)));
  c.sendMessage(id, Payload.raw(new Uint8Array(1000)));
  c.sendMessage(id, Payload.raw(new Uint8Array(3000)));
  c.sendEnd(id);
  let got = 0;
  let ended = false;
  for (let round = 0; round < 20 && !ended; round++) {
    pump();
    for (let e = s.pollEvent(); e !== undefined; e = s.pollEvent()) {
      if (e.type === "message") {
        got += e.payload.length;
        s.streamTaken(id, e.wireLen);
      }
      if (e.type === "end") ended = true;
    }
  }
  assert.ok(ended, `the stream ended (${got} of 4200 bytes arrived)`);
  assert.equal(got, 4200);
});

// ------------------------------------------------------------------------ caller: server stream

test("server stream: REPLY(STREAM) and DATA FIRST messages, one fragmented, then END", T, async () => {
  const { c, peer } = await client();
  const replies = c.callServerStream("feed", "watch", Payload.json({ n: 3 }), { deadlineMs: 5000 });
  const call = await peer.expect("call");
  assert.equal(call.stream, false);
  assert.equal(call.methodName, "feed.watch");
  assert.deepEqual(JSON.parse(text(call)), { n: 3 });
  peer.send(
    F.reply(call.callId, "a", { stream: true }),
    F.message(call.callId, "bb"),
    { type: "data", callId: call.callId, first: { contentType: "raw", compression: "none" }, more: true, messageLen: 5, payload: enc.encode("ccc") },
    { type: "data", callId: call.callId, first: null, more: false, messageLen: null, payload: enc.encode("cc") },
    F.end(call.callId),
  );
  assert.deepEqual(texts(await replies.collect()), ["a", "bb", "ccccc"]);
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("server stream: REPLY(STREAM, EMPTY) then END is a stream of no messages; EMPTY then a message", T, async () => {
  const { c, peer } = await client();
  const none = c.callServerStream("feed", "none", Payload.raw(""));
  const one = c.callServerStream("feed", "one", Payload.raw(""));
  const a = await peer.expect("call");
  const b = await peer.expect("call");
  peer.send(F.reply(a.callId, null), F.end(a.callId), F.reply(b.callId, null));
  assert.deepEqual(await none.collect(), []);
  await sleep(20);
  peer.send(F.message(b.callId, "late"), F.end(b.callId));
  assert.deepEqual(texts(await one.collect()), ["late"]);
  await c.close();
});

test("server stream: an ERROR ends the stream with a typed error after the messages before it", T, async () => {
  const { c, peer } = await client();
  const replies = c.callServerStream("feed", "watch", Payload.raw(""));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, "a", { stream: true }), F.message(call.callId, "b"), F.error(call.callId, "not_found", "feed is gone"));
  const seen: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const p of replies) seen.push(p.text());
    })(),
    (e: unknown) => isCode("not_found")(e) && (e as PolycallError).detail === "feed is gone",
  );
  assert.deepEqual(seen, ["a", "b"]);
  await c.close();
});

test("server stream: leaving the loop early sends CANCEL; later frames of the call are ignored", T, async () => {
  const { c, peer } = await client();
  const replies = c.callServerStream("feed", "watch", Payload.raw(""));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, "a", { stream: true }), F.message(call.callId, "b"));
  for await (const p of replies) {
    assert.equal(p.text(), "a");
    break;
  }
  await peer.expect("cancel");
  peer.send(F.message(call.callId, "c"), F.end(call.callId), F.streamCredit(call.callId, 100));
  // The connection goes on.
  const echo = c.call("debug", "echo", Payload.raw("x"));
  const u = await peer.expect("call");
  peer.send(F.reply(u.callId, "x", { stream: false }));
  assert.equal((await echo).text(), "x");
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("server stream: the deadline covers the whole stream; an abort signal cancels", T, async () => {
  const { c, peer } = await client();
  const t0 = performance.now();
  const replies = c.callServerStream("feed", "slow", Payload.raw(""), { deadlineMs: 150 });
  const call = await peer.expect("call");
  assert.ok(call.meta.timeoutUs !== undefined && call.meta.timeoutUs <= 150_000n);
  peer.send(F.reply(call.callId, "first", { stream: true }));
  const it = replies[Symbol.asyncIterator]();
  assert.equal((await it.next()).value?.text(), "first");
  await assert.rejects(it.next(), isCode("deadline_exceeded"));
  assert.ok(performance.now() - t0 < 1500);
  await peer.expect("cancel");

  const ac = new AbortController();
  const aborted = c.callServerStream("feed", "slow", Payload.raw(""), { signal: ac.signal });
  const call2 = await peer.expect("call");
  ac.abort();
  await assert.rejects(aborted.next(), isCode("cancelled"));
  assert.equal((await peer.expect("cancel")).callId, call2.callId);
  await c.close();
});

test("a unary call answered with a stream fails as unsupported and is cancelled", T, async () => {
  const { c, peer } = await client();
  const p = c.call("feed", "watch", Payload.raw(""));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, null));
  await assert.rejects(p, isCode("unsupported"));
  await peer.expect("cancel");
  await c.close();
});

// ------------------------------------------------------------------------ caller: client stream

test("client stream: CALL(STREAM) with the first request, DATA FIRST per further one, END; one reply", T, async () => {
  const { c, peer } = await client();
  async function* numbers() {
    yield Payload.json(1);
    yield Payload.json(2);
    yield enc.encode("3");
  }
  const sum = c.callClientStream("calc", "sum", numbers(), { deadlineMs: 5000, idempotent: true });
  const call = await peer.expect("call");
  assert.equal(call.stream, true);
  assert.equal(call.empty, false);
  assert.equal(call.contentType, "json");
  assert.equal(text(call), "1");
  assert.equal(call.meta.idempotent, true);
  const d1 = await peer.expect("data");
  assert.deepEqual([d1.first?.contentType, text(d1)], ["json", "2"]);
  const d2 = await peer.expect("data");
  assert.deepEqual([d2.first?.contentType, text(d2)], ["raw", "3"]);
  await peer.expect("end");
  peer.send(F.reply(call.callId, Payload.json(6), { stream: false }));
  assert.equal((await sum).json(), 6);
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("client stream: an empty iterable is CALL(STREAM, EMPTY) then END; a slow one opens EMPTY", T, async () => {
  const { c, peer } = await client();
  const none = c.callClientStream("calc", "sum", []);
  const call = await peer.expect("call");
  assert.equal(call.stream, true);
  assert.equal(call.empty, true);
  assert.equal(call.payload.length, 0);
  await peer.expect("end");
  peer.send(F.reply(call.callId, "0", { stream: false }));
  assert.equal((await none).text(), "0");

  async function* slow() {
    await sleep(60);
    yield enc.encode("late");
  }
  const late = c.callClientStream("calc", "sum", slow());
  const call2 = await peer.expect("call");
  assert.equal(call2.empty, true, "nothing was ready: the stream opens without a message");
  const d = await peer.expect("data");
  assert.ok(d.first !== null);
  assert.equal(text(d), "late");
  await peer.expect("end");
  peer.send(F.reply(call2.callId, "done", { stream: false }));
  assert.equal((await late).text(), "done");
  await c.close();
});

test("client stream: a failing producer cancels the call; an early ERROR stops the producer", T, async () => {
  const { c, peer } = await client();
  async function* broken() {
    yield enc.encode("ok");
    throw new Error("disk on fire");
  }
  const p = assert.rejects(
    c.callClientStream("calc", "sum", broken()),
    (e: unknown) => isCode("cancelled")(e) && /disk on fire/.test((e as Error).message),
  );
  await peer.expect("call");
  await peer.expect("cancel");
  await p;

  let stopped = false;
  const ch = new Channel<Uint8Array>();
  async function* watched() {
    try {
      yield* ch;
    } finally {
      stopped = true;
    }
  }
  ch.push(enc.encode("a"));
  const q = c.callClientStream("calc", "sum", watched());
  const call = await peer.expect("call");
  peer.send(F.error(call.callId, "invalid_input", "no thanks"));
  await assert.rejects(q, isCode("invalid_input"));
  ch.push(enc.encode("b"));
  await sleep(20);
  assert.ok(stopped, "the producer was stopped");
  assert.ok(peer.idle, "nothing more was sent on the failed call");
  await c.close();
});

// ------------------------------------------------------------------------ caller: bidi

test("bidirectional: requests and replies interleave; END both ways ends the call", T, async () => {
  const { c, peer } = await client();
  const ch = new Channel<Payload>();
  ch.push(Payload.raw("hi"));
  const replies = c.callBidiStream("chat", "talk", ch);
  const it = replies[Symbol.asyncIterator]();
  const call = await peer.expect("call");
  assert.equal(call.stream, true);
  assert.equal(text(call), "hi");
  peer.send(F.reply(call.callId, "HI", { stream: true }));
  assert.equal((await it.next()).value?.text(), "HI");
  ch.push(Payload.raw("yo"));
  assert.equal(text(await peer.expect("data")), "yo");
  peer.send(F.message(call.callId, "YO"));
  assert.equal((await it.next()).value?.text(), "YO");
  ch.close();
  await peer.expect("end");
  peer.send(F.message(call.callId, "bye"), F.end(call.callId));
  assert.equal((await it.next()).value?.text(), "bye");
  assert.equal((await it.next()).done, true);
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("bidirectional: breaking out cancels the call and stops pulling requests", T, async () => {
  const { c, peer } = await client();
  const ch = new Channel<Payload>();
  const replies = c.callBidiStream("chat", "talk", ch);
  const call = await peer.expect("call");
  assert.equal(call.empty, true);
  peer.send(F.reply(call.callId, "one", { stream: true }));
  for await (const r of replies) {
    assert.equal(r.text(), "one");
    break;
  }
  await peer.expect("cancel");
  ch.push(Payload.raw("after"));
  ch.close();
  await sleep(30);
  assert.ok(ch.pulled <= 1, "a pull in progress may complete; none follows");
  assert.ok(peer.idle, "nothing is sent on the cancelled call");
  await c.close();
});

test("streaming calls need the streaming feature: refused locally, and a streaming REPLY is a connection error", T, async () => {
  const { c, peer } = await client({ features: 0n });
  assert.equal(c.negotiated.features & FEATURES.streaming, 0n);
  await assert.rejects(c.callServerStream("a", "b", Payload.raw("")).next(), isCode("unsupported"));
  await assert.rejects(c.callClientStream("a", "b", []), isCode("unsupported"));
  await assert.rejects(c.callBidiStream("a", "b", []).next(), isCode("unsupported"));
  const p = c.call("a", "b", Payload.raw(""));
  const call = await peer.expect("call");
  peer.send(F.reply(call.callId, null));
  await assert.rejects(p, isCode("unavailable"));
  const err = await peer.expect("error");
  assert.equal(err.callId, 0);
  assert.match(err.message, /streaming REPLY, but streaming was not negotiated/);
  assert.equal((await c.closed).code, "malformed");
});

// ------------------------------------------------------------------------ caller: flow control

test("stream window as sender: the binding stops after one window and resumes on STREAM_CREDIT", T, async () => {
  const window = 4096;
  const { c, peer } = await client({ limits: { initialWindow: window } });
  let pulled = 0;
  async function* load() {
    for (let i = 0; i < 40; i++) {
      pulled++;
      yield new Uint8Array(1000).fill(i);
    }
  }
  const done = c.callClientStream("blob", "put", load());
  const call = await peer.expect("call");
  await peer.drain(200);
  const sent = peer.payloadBytes.get(call.callId) ?? 0;
  assert.ok(sent <= window, `${sent} stream bytes sent with a stream window of ${window}`);
  assert.ok(sent >= window - 1000, `the window was used (${sent} bytes)`);
  assert.equal(c.negotiated.peerLimits.initialWindow, window);
  assert.ok(pulled < 40 && pulled <= Math.ceil((2 * window) / 1000) + 2, `the producer was pulled ${pulled} times`);
  // Connection credit alone does not move the stream.
  const unary = c.call("debug", "echo", Payload.raw("still flowing"));
  const u = await peer.expect("call");
  peer.send(F.reply(u.callId, "ok", { stream: false }));
  assert.equal((await unary).text(), "ok");
  assert.equal(peer.payloadBytes.get(call.callId), sent);
  // STREAM_CREDIT resumes it.
  peer.send(F.streamCredit(call.callId, 1 << 20));
  await peer.until(() => peer.log.some((f) => f.type === "end" && f.callId === call.callId), "the END of the request stream");
  assert.equal(peer.payloadBytes.get(call.callId), 40 * 1000);
  assert.equal(pulled, 40);
  peer.send(F.reply(call.callId, "stored", { stream: false }));
  assert.equal((await done).text(), "stored");
  await c.close();
});

test("stream window as receiver: STREAM_CREDIT stops while the application does not read, and resumes when it does", T, async () => {
  const window = 16 * 1024;
  const { c, peer } = await client({}, { limits: { ...DEFAULT_LIMITS, initialWindow: window } });
  const replies = c.callServerStream("feed", "watch", Payload.raw(""));
  const call = await peer.expect("call");
  const id = call.callId;
  const kib = (i: number) => new Uint8Array(1024).fill(i);
  // A quarter of the window while nothing is held: credit comes back.
  peer.send(F.reply(id, kib(0), { stream: true }), F.message(id, kib(1)), F.message(id, kib(2)), F.message(id, kib(3)));
  await peer.until(() => peer.streamCredit.get(id) === 4096, "STREAM_CREDIT for the first quarter");
  // Half the window held and unread: no more stream credit, though connection credit flows.
  for (let i = 4; i < 8; i++) peer.send(F.message(id, kib(i)));
  await peer.until(() => peer.creditReceived >= 8 * 1024, "connection CREDIT");
  for (let i = 8; i < 20; i++) peer.send(F.message(id, kib(i))); // the rest of the window: 20 KiB in all
  await sleep(150);
  assert.equal(peer.streamCredit.get(id), 4096, "no STREAM_CREDIT while the reader holds half the window");
  // Other calls go on.
  const unary = c.call("debug", "echo", Payload.raw("x"));
  const u = await peer.expect("call");
  peer.send(F.reply(u.callId, "y", { stream: false }));
  assert.equal((await unary).text(), "y");
  // Reading the stream returns the credit.
  const it = replies[Symbol.asyncIterator]();
  for (let i = 0; i < 20; i++) {
    const r = await it.next();
    assert.equal(r.value?.bytes[0], i);
  }
  await peer.until(() => peer.streamCredit.get(id) === 20 * 1024, "STREAM_CREDIT after reading");
  peer.send(F.end(id));
  assert.equal((await it.next()).done, true);
  await c.close();
});

test("stream bytes over the window are a connection error", T, async () => {
  const window = 4096;
  const { c, peer } = await client({}, { limits: { ...DEFAULT_LIMITS, initialWindow: window } });
  const replies = c.callServerStream("feed", "flood", Payload.raw(""));
  const call = await peer.expect("call");
  // Connection credit comes back for the first 3000 bytes; stream credit does not (held over half the window).
  peer.send(F.reply(call.callId, new Uint8Array(3000), { stream: true }));
  await peer.until(() => peer.creditReceived >= 3000, "connection CREDIT");
  peer.send(F.message(call.callId, new Uint8Array(1097)));
  // (The application does not read meanwhile: reading would return the stream's credit.)
  const err = await peer.expect("error");
  assert.equal(err.callId, 0);
  assert.match(err.message, /stream flow control violated on call 1: 1097 bytes received with 1096 bytes left/);
  const closed = await c.closed;
  assert.equal(closed.code, "malformed");
  assert.match(closed.detail, /stream flow control/);
  await assert.rejects(replies.collect(), isCode("unavailable"));
});

// ------------------------------------------------------------------------ malformed input

test("malformed streaming input is a connection error with a typed, named error", T, async () => {
  for (const m of MALFORMED) {
    const { c, peer } = await client();
    const replies = c.callServerStream("feed", "watch", Payload.raw(""));
    await peer.expect("call");
    peer.send(m.bytes());
    await assert.rejects(replies.next(), isCode("unavailable"), m.name);
    const closed = await c.closed;
    assert.equal(closed.code, "malformed", m.name);
    assert.match(closed.detail, m.reason, m.name);
    const err = await peer.expect("error");
    assert.equal(err.callId, 0);
    assert.match(err.message, m.reason);
  }
});

test("STREAM_CREDIT: ignored for an ended call or a direction that does not stream, a connection error for a call never opened", T, async () => {
  {
    const { c, peer } = await client();
    const p = c.callClientStream("calc", "sum", [enc.encode("1")]);
    const call = await peer.expect("call");
    await peer.expect("end");
    peer.send(F.streamCredit(call.callId, 10), F.reply(call.callId, "1", { stream: false }));
    assert.equal((await p).text(), "1");
    peer.send(F.streamCredit(call.callId, 10));
    const echo = c.call("debug", "echo", Payload.raw("x"));
    const u = await peer.expect("call");
    peer.send(F.streamCredit(u.callId, 10), F.reply(u.callId, "x", { stream: false }));
    assert.equal((await echo).text(), "x");
    assert.ok(!c.isClosed);
    await c.close();
  }
  const { c, peer } = await client();
  void c.call("debug", "echo", Payload.raw("x")).catch(() => undefined);
  await peer.expect("call");
  peer.send(F.streamCredit(99, 10));
  const closed = await c.closed;
  assert.equal(closed.code, "malformed");
  assert.match(closed.detail, /STREAM_CREDIT for call 99, which was never opened/);
});

// ------------------------------------------------------------------------ provider

/** Methods of every kind for the provider tests. */
function streamingMethods(log: string[]): Methods {
  return new Methods()
    .add("calc.echo", (p) => p)
    .addServerStream("feed.count", async function* (req, ctx) {
      const n = req.json<number>();
      for (let i = 0; i < n; i++) {
        if (ctx.signal.aborted) return;
        yield Payload.json(i);
      }
    }, { summary: "counts" })
    .addServerStream("feed.later", async function* () {
      await sleep(60);
      yield enc.encode("late");
    })
    .addServerStream("feed.forever", async function* (_req, ctx) {
      try {
        for (let i = 0; ; i++) {
          yield enc.encode(`tick ${i}`);
          await sleep(10, undefined, { signal: ctx.signal });
        }
      } finally {
        log.push("forever stopped");
      }
    })
    .addServerStream("feed.fail", async function* () {
      yield enc.encode("partial");
      throw new PolycallError("not_found", "ran out");
    })
    .addClientStream("calc.sum", async (requests) => {
      let sum = 0;
      for await (const r of requests) sum += r.json<number>();
      return Payload.json(sum);
    }, { idempotent: true })
    .addBidiStream("chat.upper", async function* (requests) {
      for await (const r of requests) yield Payload.raw(r.text().toUpperCase());
    });
}

test("a provider registers streaming methods with REGISTER flag bits 1 and 2", T, async () => {
  const { p, register } = await provider(streamingMethods([]));
  const flags = Object.fromEntries(register.methods.map((m) => [m.name, [m.idempotent, m.requestStream, m.replyStream]]));
  assert.deepEqual(flags, {
    "calc.echo": [false, false, false],
    "feed.count": [false, false, true],
    "feed.later": [false, false, true],
    "feed.forever": [false, false, true],
    "feed.fail": [false, false, true],
    "calc.sum": [true, true, false],
    "chat.upper": [false, true, true],
  });
  await p.close();
});

test("provider, server stream: REPLY(STREAM) with the first reply, DATA FIRST per further one, END; EMPTY openings", T, async () => {
  const { p, peer } = await provider(streamingMethods([]));
  peer.send(F.call(2, "feed.count", Payload.json(3), { stream: false }));
  const first = await peer.expect("reply");
  assert.deepEqual([first.stream, first.empty, text(first)], [true, false, "0"]);
  assert.deepEqual([text(await peer.expect("data")), text(await peer.expect("data"))], ["1", "2"]);
  await peer.expect("end");
  // Nothing to say at all: REPLY(STREAM, EMPTY) then END.
  peer.send(F.call(4, "feed.count", Payload.json(0), { stream: false }));
  const empty = await peer.expect("reply");
  assert.deepEqual([empty.stream, empty.empty, empty.payload.length], [true, true, 0]);
  await peer.expect("end");
  // Nothing to say yet: REPLY(STREAM, EMPTY) at once, the message later.
  peer.send(F.call(6, "feed.later", "", { stream: false }));
  const opened = await peer.expect("reply");
  assert.equal(opened.empty, true);
  const d = await peer.expect("data");
  assert.deepEqual([d.first !== null, text(d)], [true, "late"]);
  await peer.expect("end");
  assert.equal(p.serving, 0);
  await p.close();
});

test("provider, client stream and bidi: requests from CALL(STREAM, EMPTY) and DATA FIRST, END ends them", T, async () => {
  const { p, peer } = await provider(streamingMethods([]));
  peer.send(F.call(2, "calc.sum", null), F.message(2, Payload.json(1)), F.message(2, Payload.json(2)));
  await sleep(20);
  peer.send(F.message(2, Payload.json(3)), F.end(2));
  const sum = await peer.expect("reply");
  assert.deepEqual([sum.stream, text(sum)], [false, "6"]);
  // Zero requests.
  peer.send(F.call(4, "calc.sum", null), F.end(4));
  assert.equal(text(await peer.expect("reply")), "0");
  // Bidi: each request answered as it comes.
  peer.send(F.call(6, "chat.upper", "hello", { stream: true }));
  const r1 = await peer.expect("reply");
  assert.deepEqual([r1.stream, text(r1)], [true, "HELLO"]);
  peer.send(F.message(6, "world"));
  assert.equal(text(await peer.expect("data")), "WORLD");
  peer.send(F.end(6));
  await peer.expect("end");
  // A streaming CALL to a unary method, and to no method.
  peer.send(F.call(8, "calc.echo", null), F.call(10, "calc.nope", null));
  const e1 = await peer.expect("error");
  const e2 = await peer.expect("error");
  assert.deepEqual([e1.callId, e1.code, e2.callId, e2.code], [8, 11, 10, 13]);
  assert.equal(p.serving, 0);
  await p.close();
});

test("provider: a handler that throws ends its stream with ERROR after what it yielded; CANCEL stops a handler", T, async () => {
  const log: string[] = [];
  const { p, peer } = await provider(streamingMethods(log));
  peer.send(F.call(2, "feed.fail", "", { stream: false }));
  assert.equal(text(await peer.expect("reply")), "partial");
  const err = await peer.expect("error");
  assert.deepEqual([err.callId, err.code, err.message], [2, 3, "ran out"]);
  peer.send(F.call(4, "feed.forever", "", { stream: false }));
  await peer.expect("reply");
  await peer.expect("data");
  peer.send(F.cancel(4));
  await peer.until(() => log.includes("forever stopped"), "the generator to be stopped");
  await peer.drain(50);
  assert.equal(p.serving, 0);
  const after = await peer.drain(50);
  assert.ok(!after.some((f) => f.type === "end" || f.type === "error"), "nothing is answered to a cancelled call");
  await p.close();
});

test("provider, stream window as sender: the handler is not pulled past about one window until STREAM_CREDIT", T, async () => {
  const window = 4096;
  let yielded = 0;
  const methods = new Methods().addServerStream("blob.get", async function* () {
    for (let i = 0; i < 50; i++) {
      yielded++;
      yield new Uint8Array(1000).fill(i);
    }
  });
  const { p, peer } = await provider(methods, { limits: { initialWindow: window } });
  peer.send(F.call(2, "blob.get", "", { stream: false }));
  await peer.expect("reply");
  await peer.drain(200);
  const sent = peer.payloadBytes.get(2) ?? 0;
  assert.ok(sent <= window && sent >= window - 1000, `${sent} bytes sent with a ${window} byte window`);
  assert.ok(yielded <= Math.ceil((2 * window) / 1000) + 2, `the handler yielded ${yielded} times`);
  peer.send(F.streamCredit(2, 1 << 20));
  await peer.until(() => peer.log.some((f) => f.type === "end" && f.callId === 2), "END");
  assert.equal(peer.payloadBytes.get(2), 50 * 1000);
  assert.equal(yielded, 50);
  await p.close();
});

test("provider, stream window as receiver: no STREAM_CREDIT while the handler does not read", T, async () => {
  const window = 16 * 1024;
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const methods = new Methods().addClientStream("blob.put", async (requests) => {
    await gate;
    let n = 0;
    for await (const r of requests) n += r.length;
    return Payload.json(n);
  });
  const { p, peer } = await provider(methods, {}, { limits: { ...DEFAULT_LIMITS, initialWindow: window } });
  peer.send(F.call(2, "blob.put", null));
  for (let i = 0; i < 4; i++) peer.send(F.message(2, new Uint8Array(1024)));
  await peer.until(() => peer.streamCredit.get(2) === 4096, "STREAM_CREDIT for the first quarter");
  for (let i = 4; i < 16; i++) peer.send(F.message(2, new Uint8Array(1024)));
  await peer.until(() => peer.creditReceived >= 16 * 1024, "connection CREDIT");
  await sleep(100);
  assert.equal(peer.streamCredit.get(2) ?? 0, 4096, "only the first quarter, before half the window was held");
  open();
  await peer.until(() => peer.streamCredit.get(2) === 16 * 1024, "STREAM_CREDIT once the handler reads");
  peer.send(F.end(2));
  assert.equal(text(await peer.expect("reply")), String(16 * 1024));
  await p.close();
});

test("provider: the deadline of a streaming call stops the handler and answers deadline_exceeded", T, async () => {
  const log: string[] = [];
  const { p, peer } = await provider(streamingMethods(log));
  peer.send(F.call(2, "feed.forever", "", { stream: false, meta: { timeoutUs: 80_000n } }));
  await peer.expect("reply");
  await peer.until(() => peer.log.some((f) => f.type === "error" && f.callId === 2), "the deadline's ERROR");
  const err = peer.log.find((f) => f.type === "error")!;
  assert.ok(err.type === "error" && err.code === 4);
  await peer.until(() => log.includes("forever stopped"), "the handler to stop");
  await p.close();
});

test("MessageStream hands out buffered messages before an error and releases credit as they are taken", T, async () => {
  const taken: number[] = [];
  let returned = 0;
  const s = new MessageStream((n) => taken.push(n), () => returned++);
  s.push(Payload.raw("a"), 1);
  s.push(Payload.raw("bb"), 2);
  s.fail(new PolycallError("internal", "boom"));
  assert.equal((await s.next()).value?.text(), "a");
  assert.deepEqual(taken, [1]);
  assert.equal((await s.next()).value?.text(), "bb");
  await assert.rejects(s.next(), isCode("internal"));
  assert.equal((await s.next()).done, true);
  assert.equal(returned, 0);
  const t = new MessageStream((n) => taken.push(n), () => returned++);
  t.push(Payload.raw("zzz"), 3);
  await t.return();
  assert.deepEqual(taken, [1, 2, 3]);
  assert.equal(returned, 1);
  t.push(Payload.raw("late"), 4);
  assert.deepEqual(taken, [1, 2, 3, 4], "after return(), arrivals are released at once");
  assert.equal((await t.next()).done, true);
});

// Keeps the imports honest for the sans-IO error type.
void ProtoError;
