/**
 * Support for generated stubs (`polycall bindgen --lang typescript`): type descriptors
 * that check and convert values to and from their JSON form, and the call / serve
 * helpers the generated clients and provider base classes use. Not needed by hand-written
 * code.
 */

import type { Peer, CallOptions } from "./peer.js";
import { Payload } from "./payload.js";
import type { CallContext, Methods } from "./provider.js";
import { PolycallError } from "./status.js";

/** Converts one schema type between its TypeScript value and its JSON form. */
export interface TypeDesc<T> {
  /** The schema spelling, for messages. */
  readonly text: string;
  /** The JSON form of a value; throws `invalid_input` naming `path` when the value does not fit. */
  toJson(value: T, path: string): unknown;
  /** The value of a JSON form; throws `invalid_input` naming `path` when it does not fit. */
  fromJson(json: unknown, path: string): T;
}

function misfit(path: string, expected: string, got: unknown): PolycallError {
  const what = got === null ? "null" : Array.isArray(got) ? "an array" : typeof got;
  return new PolycallError("invalid_input", `${path}: expected ${expected}, got ${what}`);
}

function scalar<T>(text: string, expected: string, ok: (v: unknown) => boolean): TypeDesc<T> {
  return {
    text,
    toJson(v, path) {
      if (!ok(v)) throw misfit(path, expected, v);
      return v;
    },
    fromJson(j, path) {
      if (!ok(j)) throw misfit(path, expected, j);
      return j as T;
    },
  };
}

/** `string`. */
export const STRING: TypeDesc<string> = scalar("string", "a string", (v) => typeof v === "string");
/** `int`: a JSON integer (exact up to 2^53 in JavaScript). */
export const INT: TypeDesc<number> = scalar("int", "an integer", (v) => typeof v === "number" && Number.isInteger(v));
/** `float`. */
export const FLOAT: TypeDesc<number> = scalar("float", "a number", (v) => typeof v === "number" && Number.isFinite(v));
/** `bool`. */
export const BOOL: TypeDesc<boolean> = scalar("bool", "true or false", (v) => typeof v === "boolean");
/** `any`: any JSON value, passed as it is. */
export const ANY: TypeDesc<unknown> = { text: "any", toJson: (v) => v, fromJson: (j) => j };

/** `bytes`: a base64 string (standard alphabet, padded) in JSON, a `Uint8Array` here. */
export const BYTES: TypeDesc<Uint8Array> = {
  text: "bytes",
  toJson(v, path) {
    if (!(v instanceof Uint8Array)) throw misfit(path, "a Uint8Array", v);
    return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64");
  },
  fromJson(j, path) {
    if (typeof j !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(j) || j.length % 4 !== 0) {
      throw misfit(path, "a base64 string", j);
    }
    return new Uint8Array(Buffer.from(j, "base64"));
  },
};

/** A method side that is raw bytes on the wire (content type raw, no JSON). */
export const RAW: TypeDesc<Uint8Array> = {
  text: "bytes",
  toJson: () => {
    throw new PolycallError("internal", "raw payloads have no JSON form");
  },
  fromJson: () => {
    throw new PolycallError("internal", "raw payloads have no JSON form");
  },
};

/** `list<T>`. */
export function listOf<T>(item: TypeDesc<T>): TypeDesc<T[]> {
  return {
    text: `list<${item.text}>`,
    toJson(v, path) {
      if (!Array.isArray(v)) throw misfit(path, "an array", v);
      return v.map((x, i) => item.toJson(x, `${path}[${i}]`));
    },
    fromJson(j, path) {
      if (!Array.isArray(j)) throw misfit(path, "an array", j);
      return j.map((x, i) => item.fromJson(x, `${path}[${i}]`));
    },
  };
}

