/**
 * A provider: connects to a runtime, registers the methods it serves, and answers the
 * calls the runtime routes to it — concurrently, with deadlines and cancellation.
 */

import type * as net from "node:net";

import type { ConnectionEvent } from "./connection.js";
import type { MethodEntry } from "./frame.js";
import type { Settings } from "./handshake.js";
import type { WireMeta } from "./meta.js";
import { splitFullName } from "./names.js";
import { Payload } from "./payload.js";
import { type ConnectOptions, Peer } from "./peer.js";
import { PolycallError } from "./status.js";
import { MessageStream, PENDING, type StreamSource, iteratorOf, settledSoon, stopIterator, toPayload } from "./stream.js";
import { Span, type SpanContext, runWithTrace, spanContextOf } from "./trace.js";

/** What a handler knows about the call it serves. */
export interface CallContext {
  /** The service called. */
  service: string;
  /** The method called. */
  method: string;
  /** Deadline, priority, trace context and the rest, as received. */
  meta: WireMeta;
  /** When the call's deadline passes (`performance.now()` milliseconds), if it has one. */
  deadline: number | undefined;
  /** Aborted when the caller cancels, the deadline passes or the connection ends. */
  signal: AbortSignal;
  /**
   * The server span's context when the call carries a trace: the handler runs inside it
   * (`currentTrace()`), so the calls it makes continue the trace under this span.
   */
  trace?: SpanContext | undefined;
}

/** Serves one method: resolves with the reply or throws a {@link PolycallError}. */
export type Handler = (request: Payload, ctx: CallContext) => Promise<Payload | Uint8Array> | Payload | Uint8Array;

/**
 * Serves a server-stream method: one request, a stream of replies — typically an
 * `async function*` that yields each reply; returning ends the stream (END), throwing
 * fails it (ERROR after the replies already yielded). It is pulled no faster than the
 * caller's window allows, and stopped (`return()`, `ctx.signal` aborted) when the
 * caller cancels.
 */
export type ServerStreamHandler = (request: Payload, ctx: CallContext) => StreamSource;

/**
 * Serves a client-stream method: reads the stream of requests (`for await`) and resolves
 * with the one reply. Replying before the requests end ends the call.
 */
export type ClientStreamHandler = (requests: MessageStream, ctx: CallContext) => Promise<Payload | Uint8Array> | Payload | Uint8Array;

/**
 * Serves a bidirectional method: reads the stream of requests and yields the stream of
 * replies (an `async function*`), both at once.
 */
export type BidiStreamHandler = (requests: MessageStream, ctx: CallContext) => StreamSource;

/** How a method streams: its REGISTER flags (bit 1 request stream, bit 2 reply stream). */
export type MethodKind = "unary" | "serverStream" | "clientStream" | "bidiStream";

type StreamEntry =
  | { kind: "serverStream"; handler: ServerStreamHandler; info: MethodInfo }
  | { kind: "clientStream"; handler: ClientStreamHandler; info: MethodInfo }
  | { kind: "bidiStream"; handler: BidiStreamHandler; info: MethodInfo };

/** What a method says about itself in the registration (shown by `sys.describe`). */
export interface MethodInfo {
  /** One line for people. */
  summary?: string | undefined;
  /** Input schema hint. */
  input?: string | undefined;
  /** Output schema hint. */
  output?: string | undefined;
  /** Calls may be retried safely. */
  idempotent?: boolean | undefined;
}

/** The methods a provider serves, before it connects. */
export class Methods {
  /** Handlers of unary methods by full name. */
  readonly handlers = new Map<string, { handler: Handler; info: MethodInfo }>();
  /** Handlers of streaming methods by full name. */
  readonly streamHandlers = new Map<string, StreamEntry>();
  private readonly order: string[] = [];

  private claim(fullName: string): void {
    if (splitFullName(fullName) === null) {
      throw new PolycallError("invalid_input", `${JSON.stringify(fullName)} is not a valid SERVICE.METHOD name`);
    }
    if (this.handlers.has(fullName) || this.streamHandlers.has(fullName)) {
      throw new PolycallError("already_exists", `${fullName} has a handler already`);
    }
    this.order.push(fullName);
  }

  /** Adds `SERVICE.METHOD`. Throws `invalid_input` for an invalid name, `already_exists` for a second handler. */
  add(fullName: string, handler: Handler, info: MethodInfo = {}): this {
    this.claim(fullName);
    this.handlers.set(fullName, { handler, info });
    return this;
  }

