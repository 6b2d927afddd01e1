/** The connection state machine, two ends pumped in memory. */

import assert from "node:assert/strict";
import { brotliCompressSync } from "node:zlib";
import { test } from "node:test";

import { type ConnectionEvent, Connection, ProtoError, defaultConnectionConfig } from "../src/connection.js";
import { crc32c } from "../src/crc32c.js";
import { decodeFrame, encodeFrame } from "../src/frame.js";
import { FEATURES, defaultSettings } from "../src/handshake.js";
import { Payload } from "../src/payload.js";
import { PolycallError } from "../src/status.js";

function pair(
  clientOver: Parameters<typeof defaultSettings>[0] = {},
  serverOver: Parameters<typeof defaultSettings>[0] = {},
  fragmentSize = 64 * 1024,
): [Connection, Connection] {
  const cc = defaultConnectionConfig(defaultSettings(clientOver));
  cc.fragmentSize = fragmentSize;
  const sc = defaultConnectionConfig(defaultSettings(serverOver));
  sc.fragmentSize = fragmentSize;
  return [new Connection("client", cc), new Connection("server", sc)];
}

/** Moves bytes both ways until both ends are quiet; returns the bytes moved each way. */
function pump(a: Connection, b: Connection): [number, number] {
  let ab = 0;
  let ba = 0;
  for (let i = 0; i < 10_000; i++) {
    const x = a.pollTransmit(1 << 20);
    const y = b.pollTransmit(1 << 20);
    if (x.length === 0 && y.length === 0) return [ab, ba];
    for (const c of x) {
      ab += c.length;
      b.feed(c);
    }
    for (const c of y) {
      ba += c.length;
      a.feed(c);
    }
  }
  throw new Error("pump did not settle");
}

function events(c: Connection): ConnectionEvent[] {
  const out: ConnectionEvent[] = [];
  for (let e = c.pollEvent(); e !== undefined; e = c.pollEvent()) out.push(e);
  return out;
}

function connected(over: Parameters<typeof defaultSettings>[0] = {}, fragmentSize?: number): [Connection, Connection] {
  const [c, s] = pair(over, over, fragmentSize);
  pump(c, s);
  assert.deepEqual(events(c), [{ type: "connected" }]);
  assert.deepEqual(events(s), [{ type: "connected" }]);
  return [c, s];
}

test("crc32c of the check string", () => {
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
});

test("handshake agrees on version 1, raw and JSON, and streaming", () => {
  const [c, s] = connected();
  assert.equal(c.negotiated!.version, 1);
  assert.deepEqual(c.negotiated!.codecs, ["json", "raw"]);
  assert.equal(c.negotiated!.features & FEATURES.streaming, FEATURES.streaming);
  assert.ok(c.streaming && s.streaming);
  assert.equal(s.negotiated!.peerAgent.startsWith("polycall-node/"), true);
});

test("a call and its reply, with the method interned after first use", () => {
  const [c, s] = connected();
  const first = c.openCall("calc", "add", Payload.json({ a: 1 }));
  const [bytesFirst] = pump(c, s);
  const [call] = events(s);
  assert.ok(call?.type === "call");
  assert.equal(call.service, "calc");
  assert.equal(call.method, "add");
  assert.deepEqual(call.payload.json(), { a: 1 });
  s.sendReply(call.callId, Payload.json({ sum: 1 }));
  pump(c, s);
  const [reply] = events(c);
  assert.ok(reply?.type === "reply" && reply.callId === first);
  assert.deepEqual(reply.payload.json(), { sum: 1 });
  c.openCall("calc", "add", Payload.json({ a: 1 }));
  const [bytesSecond] = pump(c, s);
  assert.equal(bytesFirst - bytesSecond, "calc.add".length + 1, "the second call carries the id, not the name");
  assert.equal(c.openCalls, 1);
});

test("a message larger than a fragment is split, interleaved with small calls, and reassembled", () => {
  const [c, s] = connected({}, 4096);
  const big = new Uint8Array(100_000).map((_, i) => (i * 31) & 0xff);
  const bigId = c.openCall("blob", "put", Payload.raw(big));
  const smallId = c.openCall("blob", "ping", Payload.raw("x"));
  // The small call's frame leaves before the big call's fragments.
  const chunks = c.pollTransmit(8192);
  for (const ch of chunks) s.feed(ch);
  const early = events(s);
  assert.ok(early.some((e) => e.type === "call" && e.callId === smallId));
  assert.ok(!early.some((e) => e.type === "call" && e.callId === bigId));
  pump(c, s);
  const late = events(s);
  const got = late.find((e) => e.type === "call" && e.callId === bigId);
  assert.ok(got?.type === "call");
  assert.deepEqual(Buffer.from(got.payload.bytes), Buffer.from(big));
});