/** `optional<T>`: the value, or `null` (absent keys read as `null`). */
export function optional<T>(item: TypeDesc<T>): TypeDesc<T | null> {
  return {
    text: `optional<${item.text}>`,
    toJson: (v, path) => (v === null || v === undefined ? null : item.toJson(v, path)),
    fromJson: (j, path) => (j === null || j === undefined ? null : item.fromJson(j, path)),
  };
}

/** One field of a message: JSON key, property name, type, whether it is `optional<>`. */
export type FieldDesc = readonly [key: string, prop: string, type: TypeDesc<any>, optional: boolean];

/** A message: a JSON object with the given fields (other keys are ignored when reading). */
export function message<T>(name: string, fields: () => readonly FieldDesc[]): TypeDesc<T> {
  return {
    text: name,
    toJson(v, path) {
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw misfit(path, `a ${name} object`, v);
      const o: Record<string, unknown> = {};
      const src = v as Record<string, unknown>;
      for (const [key, prop, type, opt] of fields()) {
        const x = src[prop];
        if (x === undefined && !opt) throw new PolycallError("invalid_input", `${path}.${prop}: missing (a ${type.text} is required)`);
        o[key] = type.toJson(x ?? null, `${path}.${prop}`);
      }
      return o;
    },
    fromJson(j, path) {
      if (typeof j !== "object" || j === null || Array.isArray(j)) throw misfit(path, `a ${name} object`, j);
      const o: Record<string, unknown> = {};
      const src = j as Record<string, unknown>;
      for (const [key, prop, type, opt] of fields()) {
        const x = src[key];
        if (x === undefined && !opt) throw new PolycallError("invalid_input", `${path}.${key}: missing (a ${type.text} is required)`);
        o[prop] = type.fromJson(x ?? null, `${path}.${key}`);
      }
      return o as T;
    },
  };
}

/** The payload of a value of `desc` (raw bytes, or JSON). */
export function encode<T>(desc: TypeDesc<T>, value: T, what: string): Payload {
  if (desc === (RAW as TypeDesc<unknown>)) {
    if (!(value instanceof Uint8Array)) throw misfit(what, "a Uint8Array", value);
    return Payload.raw(value);
  }
  return Payload.json(desc.toJson(value, what));
}

/** The value of `desc` a payload holds. */
export function decode<T>(desc: TypeDesc<T>, p: Payload, what: string): T {
  if (desc === (RAW as TypeDesc<unknown>)) return p.bytes as T;
  return desc.fromJson(p.json(), what);
}

/** Calls `service.method` with a typed request and decodes the typed reply. */
export async function call<I, O>(
  peer: Peer,
  service: string,
  method: string,
  request: I,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  idempotent: boolean,
  options: CallOptions = {},
): Promise<O> {
  const payload = encode(input, request, "request");
  const reply = await peer.call(service, method, payload, idempotent ? { idempotent: true, ...options } : options);
  try {
    return decode(output, reply, "reply");
  } catch (e) {
    if (e instanceof PolycallError && e.code === "invalid_input") {
      throw new PolycallError("malformed", `${service}.${method} answered a reply that does not fit its type: ${e.detail}`);
    }
    throw e;
  }
}

/** What a generated provider registers for one method. */
export interface ServeInfo {
  summary: string;
  input: string;
  output: string;
  idempotent: boolean;
}

/** Adds a typed handler for `fullName` to `methods`. */
export function serve<I, O>(
  methods: Methods,
  fullName: string,
  handler: (request: I, ctx: CallContext) => Promise<O> | O,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  info: ServeInfo,
): void {
  methods.add(
    fullName,
    async (p, ctx) => {
      const request = decode(input, p, "request");
      const reply = await handler(request, ctx);
      try {
        return encode(output, reply, "reply");
      } catch (e) {
        const why = e instanceof PolycallError ? e.detail : String(e);
        throw new PolycallError("internal", `the handler of ${fullName} answered a reply that does not fit its type: ${why}`);
      }
    },
    info,
  );
}
