/**
 * The golden vectors of the protocol (tests/vectors): every frame decodes to its stated
 * meaning and re-encodes to the same bytes; every malformed input fails with its
 * stated error.
 */

import assert from "node:assert/strict";
import * as path from "node:path";
import { test } from "node:test";

import { FrameError } from "../src/errors.js";
import { type Frame, type MethodEntry, decodeFrame, encodeFrame, encodeFrameChunks } from "../src/frame.js";
import { PREFACE } from "../src/connection.js";
import { type WireMeta, traceparent } from "../src/meta.js";
import { codeName } from "../src/status.js";
import { REPO_ROOT, hex, readJsonLossless, u64Json, unhex } from "./util.js";

const VECTORS = process.env["POLYCALL_VECTORS_DIR"] ?? path.join(REPO_ROOT, "tests", "vectors");

function metaJson(m: WireMeta): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (m.timeoutUs !== undefined) o["timeout_us"] = u64Json(m.timeoutUs);
  if (m.priority !== undefined) o["priority"] = m.priority;
  if (m.trace !== undefined) {
    o["traceparent"] = traceparent(m.trace);
    if (m.trace.tracestate !== undefined) o["tracestate"] = m.trace.tracestate;
  }
  if (m.idempotent) o["idempotent"] = true;
  if (m.idempotencyKey !== undefined) o["idempotency_key"] = m.idempotencyKey;
  if (m.principal !== undefined) o["principal"] = m.principal;
  if (m.extensions !== undefined && m.extensions.length > 0) {
    o["extensions"] = m.extensions.map((e) => ({ tag: e.tag, value_hex: hex(e.value) }));
  }
  return o;
}

const limits = (l: { maxFrame: number; maxMessage: number; maxInFlight: number; initialWindow: number }) => ({
  max_frame: l.maxFrame,
  max_message: l.maxMessage,
  max_in_flight: l.maxInFlight,
  initial_window: l.initialWindow,
});

/** A method's kind as the reference names it (`polycall_core::CallKind::as_str`). */
function kind(m: MethodEntry): string {
  if (m.requestStream === true) return m.replyStream === true ? "bidi" : "client_stream";
  return m.replyStream === true ? "server_stream" : "unary";
}

/** What a frame means, in the vectors' JSON form (tests/src/lib.rs `frame_to_json`). */
function meaning(f: Frame): Record<string, unknown> {
  switch (f.type) {
    case "hello":
      return {
        type: "hello", min_version: f.minVersion, max_version: f.maxVersion, features: u64Json(f.features),
        limits: limits(f.limits), codecs: f.codecs, compressions: f.compressions, auth_methods: f.authMethods, agent: f.agent,
      };
    case "welcome":
      return {
        type: "welcome", version: f.version, features: u64Json(f.features), limits: limits(f.limits),
        codecs: f.codecs, compressions: f.compressions, auth_method: f.authMethod, agent: f.agent,
      };
    case "auth":
      return { type: "auth", method: f.method, step: f.step, data_hex: hex(f.data) };
    case "call":
      return {
        type: "call", call_id: f.callId, method_id: f.methodId, method_name: f.methodName,
        content_type: f.contentType, compression: f.compression, meta: metaJson(f.meta), more: f.more,
        message_len: f.messageLen, stream: f.stream, empty: f.empty === true, payload_hex: hex(f.payload),
      };
    case "reply":
      return {
        type: "reply", call_id: f.callId, content_type: f.contentType, compression: f.compression,
        more: f.more, message_len: f.messageLen, stream: f.stream, empty: f.empty === true, payload_hex: hex(f.payload),
      };
    case "error":
      return {
        type: "error", call_id: f.callId, code: f.code, code_name: codeName(f.code), message: f.message,
        retry_after_ms: f.retryAfterMs, supported_versions: f.supportedVersions,
        extensions: f.extensions.map((e) => ({ tag: e.tag, value_hex: hex(e.value) })),
      };
    case "cancel":
      return { type: "cancel", call_id: f.callId };
    case "data":
      return {
        type: "data", call_id: f.callId,
        first: f.first === null ? null : { content_type: f.first.contentType, compression: f.first.compression },
        more: f.more, message_len: f.messageLen, payload_hex: hex(f.payload),
      };
    case "end":
      return { type: "end", call_id: f.callId };
    case "ping":
    case "pong":
      return { type: f.type, opaque: u64Json(f.opaque) };
    case "goaway":
      return { type: "goaway", last_call_id: f.lastCallId, code: f.code, message: f.message };
    case "credit":
      return { type: "credit", increment: f.increment };
    case "stream_credit":
      return { type: "stream_credit", call_id: f.callId, increment: f.increment };
    case "dictionary":
      return { type: "dictionary", id: f.id, data_hex: hex(f.data) };
    case "register":
      return {
        type: "register", call_id: f.callId,
        methods: f.methods.map((m) => ({
          name: m.name, idempotent: m.idempotent, kind: kind(m), summary: m.summary, input: m.input, output: m.output,
        })),
      };
    case "unregister":
      return { type: "unregister", call_id: f.callId, methods: f.methods };
  }
}