test("flow control: a sender stops at the peer's window and resumes on CREDIT", () => {
  const window = 16 * 1024;
  const [c, s] = pair({}, { limits: { maxFrame: 256 * 1024, maxMessage: 1 << 20, maxInFlight: 100, initialWindow: window } }, 4096);
  pump(c, s);
  events(c);
  events(s);
  const payload = new Uint8Array(200_000);
  const id = c.openCall("blob", "put", Payload.raw(payload));
  let sent = 0;
  for (const ch of c.pollTransmit(1 << 30)) {
    sent += ch.length;
    s.feed(ch);
  }
  assert.ok(sent < window + 1024, `sent ${sent} bytes with a ${window} byte window`);
  assert.equal(c.credit < 1024, true);
  pump(c, s);
  const got = events(s).find((e) => e.type === "call");
  assert.ok(got?.type === "call" && got.callId === id && got.payload.length === payload.length);
});

test("CRC32C, when both offer it, protects every frame after the handshake", () => {
  const [c, s] = connected({ features: FEATURES.crc32c });
  assert.equal(c.negotiated!.features, FEATURES.crc32c);
  c.openCall("a", "b", Payload.raw("hello"));
  const chunks = c.pollTransmit();
  const bytes = Buffer.concat(chunks);
  bytes[bytes.length - 6]! ^= 0xff; // a flipped payload byte
  assert.throws(() => s.feed(bytes), (e: unknown) => e instanceof ProtoError && e.status.code === "malformed");
  const evs = events(s);
  assert.equal(evs.at(-1)?.type, "closed");
  // The server told the client why.
  for (const ch of s.pollTransmit()) {
    try {
      c.feed(ch);
    } catch {
      // the client sees the connection error
    }
  }
  const ce = events(c);
  assert.ok(ce.some((e) => e.type === "failed"));
  assert.ok(ce.some((e) => e.type === "closed" && e.error.detail.includes("checksum")));
});

test("an error reply is typed; a cancel reaches the callee; a late reply is ignored", () => {
  const [c, s] = connected();
  const a = c.openCall("svc", "m", Payload.raw("a"));
  const b = c.openCall("svc", "m", Payload.raw("b"));
  pump(c, s);
  const [ca, cb] = events(s);
  assert.ok(ca?.type === "call" && cb?.type === "call");
  s.sendError(ca.callId, new PolycallError("not_found", "no such item", { retryAfterMs: 5 }));
  c.cancel(b);
  pump(c, s);
  const [failed] = events(c);
  assert.ok(failed?.type === "failed" && failed.callId === a);
  assert.equal(failed.error.code, "not_found");
  assert.equal(failed.error.detail, "no such item");
  assert.equal(failed.error.retryAfterMs, 5);
  assert.deepEqual(events(s), [{ type: "cancelled", callId: cb.callId }]);
  assert.throws(() => s.sendReply(cb.callId, Payload.raw("late")), PolycallError);
  assert.equal(c.openCalls, 0);
});

test("the in-flight limit refuses a call with busy before anything is sent", () => {
  const [c, s] = pair({}, { limits: { maxFrame: 65536, maxMessage: 1 << 20, maxInFlight: 2, initialWindow: 1 << 20 } });
  pump(c, s);
  c.openCall("s", "m", Payload.raw(""));
  c.openCall("s", "m", Payload.raw(""));
  assert.throws(
    () => c.openCall("s", "m", Payload.raw("")),
    (e: unknown) => e instanceof PolycallError && e.code === "busy",
  );
});

