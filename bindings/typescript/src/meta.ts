/**
 * Call metadata on the wire: `u8 tag, u16 length, value` entries, tags strictly
 * ascending. Unknown tags (8 and above) are kept and passed on.
 */

import { FRAME_CALL } from "./frame-types.js";
import { Reader, Writer, clipBytes, utf8Bytes } from "./wire.js";

/** Metadata entry tags. */
export const META_TAG = {
  timeout: 1,
  priority: 2,
  traceparent: 3,
  tracestate: 4,
  idempotent: 5,
  idempotencyKey: 6,
  principal: 7,
} as const;

/** Longest text value of a metadata entry, in bytes. */
export const MAX_META_TEXT = 1024;

/** Priority classes; `normal` travels as the absence of the entry. */
export type Priority = "critical" | "high" | "normal" | "low";

const PRIORITY_BYTE: Record<Priority, number> = { critical: 0, high: 1, normal: 2, low: 3 };
const PRIORITY_OF: readonly Priority[] = ["critical", "high", "normal", "low"];

/** W3C trace context in binary form. */
export interface TraceContext {
  /** 16 bytes, not all zero. */
  traceId: Uint8Array;
  /** 8 bytes, not all zero. */
  parentId: Uint8Array;
  /** W3C flags (bit 0: sampled). */
  flags: number;
  /** W3C tracestate. */
  tracestate?: string | undefined;
}

/** An entry of a tag this version does not know. */
export interface Extension {
  /** The tag. */
  tag: number;
  /** The raw value. */
  value: Uint8Array;
}

/** Call metadata as it travels: the deadline is a relative timeout. */
export interface WireMeta {
  /** Microseconds left until the deadline. */
  timeoutUs?: bigint | undefined;
  /** Priority class; absent means normal. */
  priority?: Exclude<Priority, "normal"> | undefined;
  /** W3C trace context. */
  trace?: TraceContext | undefined;
  /** The call is idempotent. */
  idempotent?: boolean | undefined;
  /** Deduplication key. */
  idempotencyKey?: string | undefined;
  /** Principal the call runs as (trusted only from an authenticated runtime). */
  principal?: string | undefined;
  /** Entries of unknown tags, in order. */
  extensions?: Extension[] | undefined;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

/** The `traceparent` header value of a trace context. */
export function traceparent(t: TraceContext): string {
  return `00-${hex(t.traceId)}-${hex(t.parentId)}-${t.flags.toString(16).padStart(2, "0")}`;
}

/** Parses a `traceparent` header value; `null` when it is not valid. */
export function parseTraceparent(value: string, tracestate?: string): TraceContext | null {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(value.trim());
  if (!m) return null;
  const t: TraceContext = {
    traceId: Uint8Array.from(Buffer.from(m[1]!, "hex")),
    parentId: Uint8Array.from(Buffer.from(m[2]!, "hex")),
    flags: parseInt(m[3]!, 16),
    tracestate,
  };
  if (t.traceId.every((b) => b === 0) || t.parentId.every((b) => b === 0)) return null;
  return t;
}

/** Appends the entries of `m` to `w`. */
export function encodeMeta(m: WireMeta, w: Writer): void {
  const entry = (tag: number, value: Uint8Array) => {
    w.u8(tag);
    w.u16(value.length);
    w.bytes(value);
  };
  const text = (s: string) => clipBytes(utf8Bytes(s), MAX_META_TEXT);
  if (m.timeoutUs !== undefined) {
    const v = new Uint8Array(8);
    new DataView(v.buffer).setBigUint64(0, BigInt.asUintN(64, m.timeoutUs), true);
    entry(META_TAG.timeout, v);
  }
  if (m.priority !== undefined) entry(META_TAG.priority, Uint8Array.of(PRIORITY_BYTE[m.priority]));
  if (m.trace !== undefined) {
    const v = new Uint8Array(25);
    v.set(m.trace.traceId.subarray(0, 16), 0);
    v.set(m.trace.parentId.subarray(0, 8), 16);
    v[24] = m.trace.flags;
    entry(META_TAG.traceparent, v);
    if (m.trace.tracestate !== undefined) entry(META_TAG.tracestate, text(m.trace.tracestate));
  }
  if (m.idempotent) entry(META_TAG.idempotent, new Uint8Array(0));
  if (m.idempotencyKey !== undefined) entry(META_TAG.idempotencyKey, text(m.idempotencyKey));
  if (m.principal !== undefined) entry(META_TAG.principal, text(m.principal));
  for (const e of m.extensions ?? []) entry(e.tag, e.value);
}

/** Reads the metadata section of a CALL frame. */
export function decodeMeta(meta: Uint8Array): WireMeta {
  const r = new Reader(meta, FRAME_CALL);
  const m: WireMeta = {};
  let last = -1;
  while (r.remaining() > 0) {
    const tag = r.u8("metadata entry tag is cut short");
    const len = r.u16("metadata entry length is cut short");
    if (tag === 0) throw r.err("metadata tag 0 is reserved");
    if (tag <= last) throw r.err("metadata tags are not strictly ascending");
    last = tag;
    const textLen = () => {
      if (len > MAX_META_TEXT) throw r.err("metadata text value longer than 1024 bytes");
      return len;
    };
    switch (tag) {
      case META_TAG.timeout:
        if (len !== 8) throw r.err("timeout entry is not 8 bytes");
        m.timeoutUs = r.u64("timeout");
        break;
      case META_TAG.priority: {
        if (len !== 1) throw r.err("priority entry is not 1 byte");
        const p = PRIORITY_OF[r.u8("priority")];
        if (p === undefined) throw r.err("unknown priority class");
        if (p === "normal") throw r.err("priority normal is sent by omitting the entry");
        m.priority = p;
        break;
      }
      case META_TAG.traceparent: {
        if (len !== 25) throw r.err("traceparent entry is not 25 bytes");
        const v = r.bytes(25, "traceparent");
        const t: TraceContext = { traceId: v.slice(0, 16), parentId: v.slice(16, 24), flags: v[24]! };
        if (t.traceId.every((b) => b === 0) || t.parentId.every((b) => b === 0)) {
          throw r.err("traceparent has an all-zero id");
        }
        m.trace = t;
        break;
      }
      case META_TAG.tracestate: {
        const s = r.str(textLen(), "tracestate");
        if (m.trace === undefined) throw r.err("tracestate without traceparent");
        m.trace.tracestate = s;
        break;
      }
      case META_TAG.idempotent:
        if (len !== 0) throw r.err("idempotent entry has a value");
        m.idempotent = true;
        break;
      case META_TAG.idempotencyKey:
        m.idempotencyKey = r.str(textLen(), "idempotency key");
        break;
      case META_TAG.principal:
        m.principal = r.str(textLen(), "principal");
        break;
      default:
        (m.extensions ??= []).push({ tag, value: r.bytes(len, "metadata extension is cut short") });
    }
  }
  return m;
}