  /** Adds a server-stream method (one request, a stream of replies); REGISTER flag bit 2. */
  addServerStream(fullName: string, handler: ServerStreamHandler, info: MethodInfo = {}): this {
    this.claim(fullName);
    this.streamHandlers.set(fullName, { kind: "serverStream", handler, info });
    return this;
  }

  /** Adds a client-stream method (a stream of requests, one reply); REGISTER flag bit 1. */
  addClientStream(fullName: string, handler: ClientStreamHandler, info: MethodInfo = {}): this {
    this.claim(fullName);
    this.streamHandlers.set(fullName, { kind: "clientStream", handler, info });
    return this;
  }

  /** Adds a bidirectional method (streams both ways); REGISTER flag bits 1 and 2. */
  addBidiStream(fullName: string, handler: BidiStreamHandler, info: MethodInfo = {}): this {
    this.claim(fullName);
    this.streamHandlers.set(fullName, { kind: "bidiStream", handler, info });
    return this;
  }

  /** How `fullName` streams, or undefined when it has no handler. */
  kindOf(fullName: string): MethodKind | undefined {
    if (this.handlers.has(fullName)) return "unary";
    return this.streamHandlers.get(fullName)?.kind;
  }

  /** The REGISTER entries, in the order the methods were added. */
  entries(): MethodEntry[] {
    return this.order.map((name) => {
      const s = this.streamHandlers.get(name);
      const info = s?.info ?? this.handlers.get(name)!.info;
      const e: MethodEntry = {
        name,
        idempotent: info.idempotent ?? false,
        summary: info.summary ?? "",
        input: info.input ?? "",
        output: info.output ?? "",
      };
      if (s !== undefined) {
        e.requestStream = s.kind !== "serverStream";
        e.replyStream = s.kind !== "clientStream";
      }
      return e;
    });
  }
}

interface Running {
  controller: AbortController;
  timer: NodeJS.Timeout | undefined;
  /** The request stream a streaming handler reads. */
  requests: MessageStream | null;
  /** The reply producer of a streaming handler, stopped on cancel. */
  replies: AsyncIterator<Payload | Uint8Array> | null;
  /** The server span, when the call carries a trace. */
  span: Span | null;
}

/** The reason a call's bookkeeping ends with when its handler answered. */
const answered = () => new PolycallError("ok", "answered");

/**
 * A connection to a runtime that serves methods (and may call others).
 *
 * ```ts
 * const methods = new Methods().add("calc.add", (req) => Payload.json({ sum: req.json<{a: number; b: number}>().a + 1 }));
 * const provider = await Provider.connect("127.0.0.1:7464", methods);
 * await provider.closed; // serves until the connection ends
 * ```
 */
export class Provider extends Peer {
  private readonly running = new Map<number, Running>();
  private methods: Methods = new Methods();

  private constructor(socket: net.Socket, settings: Settings, fragmentSize: number) {
    super(socket, settings, fragmentSize);
  }

  /** Connects to `endpoint`, registers every method of `methods`, and serves them. */
  static async connect(endpoint: string, methods: Methods, options: ConnectOptions = {}): Promise<Provider> {
    const p = await Peer.establish(endpoint, options, (s, settings, frag) => new Provider(s, settings, frag));
    p.methods = methods;
    try {
      await p.register(methods.entries());
    } catch (e) {
      await p.close("registration failed");
      throw e;
    }
    return p;
  }

  /** Announces `entries` to the runtime (resolves once accepted). */
  private register(entries: MethodEntry[]): Promise<void> {
    return this.admin(() => this.conn.register(entries));
  }

  /** Withdraws methods by full name; their handlers stay until the connection ends. */
  unregister(names: string[]): Promise<void> {
    return this.admin(() => this.conn.unregister(names));
  }

  private admin(open: () => number): Promise<void> {
    let id: number;
    try {
      id = open();
    } catch (e) {
      return Promise.reject(e);
    }
    this.scheduleFlush();
    return new Promise((resolve, reject) => this.admins.set(id, { resolve, reject }));
  }

  private readonly admins = new Map<number, { resolve: () => void; reject: (e: PolycallError) => void }>();

  /** Calls being served now. */
  get serving(): number {
    return this.running.size;
  }