test("a message over the peer's limit is refused locally; a compressed reply over ours fails the call", () => {
  const [c, s] = pair(
    { limits: { maxFrame: 65536, maxMessage: 1000, maxInFlight: 10, initialWindow: 1 << 20 } },
    { limits: { maxFrame: 65536, maxMessage: 1000, maxInFlight: 10, initialWindow: 1 << 20 } },
  );
  pump(c, s);
  events(c);
  events(s);
  assert.throws(
    () => c.openCall("s", "m", Payload.raw(new Uint8Array(1001))),
    (e: unknown) => e instanceof PolycallError && e.code === "too_large",
  );
  // A brotli bomb: small on the wire, 100 KB decompressed.
  const id = c.openCall("s", "m", Payload.raw("x"));
  pump(c, s);
  const [call] = events(s);
  assert.ok(call?.type === "call");
  const bomb = brotliCompressSync(new Uint8Array(100_000));
  const frame = encodeFrame(
    { type: "reply", callId: id, contentType: "raw", compression: "brotli", more: false, messageLen: null, stream: false, payload: bomb },
    false,
  );
  c.feed(frame);
  const [failed] = events(c);
  assert.ok(failed?.type === "failed" && failed.error.code === "too_large", JSON.stringify(failed));
  // The call was cancelled towards the server; the connection goes on.
  const cancel = decodeFrame(Buffer.concat(c.pollTransmit()), 1 << 20, false);
  assert.equal(cancel?.frame.type, "cancel");
  assert.ok(c.isOpen);
});

test("a peer that is not polycall is named and refused", () => {
  const [c] = pair();
  c.pollTransmit();
  assert.throws(
    () => c.feed(new TextEncoder().encode("PCR1{...}")),
    (e: unknown) => e instanceof ProtoError && e.message.includes("PCR1"),
  );
  assert.equal(c.isClosed, true);
});

test("version mismatch closes the handshake with the server's range", () => {
  const [c, s] = pair({ minVersion: 2, maxVersion: 3 });
  assert.throws(() => {
    for (const ch of c.pollTransmit()) s.feed(ch);
  }, ProtoError);
  assert.throws(() => {
    for (const ch of s.pollTransmit()) c.feed(ch);
  }, ProtoError);
  const closed = events(c).find((e) => e.type === "closed");
  assert.ok(closed?.type === "closed");
  assert.equal(closed.error.code, "version_mismatch");
  assert.deepEqual(closed.error.supportedVersions, [1, 1]);
});

test("protocol violations close the connection: a reused call id, an unbound method id", () => {
  const [c, s] = connected();
  const call = (callId: number, methodId: number, methodName: string | null) =>
    encodeFrame(
      { type: "call", callId, methodId, methodName, contentType: "raw", compression: "none", meta: {}, more: false, messageLen: null, stream: false, payload: new Uint8Array(0) },
      false,
    );
  s.feed(call(1, 1, "a.b"));
  assert.throws(() => s.feed(call(1, 1, null)), (e: unknown) => e instanceof ProtoError && e.message.includes("reuses call id"));
  const [c2, s2] = connected();
  assert.throws(() => s2.feed(call(3, 9, null)), (e: unknown) => e instanceof ProtoError && e.message.includes("never bound"));
  void c;
  void c2;
});

test("register on the client is answered by the server", () => {
  const [c, s] = connected();
  const id = c.register([{ name: "calc.add", idempotent: true, summary: "adds", input: "{}", output: "{}" }]);
  pump(c, s);
  const [reg] = events(s);
  assert.ok(reg?.type === "register" && reg.callId === id);
  assert.equal(reg.methods[0]!.name, "calc.add");
  s.sendReply(id, Payload.raw(new Uint8Array(0)));
  pump(c, s);
  const [ok] = events(c);
  assert.ok(ok?.type === "reply" && ok.callId === id);
});

test("goaway fails the calls above the last id as unavailable", () => {
  const [c, s] = connected();
  const a = c.openCall("s", "m", Payload.raw("a"));
  pump(c, s);
  events(s);
  s.goAway(new PolycallError("unavailable", "draining"));
  const b = c.openCall("s", "m", Payload.raw("b"));
  for (const ch of s.pollTransmit()) c.feed(ch);
  const evs = events(c);
  assert.ok(evs.some((e) => e.type === "failed" && e.callId === b && e.error.code === "unavailable"));
  assert.ok(evs.some((e) => e.type === "goaway" && e.lastCallId === a));
  assert.throws(() => c.openCall("s", "m", Payload.raw("c")), PolycallError);
});

test("a DICTIONARY frame is a protocol violation: this binding does not offer dictionaries", () => {
  const [c, s] = connected();
  const dictionary = encodeFrame({ type: "dictionary", id: 32768, data: Uint8Array.of(0x37, 0xa4, 0x30, 0xec) }, false);
  assert.throws(() => s.feed(dictionary), (e: unknown) => e instanceof ProtoError && e.message.includes("dictionaries were not agreed"));
  void c;
});
