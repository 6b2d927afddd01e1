/**
 * Support for generated stubs (`polycall bindgen --lang typescript`): type descriptors
 * that check and convert values to and from their JSON form, and the call / serve
 * helpers the generated clients and provider base classes use (unary, and the three
 * streaming kinds: `serverStream`, `clientStream`, `bidiStream` and their `serve…`
 * counterparts). Not needed by hand-written code.
 */

import type { Peer, CallOptions } from "./peer.js";
import { Payload } from "./payload.js";
import type { CallContext, Methods } from "./provider.js";
import { PolycallError } from "./status.js";
import { type MessageStream, iteratorOf, stopIterator } from "./stream.js";

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

// ------------------------------------------------------------------------ streaming calls

/** Values a typed request stream may be fed: a sync or async iterable. */
export type Values<T> = AsyncIterable<T> | Iterable<T>;

/** `call`'s option handling: an idempotent method marks its calls so. */
function callOptions(idempotent: boolean, options: CallOptions): CallOptions {
  return idempotent ? { idempotent: true, ...options } : options;
}

/** A reply that does not fit its type is the callee's fault: `malformed`. */
function decodeReply<O>(output: TypeDesc<O>, p: Payload, what: string, fullName: string): O {
  try {
    return decode(output, p, what);
  } catch (e) {
    if (e instanceof PolycallError && e.code === "invalid_input") {
      throw new PolycallError("malformed", `${fullName} answered a reply that does not fit its type: ${e.detail}`);
    }
    throw e;
  }
}

/** A reply a handler produced that does not fit its type is the handler's fault: `internal`. */
function encodeReply<O>(output: TypeDesc<O>, value: O, what: string, fullName: string): Payload {
  try {
    return encode(output, value, what);
  } catch (e) {
    const why = e instanceof PolycallError ? e.detail : String(e);
    throw new PolycallError("internal", `the handler of ${fullName} answered a reply that does not fit its type: ${why}`);
  }
}

/**
 * An async iterator that maps each item of `source` (pulled one `next()` at a time)
 * through `map(item, index)`. `source` is an iterator, or a function making it on the
 * first `next()` (so a bad iterable fails there, not at the call). `return()` stops
 * `source` at once, even while a `next()` is pending (a `MessageStream` then settles that
 * `next()` and cancels its call) — which an async generator could not do. A `map` that
 * throws fails that `next()` and stops `source`; later ones report the end.
 */
class Mapped<A, B> implements AsyncIterableIterator<B> {
  private it: AsyncIterator<A> | null;
  private index = 0;
  private done = false;
  private stopped = false;

  constructor(
    private readonly source: AsyncIterator<A> | (() => AsyncIterator<A>),
    private readonly map: (item: A, index: number) => B,
  ) {
    this.it = typeof source === "function" ? null : source;
  }