  protected override dispatch(e: ConnectionEvent): void {
    switch (e.type) {
      case "call":
        this.serve(e.callId, e.service, e.method, e.payload, e.meta);
        return;
      case "streamCall":
        this.serveStream(e.callId, e.service, e.method, e.meta);
        return;
      case "message": {
        const requests = this.running.get(e.callId)?.requests;
        if (requests !== undefined && requests !== null) return requests.push(e.payload, e.wireLen);
        break;
      }
      case "end": {
        const requests = this.running.get(e.callId)?.requests;
        if (requests !== undefined && requests !== null) return requests.end();
        break;
      }
      case "cancelled":
        this.stop(e.callId, new PolycallError("cancelled", "the caller cancelled the call"));
        return;
      case "reply":
      case "failed": {
        const a = this.admins.get(e.callId);
        if (a !== undefined) {
          this.admins.delete(e.callId);
          if (e.type === "reply") a.resolve();
          else a.reject(e.error);
          return;
        }
        break;
      }
      case "closed":
        for (const id of [...this.running.keys()]) this.stop(id, new PolycallError("unavailable", "the connection ended"));
        for (const [, a] of this.admins) a.reject(new PolycallError("unavailable", `connection ended: ${e.error.detail}`));
        this.admins.clear();
        break;
      default:
        break;
    }
    super.dispatch(e);
  }

  /**
   * The call is over for its handler: `reason` aborts its signal; `outcome` (a failure,
   * or null) ends its server span.
   */
  private stop(callId: number, reason: PolycallError, outcome: PolycallError | null = reason.code === "ok" ? null : reason): void {
    const r = this.running.get(callId);
    if (r === undefined) return;
    this.running.delete(callId);
    r.span?.end(outcome);
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.controller.abort(reason);
    r.requests?.fail(reason, true);
    stopIterator(r.replies);
  }

  /** A request stream for a streaming handler of call `callId`. */
  private requestStream(callId: number): MessageStream {
    return new MessageStream(
      (n) => {
        this.conn.streamTaken(callId, n);
        this.scheduleFlush();
      },
      () => undefined, // the handler stopped reading: later requests are dropped (their credit returned)
    );
  }

  private serve(callId: number, service: string, method: string, payload: Payload, meta: WireMeta): void {
    const full = `${service}.${method}`;
    const stream = this.methods.streamHandlers.get(full);
    if (stream !== undefined) {
      // One request: a server stream, or a request stream of one message.
      if (stream.kind === "serverStream") {
        const { running, ctx } = this.begin(callId, service, method, meta, null);
        return void runWithTrace(ctx.trace, () => this.sendReplies(callId, running, () => stream.handler(payload, ctx), full));
      }
      const requests = this.requestStream(callId);
      requests.push(payload, 0);
      requests.end();
      return this.serveRequests(callId, service, method, meta, requests, stream);
    }
    const entry = this.methods.handlers.get(full);
    if (entry === undefined) {
      this.respondError(callId, new PolycallError("unknown_method", `this provider serves no method ${service}.${method}`));
      return;
    }
    const { running, ctx } = this.begin(callId, service, method, meta, null);
    let result: Promise<Payload | Uint8Array>;
    try {
      result = Promise.resolve(runWithTrace(ctx.trace, () => entry.handler(payload, ctx)));
    } catch (e) {
      result = Promise.reject(e);
    }
    this.answer(callId, running, result, full);
  }

  private serveStream(callId: number, service: string, method: string, meta: WireMeta): void {
    const full = `${service}.${method}`;
    const stream = this.methods.streamHandlers.get(full);
    if (stream === undefined || stream.kind === "serverStream") {
      const error = this.methods.kindOf(full) === undefined
        ? new PolycallError("unknown_method", `this provider serves no method ${service}.${method}`)
        : new PolycallError("unsupported", `${full} takes one request, not a stream of requests`);
      this.respondError(callId, error);
      return;
    }
    this.serveRequests(callId, service, method, meta, this.requestStream(callId), stream);
  }

