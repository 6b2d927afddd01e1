/** Type descriptors of generated stubs: JSON conversion and its checks. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Payload } from "../src/payload.js";
import { PolycallError, codeName, codeNumber, isCode } from "../src/status.js";
import * as s from "../src/stubs.js";
import { AddInputType, SERVICE } from "../generated/conformance.js";

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