  async next(): Promise<IteratorResult<B>> {
    if (this.done) return { value: undefined, done: true };
    let r: IteratorResult<A>;
    try {
      this.it ??= (this.source as () => AsyncIterator<A>)();
      r = await this.it.next();
    } catch (e) {
      this.done = true;
      throw e;
    }
    if (this.done || r.done === true) {
      this.done = true;
      return { value: undefined, done: true };
    }
    try {
      return { value: this.map(r.value, this.index++), done: false };
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  async return(): Promise<IteratorResult<B>> {
    this.stop();
    return { value: undefined, done: true };
  }

  private stop(): void {
    this.done = true;
    if (this.stopped) return;
    this.stopped = true;
    stopIterator(this.it);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** An iterator whose first `next()` fails with `error` (how a stream that could not start reports it). */
function failed<T>(error: unknown): AsyncIterableIterator<T> {
  let thrown = false;
  return {
    next: () => {
      if (thrown) return Promise.resolve({ value: undefined, done: true });
      thrown = true;
      return Promise.reject(error);
    },
    return: () => {
      thrown = true;
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

/** Typed requests as the payloads a streaming call sends (each checked as it is pulled). */
function encodedRequests<I>(requests: Values<I>, input: TypeDesc<I>): AsyncIterableIterator<Payload> {
  return new Mapped<I, Payload>(
    () => iteratorOf(requests),
    (v, i) => encode(input, v, `request[${i}]`),
  );
}

/** A reply stream's payloads as typed values (a reply that does not fit ends it with `malformed`, cancelling the call). */
function decodedReplies<O>(replies: AsyncIterator<Payload>, output: TypeDesc<O>, fullName: string): AsyncIterableIterator<O> {
  return new Mapped<Payload, O>(replies, (p, i) => decodeReply(output, p, `reply[${i}]`, fullName));
}

/**
 * Calls a server-stream method with a typed request and reads its typed replies: the
 * call opens now; iterate the result (`for await`). It ends at the callee's END, throws
 * the callee's `PolycallError`, `malformed` for a reply that does not fit its type
 * (cancelling the call), `invalid_input` for a request that does not fit (nothing is
 * sent); leaving the loop early cancels the call.
 */
export function serverStream<I, O>(
  peer: Peer,
  service: string,
  method: string,
  request: I,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  idempotent: boolean,
  options: CallOptions = {},
): AsyncIterableIterator<O> {
  let payload: Payload;
  try {
    payload = encode(input, request, "request");
  } catch (e) {
    return failed(e);
  }
  const replies = peer.callServerStream(service, method, payload, callOptions(idempotent, options));
  return decodedReplies(replies, output, `${service}.${method}`);
}

/**
 * Calls a client-stream method: sends each typed request of `requests` (a sync or async
 * iterable, pulled as the stream's window allows; a request that does not fit its type
 * fails the call with `invalid_input` and cancels it) and resolves with the typed reply
 * (`malformed` when it does not fit).
 */
export async function clientStream<I, O>(
  peer: Peer,
  service: string,
  method: string,
  requests: Values<I>,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  idempotent: boolean,
  options: CallOptions = {},
): Promise<O> {
  const reply = await peer.callClientStream(service, method, encodedRequests(requests, input), callOptions(idempotent, options));
  return decodeReply(output, reply, "reply", `${service}.${method}`);
}

/**
 * Calls a bidirectional method: typed requests go out as for {@link clientStream} while
 * typed replies are read as for {@link serverStream}.
 */
export function bidiStream<I, O>(
  peer: Peer,
  service: string,
  method: string,
  requests: Values<I>,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  idempotent: boolean,
  options: CallOptions = {},
): AsyncIterableIterator<O> {
  const replies = peer.callBidiStream(service, method, encodedRequests(requests, input), callOptions(idempotent, options));
  return decodedReplies(replies, output, `${service}.${method}`);
}

/** A handler's request stream as typed values (one that does not fit throws `invalid_input` in the handler). */
function decodedRequests<I>(requests: MessageStream, input: TypeDesc<I>): AsyncIterableIterator<I> {
  return new Mapped<Payload, I>(requests, (p, i) => decode(input, p, `request[${i}]`));
}

/** A handler's typed replies as payloads (one that does not fit ends the stream with `internal`). */
function encodedReplies<O>(replies: Values<O>, output: TypeDesc<O>, fullName: string): AsyncIterableIterator<Payload> {
  return new Mapped<O, Payload>(
    () => iteratorOf(replies),
    (v, i) => encodeReply(output, v, `reply[${i}]`, fullName),
  );
}

/**
 * Adds a typed server-stream handler for `fullName` to `methods`: `handler(request, ctx)`
 * returns the replies (an `async function*`, or any sync or async iterable). A request
 * that does not fit its type is answered with `invalid_input`; a reply that does not fit
 * ends the stream with `internal` after the replies before it.
 */
export function serveServerStream<I, O>(
  methods: Methods,
  fullName: string,
  handler: (request: I, ctx: CallContext) => AsyncIterable<O> | Iterable<O>,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  info: ServeInfo,
): void {
  methods.addServerStream(
    fullName,
    (p, ctx) => encodedReplies(handler(decode(input, p, "request"), ctx), output, fullName),
    info,
  );
}

/**
 * Adds a typed client-stream handler for `fullName` to `methods`: `handler(requests, ctx)`
 * reads the typed requests (`for await`; one that does not fit throws `invalid_input`
 * there) and resolves with the typed reply (`internal` when it does not fit).
 */
export function serveClientStream<I, O>(
  methods: Methods,
  fullName: string,
  handler: (requests: AsyncIterable<I>, ctx: CallContext) => Promise<O> | O,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  info: ServeInfo,
): void {
  methods.addClientStream(
    fullName,
    async (requests, ctx) => encodeReply(output, await handler(decodedRequests(requests, input), ctx), "reply", fullName),
    info,
  );
}

/**
 * Adds a typed bidirectional handler for `fullName` to `methods`: `handler(requests,
 * ctx)` reads the typed requests as for {@link serveClientStream} and returns the
 * replies as for {@link serveServerStream}.
 */
export function serveBidiStream<I, O>(
  methods: Methods,
  fullName: string,
  handler: (requests: AsyncIterable<I>, ctx: CallContext) => AsyncIterable<O> | Iterable<O>,
  input: TypeDesc<I>,
  output: TypeDesc<O>,
  info: ServeInfo,
): void {
  methods.addBidiStream(
    fullName,
    (requests, ctx) => encodedReplies(handler(decodedRequests(requests, input), ctx), output, fullName),
    info,
  );
}