  private serveRequests(
    callId: number,
    service: string,
    method: string,
    meta: WireMeta,
    requests: MessageStream,
    stream: Extract<StreamEntry, { kind: "clientStream" | "bidiStream" }>,
  ): void {
    const full = `${service}.${method}`;
    const { running, ctx } = this.begin(callId, service, method, meta, requests);
    if (stream.kind === "bidiStream") {
      void runWithTrace(ctx.trace, () => this.sendReplies(callId, running, () => stream.handler(requests, ctx), full));
      return;
    }
    let result: Promise<Payload | Uint8Array>;
    try {
      result = Promise.resolve(runWithTrace(ctx.trace, () => stream.handler(requests, ctx)));
    } catch (e) {
      result = Promise.reject(e);
    }
    this.answer(callId, running, result, full);
  }

  /** The error a handler's failure is answered with. */
  private handlerError(err: unknown, full: string): PolycallError {
    return err instanceof PolycallError
      ? err
      : new PolycallError("internal", `the handler of ${full} failed: ${err instanceof Error ? err.message : String(err)}`);
  }

  /** Answers with one reply when `result` settles (unless the call ended meanwhile). */
  private answer(callId: number, running: Running, result: Promise<Payload | Uint8Array>, full: string): void {
    result.then(
      (reply) => {
        if (this.running.get(callId) !== running) return;
        this.stop(callId, answered());
        this.respond(callId, reply instanceof Payload ? reply : Payload.raw(reply));
      },
      (err: unknown) => {
        if (this.running.get(callId) !== running) return;
        const error = this.handlerError(err, full);
        this.stop(callId, answered(), error);
        this.respondError(callId, error);
      },
    );
  }

  /**
   * Answers with a stream of replies pulled from the handler's producer: REPLY(STREAM)
   * with the first if it is ready (else REPLY(STREAM, EMPTY) at once), DATA per further
   * reply, END when it returns, ERROR (after what it yielded) when it throws. The
   * producer is not pulled while the stream's unsent bytes exceed one window.
   */
  private async sendReplies(callId: number, running: Running, produce: () => StreamSource, full: string): Promise<void> {
    const alive = () => this.running.get(callId) === running;
    let opened = false;
    try {
      const it = iteratorOf(produce());
      running.replies = it;
      if (!alive()) return stopIterator(it);
      const first = it.next();
      let r: IteratorResult<Payload | Uint8Array> | typeof PENDING | null = await settledSoon(first);
      if (!alive()) return;
      if (r === PENDING || r.done === true) {
        this.conn.sendReplyStream(callId, null);
        opened = true;
        this.scheduleFlush();
        if (r === PENDING) r = await first;
      } else {
        this.conn.sendReplyStream(callId, toPayload(r.value));
        opened = true;
        this.scheduleFlush();
        r = null;
      }
      const window = this.conn.negotiated!.peerLimits.initialWindow;
      for (;;) {
        if (r === null) {
          await this.backlogWithin(callId, window);
          if (!alive()) return;
          r = await it.next();
        }
        if (!alive()) return;
        if (r.done === true) {
          this.stop(callId, answered());
          this.conn.sendEnd(callId);
          this.scheduleFlush();
          return;
        }
        this.conn.sendMessage(callId, toPayload(r.value));
        this.scheduleFlush();
        r = null;
      }
    } catch (err) {
      if (!alive()) return;
      const error = this.handlerError(err, full);
      this.stop(callId, answered(), error);
      this.respondError(callId, error, opened);
    }
  }

  /** Bookkeeping of a call being served: its deadline, abort signal, server span and context. */
  private begin(
    callId: number,
    service: string,
    method: string,
    meta: WireMeta,
    requests: MessageStream | null,
  ): { running: Running; ctx: CallContext } {
    const controller = new AbortController();
    // A call that carries a trace is served in a server span under the caller's (the runtime's) span.
    const span = meta.trace === undefined ? null : new Span(this.spanRecorder, "server", service, method, spanContextOf(meta.trace));
    const running: Running = { controller, timer: undefined, requests, replies: null, span };
    let deadline: number | undefined;
    if (meta.timeoutUs !== undefined) {
      const ms = Number(meta.timeoutUs) / 1000;
      deadline = performance.now() + ms;
      running.timer = setTimeout(() => {
        const error = new PolycallError("deadline_exceeded", "the handler did not finish before the call's deadline");
        this.stop(callId, error);
        this.respondError(callId, error);
      }, Math.min(ms, 2 ** 31 - 1));
    }
    this.running.set(callId, running);
    const ctx: CallContext = { service, method, meta, deadline, signal: controller.signal, trace: span?.context };
    return { running, ctx };
  }
}