const frames = readJsonLossless(path.join(VECTORS, "frames.json"));
const malformed = readJsonLossless(path.join(VECTORS, "malformed.json"));

test("the preface is the vectors' preface", () => {
  assert.equal(hex(PREFACE), frames.preface_hex);
});

test("every golden frame decodes to its meaning and re-encodes to the same bytes", () => {
  const kinds = new Set<string>();
  assert.ok(frames.vectors.length >= 20, "at least 20 vectors");
  for (const v of frames.vectors) {
    const bytes = unhex(v.hex);
    const r = decodeFrame(bytes, 0xffffffff, v.crc32c);
    assert.ok(r !== null, `${v.name}: incomplete`);
    assert.equal(r.used, bytes.length, `${v.name}: bytes left over`);
    assert.deepEqual(meaning(r.frame), v.frame, `${v.name}: meaning`);
    assert.equal(hex(encodeFrame(r.frame, v.crc32c)), v.hex, `${v.name}: re-encoding`);
    kinds.add(v.frame.type);
  }
  for (const k of ["hello", "welcome", "auth", "call", "reply", "error", "cancel", "data", "end", "ping", "pong", "goaway", "credit", "stream_credit", "dictionary", "register", "unregister"]) {
    assert.ok(kinds.has(k), `no vector of frame type ${k}`);
  }
});

test("a frame cut anywhere is incomplete, never an error", () => {
  for (const v of frames.vectors) {
    const bytes = unhex(v.hex);
    for (let n = 0; n < bytes.length; n++) {
      assert.equal(decodeFrame(bytes.subarray(0, n), 0xffffffff, v.crc32c), null, `${v.name} cut at ${n}`);
    }
  }
});

test("every malformed vector fails with its stated error", () => {
  assert.ok(malformed.vectors.length >= 10);
  for (const v of malformed.vectors) {
    let caught: unknown;
    try {
      decodeFrame(unhex(v.hex), v.max_body, v.crc32c);
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof FrameError, `${v.name}: expected a FrameError, got ${String(caught)}`);
    assert.deepEqual(caught.toJSON(), v.expect, v.name);
  }
});

test("large payloads are encoded as their own chunk with the same bytes and CRC", () => {
  const payload = new Uint8Array(100_000).map((_, i) => (i * 7) & 0xff);
  const f: Frame = { type: "data", callId: 3, first: null, more: true, messageLen: null, payload };
  for (const crc of [false, true]) {
    const chunks = encodeFrameChunks(f, crc);
    assert.equal(chunks.length, crc ? 3 : 2);
    assert.equal(chunks[1], payload, "the payload is not copied");
    const joined = Buffer.concat(chunks);
    const back = decodeFrame(joined, 1 << 20, crc);
    assert.ok(back !== null && back.frame.type === "data");
    assert.deepEqual(Buffer.from(back.frame.payload), Buffer.from(payload));
  }
});
