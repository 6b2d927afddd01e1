/**
 * One connection to a polycall peer over a `net` socket: the connection state machine
 * driven by socket events, calls as promises, and (for providers) incoming calls
 * dispatched to handlers.
 */

import * as net from "node:net";

import { type ConnectionEvent, Connection, ProtoError, defaultConnectionConfig } from "./connection.js";
import { FEATURES, type Negotiated, type Settings, defaultSettings } from "./handshake.js";
import type { Priority, TraceContext, WireMeta } from "./meta.js";
import { Payload } from "./payload.js";
import { PolycallError } from "./status.js";
import { MessageStream, PENDING, type StreamSource, iteratorOf, settledSoon, stopIterator, toPayload } from "./stream.js";
import { type ExportResult, Span, type SpanRecord, SpanRecorder, type SpanRecorderOptions, traceStorage } from "./trace.js";

/** Options of one call. */
export interface CallOptions {
  /** Time the call may take, in milliseconds; after it the call fails with `deadline_exceeded` and is cancelled. */
  deadlineMs?: number | undefined;
  /** Priority class (default normal). */
  priority?: Priority | undefined;
  /** Aborting cancels the call (a CANCEL frame) and fails it with `cancelled`. */
  signal?: AbortSignal | undefined;
  /** The call may be retried safely. */
  idempotent?: boolean | undefined;
  /** Deduplication key. */
  idempotencyKey?: string | undefined;
  /**
   * W3C trace context to send as is. Without it, a call made inside a trace context
   * (`currentTrace()`: a handler serving a traced call, `runWithTrace`) opens a client
   * span under it and carries that; outside one, the call carries no trace.
   */
  trace?: TraceContext | undefined;
}

/** Options of a connection. */
export interface ConnectOptions {
  /** Offer the CRC32C frame trailer (default false: TCP checksums suffice on loopback; the cost is one table lookup per byte). */
  crc32c?: boolean | undefined;
  /** Fail connecting after this many milliseconds (default 10 000). */
  connectTimeoutMs?: number | undefined;
  /** Largest payload fragment per frame (default 64 KiB). */
  fragmentSize?: number | undefined;
  /** Protocol settings to change (limits, agent, versions). */
  settings?: Partial<Settings> | undefined;
  /** The service name this program's spans are recorded under (1..=128 bytes; default `polycall-typescript`). */
  serviceName?: string | undefined;
  /** How spans are buffered and exported (`sys.trace.export` on this connection), and hooks to see them or their export failures. */
  tracing?: Omit<SpanRecorderOptions, "service"> | undefined;
}

/** Time one `sys.trace.export` call may take, in milliseconds. */
const EXPORT_DEADLINE_MS = 2000;

/** Where a runtime listens: `HOST:PORT`, `[V6]:PORT`, `tcp://HOST:PORT` or `unix:/path`. */
export function parseEndpoint(endpoint: string): net.NetConnectOpts {
  if (endpoint.startsWith("unix:")) return { path: endpoint.slice("unix:".length) };
  const rest = endpoint.startsWith("tcp://") ? endpoint.slice("tcp://".length) : endpoint;
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(rest);
  if (!m) {
    throw new PolycallError("invalid_input", `endpoint ${JSON.stringify(endpoint)} is not HOST:PORT, [V6]:PORT or unix:/path`);
  }
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new PolycallError("invalid_input", `endpoint ${JSON.stringify(endpoint)}: port out of range`);
  return { host: m[1] ?? m[2]!, port };
}

interface Pending {
  resolve: (p: Payload) => void;
  reject: (e: PolycallError) => void;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** Which streaming call a {@link LocalStream} is. */
type StreamKind = "server" | "client" | "bidi";

/** A streaming call this side opened. */
interface LocalStream {
  kind: StreamKind;
  /** The call id, once the CALL is out. */
  id: number | null;
  /** Over (answered, failed, cancelled); nothing more is delivered. */
  done: boolean;
  /** Replies (server stream, bidi). */
  replies: MessageStream | null;
  /** The reply (client stream). */
  resolve: ((p: Payload) => void) | null;
  reject: ((e: PolycallError) => void) | null;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  /** The request producer (client stream, bidi), stopped when the call ends. */
  requests: AsyncIterator<Payload | Uint8Array> | null;
  /** The client span, when the call was made inside a trace context. */
  span: Span | null;
}

/** A failure of the application's own request producer, as the call's error. */
function producerError(e: unknown): PolycallError {
  if (e instanceof PolycallError) return e;
  return new PolycallError("cancelled", `the request stream failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}

/** Bytes buffered in the socket above which no more payload is framed until it drains. */
const WRITE_HIGH_WATER = 1024 * 1024;

/** Time left of a deadline in microseconds, for the metadata entry. */
function metaOf(o: CallOptions): WireMeta {
  const m: WireMeta = {};
  if (o.deadlineMs !== undefined) m.timeoutUs = BigInt(Math.max(0, Math.round(o.deadlineMs * 1000)));
  if (o.priority !== undefined && o.priority !== "normal") m.priority = o.priority;
  if (o.trace !== undefined) m.trace = o.trace;
  if (o.idempotent) m.idempotent = true;
  if (o.idempotencyKey !== undefined) m.idempotencyKey = o.idempotencyKey;
  return m;
}

/**
 * A connection to a polycall runtime (or any polycall server) with calls as promises.
 * {@link Client} and {@link Provider} are built on it.
 */
export class Peer {
  /** The state machine. */
  protected readonly conn: Connection;
  private readonly pending = new Map<number, Pending>();
  private flushScheduled = false;
  private waitingDrain = false;
  private closedError: PolycallError | null = null;
  private readonly closedPromise: Promise<PolycallError>;
  private resolveClosed!: (e: PolycallError) => void;
  private readonly pongs = new Map<bigint, () => void>();
  private pingSeq = 0n;
  private readonly streams = new Map<number, LocalStream>();
  private readonly backlogWaiters = new Map<number, { limit: number; resolve: () => void }[]>();
  /** This connection's spans, exported through it (set by {@link Peer.establish}, before any event). */
  private recorder!: SpanRecorder;

  protected constructor(
    private readonly socket: net.Socket,
    settings: Settings,
    fragmentSize: number,
  ) {
    const config = defaultConnectionConfig(settings);
    config.fragmentSize = fragmentSize;
    this.conn = new Connection("client", config);
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (e) => this.onTransportEnd(`connection error: ${e.message}`));
    socket.on("close", () => this.onTransportEnd("the peer closed the connection"));
    socket.on("drain", () => {
      this.waitingDrain = false;
      this.flush();
    });
  }

  /** Opens the socket and completes the handshake. */
  protected static async establish<T extends Peer>(
    endpoint: string,
    options: ConnectOptions,
    make: (socket: net.Socket, settings: Settings, fragmentSize: number) => T,
  ): Promise<T> {
    const target = parseEndpoint(endpoint);
    const settings = defaultSettings(options.settings);
    if (options.crc32c) settings.features |= FEATURES.crc32c;
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    // Made first, as it checks the service name; it exports only once `peer` is connected.
    const recorder = new SpanRecorder((spans) => peer.exportSpans(spans), { ...options.tracing, service: options.serviceName });
    // The socket's events (incoming calls among them) belong to no caller's trace.
    const socket = traceStorage.exit(() => net.connect(target));
    const peer = make(socket, settings, options.fragmentSize ?? 64 * 1024);
    peer.recorder = recorder;
    const connected = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new PolycallError("unavailable", `no handshake with ${endpoint} within ${timeoutMs} ms`));
        socket.destroy();
      }, timeoutMs);
      peer.onConnected = () => {
        clearTimeout(timer);
        resolve();
      };
      void peer.closedPromise.then((e) => {
        clearTimeout(timer);
        reject(
          new PolycallError(e.code === "ok" ? "unavailable" : e.code, `cannot connect to ${endpoint}: ${e.detail}`, {
            cause: e,
            supportedVersions: e.supportedVersions,
          }),
        );
      });
    });
    socket.once("connect", () => peer.flush());
    await connected;
    return peer;
  }

  private onConnected: (() => void) | undefined;

  /** What the handshake agreed. */
  get negotiated(): Negotiated {
    return this.conn.negotiated!;
  }

  /** Resolves when the connection ends, with why (`ok` for a close this side asked for). */
  get closed(): Promise<PolycallError> {
    return this.closedPromise;
  }

  /** Whether the connection ended. */
  get isClosed(): boolean {
    return this.closedError !== null;
  }

  /** The service name this connection's spans are recorded under. */
  get serviceName(): string {
    return this.recorder.service;
  }

  /** The recorder of this connection's spans (served and made calls of sampled traces). */
  get spanRecorder(): SpanRecorder {
    return this.recorder;
  }

  /**
   * Exports the spans recorded so far now (they otherwise leave in batches of 64, or
   * about 200 ms after the first); resolves when they are out. Never rejects: export
   * failures go to the `tracing.onError` option, or the first one to `console.warn`.
   */
  flushSpans(): Promise<void> {
    return this.recorder.flush();
  }

  /** Hands spans to the runtime's exporter: `sys.trace.export`, itself never traced. */
  private async exportSpans(spans: SpanRecord[]): Promise<ExportResult> {
    const r = await this.callJson<Partial<ExportResult>>("sys.trace", "export", { spans }, { deadlineMs: EXPORT_DEADLINE_MS });
    return { accepted: typeof r.accepted === "number" ? r.accepted : spans.length, recording: r.recording !== false };
  }

  /**
   * The client span of a call made now: none with an explicit trace or outside any trace
   * context; else a new span under the current one, whose trace the call carries.
   */
  private traced(service: string, method: string, options: CallOptions): { options: CallOptions; span: Span | null } {
    if (options.trace !== undefined) return { options, span: null };
    const current = traceStorage.getStore();
    if (current === undefined) return { options, span: null };
    const span = new Span(this.recorder, "client", service, method, current);
    return { options: { ...options, trace: span.outgoing }, span };
  }

  /** Calls this side has open (streaming ones included). */
  get inFlight(): number {
    return this.pending.size + this.streams.size;
  }

  /**
   * Calls `service.method` with `payload` and resolves with the reply's payload; fails
   * with a {@link PolycallError} (the callee's, or `deadline_exceeded`, `cancelled`,
   * `unavailable` when the connection ends).
   */
  call(service: string, method: string, payload: Payload | Uint8Array, options: CallOptions = {}): Promise<Payload> {
    const { options: o, span } = this.traced(service, method, options);
    const reply = this.unary(service, method, payload, o);
    return span === null ? reply : span.track(reply);
  }

  private unary(service: string, method: string, payload: Payload | Uint8Array, options: CallOptions): Promise<Payload> {
    const p = payload instanceof Payload ? payload : Payload.raw(payload);
    if (this.closedError !== null) {
      return Promise.reject(new PolycallError("unavailable", `the connection is closed: ${this.closedError.detail}`));
    }
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(new PolycallError("cancelled", "the call was aborted before it was sent"));
    let id: number;
    try {
      id = this.conn.openCall(service, method, p, metaOf(options));
    } catch (e) {
      return Promise.reject(e);
    }
    this.scheduleFlush();
    return new Promise<Payload>((resolve, reject) => {
      const entry: Pending = { resolve, reject, timer: undefined, signal, onAbort: undefined };
      if (options.deadlineMs !== undefined) {
        const ms = options.deadlineMs;
        entry.timer = setTimeout(() => {
          this.abandon(id, new PolycallError("deadline_exceeded", `the call's deadline of ${ms} ms passed before its reply arrived`));
        }, ms);
      }
      if (signal !== undefined) {
        entry.onAbort = () => this.abandon(id, new PolycallError("cancelled", "the caller aborted the call"));
        signal.addEventListener("abort", entry.onAbort, { once: true });
      }
      this.pending.set(id, entry);
    });
  }

  /** Calls with a JSON request and decodes the JSON reply. */
  async callJson<R = unknown>(service: string, method: string, value: unknown, options: CallOptions = {}): Promise<R> {
    const reply = await this.call(service, method, Payload.json(value), options);
    return reply.json<R>();
  }

  /**
   * A server stream: calls `service.method` with one request and reads its replies.
   * The call is opened now; iterate the result to read the replies (`for await`). The
   * iteration ends when the callee ends its stream, throws a {@link PolycallError} when
   * the call fails (the callee's error, `deadline_exceeded` — the deadline covers the
   * whole stream —, `cancelled`, `unavailable`), and leaving it early cancels the call.
   */
  callServerStream(service: string, method: string, payload: Payload | Uint8Array, options: CallOptions = {}): MessageStream {
    const { options: o, span } = this.traced(service, method, options);
    const st = this.newStream("server", o, span);
    const replies = st.replies!;
    if (st.done) return replies;
    if (!this.conn.streaming) {
      this.finishStream(st, new PolycallError("unsupported", "streaming calls were not negotiated with the peer (it did not offer feature bit 1)"), true);
      return replies;
    }
    try {
      const id = this.conn.openCall(service, method, payload instanceof Payload ? payload : Payload.raw(payload), metaOf(o));
      this.opened(st, id);
    } catch (e) {
      this.finishStream(st, e instanceof PolycallError ? e : new PolycallError("internal", String(e)), true);
    }
    return replies;
  }

  /**
   * A client stream: calls `service.method` with a stream of requests and resolves with
   * its one reply. `requests` is pulled as the stream's window allows; the call opens
   * with the first request (or without one when none is ready yet) and ends its stream
   * when `requests` is exhausted. Fails like {@link Peer.call}; a producer that throws
   * cancels the call.
   */
  callClientStream(service: string, method: string, requests: StreamSource, options: CallOptions = {}): Promise<Payload> {
    const { options: o, span } = this.traced(service, method, options);
    return new Promise<Payload>((resolve, reject) => {
      const st = this.newStream("client", o, span, resolve, reject);
      if (!st.done) this.sendRequests(st, service, method, requests, o);
    });
  }

  /**
   * A bidirectional stream: calls `service.method` with a stream of requests and reads
   * its stream of replies; both directions flow at once. Requests are sent as for
   * {@link Peer.callClientStream}, replies read as for {@link Peer.callServerStream}.
   */
  callBidiStream(service: string, method: string, requests: StreamSource, options: CallOptions = {}): MessageStream {
    const { options: o, span } = this.traced(service, method, options);
    const st = this.newStream("bidi", o, span);
    if (!st.done) this.sendRequests(st, service, method, requests, o);
    return st.replies!;
  }

  /** Sets up a streaming call's bookkeeping, deadline and abort signal. */
  private newStream(
    kind: StreamKind,
    options: CallOptions,
    span: Span | null,
    resolve: ((p: Payload) => void) | null = null,
    reject: ((e: PolycallError) => void) | null = null,
  ): LocalStream {
    const st: LocalStream = {
      kind,
      id: null,
      done: false,
      replies: null,
      resolve,
      reject,
      timer: undefined,
      signal: options.signal,
      onAbort: undefined,
      requests: null,
      span,
    };
    if (kind !== "client") {
      st.replies = new MessageStream(
        (n) => {
          if (st.id === null) return;
          this.conn.streamTaken(st.id, n);
          this.scheduleFlush();
        },
        () => this.abandonStream(st, new PolycallError("cancelled", "the caller stopped reading the reply stream")),
      );
    }
    if (this.closedError !== null) {
      this.finishStream(st, new PolycallError("unavailable", `the connection is closed: ${this.closedError.detail}`), true);
      return st;
    }
    if (options.signal?.aborted) {
      this.finishStream(st, new PolycallError("cancelled", "the call was aborted before it was sent"), true);
      return st;
    }
    if (options.deadlineMs !== undefined) {
      const ms = options.deadlineMs;
      st.timer = setTimeout(() => {
        this.abandonStream(st, new PolycallError("deadline_exceeded", `the call's deadline of ${ms} ms passed before its stream completed`));
      }, ms);
    }
    if (options.signal !== undefined) {
      st.onAbort = () => this.abandonStream(st, new PolycallError("cancelled", "the caller aborted the call"));
      options.signal.addEventListener("abort", st.onAbort, { once: true });
    }
    return st;
  }

  private opened(st: LocalStream, id: number): void {
    st.id = id;
    this.streams.set(id, st);
    this.scheduleFlush();
  }

  /**
   * Opens a call with a request stream and feeds it from `source`: the first request
   * goes with the CALL if the producer has it ready, else the CALL opens the stream
   * empty; each next request is pulled once the stream's unsent bytes are within one
   * window; END follows the last.
   */
  private sendRequests(st: LocalStream, service: string, method: string, source: StreamSource, options: CallOptions): void {
    const started = performance.now();
    const meta = (): WireMeta =>
      metaOf(options.deadlineMs === undefined ? options : { ...options, deadlineMs: Math.max(0, options.deadlineMs - (performance.now() - started)) });
    void (async () => {
      let it: AsyncIterator<Payload | Uint8Array>;
      let first: Promise<IteratorResult<Payload | Uint8Array>>;
      let r: IteratorResult<Payload | Uint8Array> | typeof PENDING | null;
      try {
        it = iteratorOf(source);
        st.requests = it;
        first = it.next();
        r = await settledSoon(first);
      } catch (e) {
        this.finishStream(st, producerError(e), true);
        return;
      }
      if (st.done) return stopIterator(it);
      let id: number;
      try {
        const firstPayload = r === PENDING || r.done === true ? null : toPayload(r.value);
        id = this.conn.openStreamCall(service, method, firstPayload, meta());
      } catch (e) {
        this.finishStream(st, e instanceof PolycallError ? e : new PolycallError("internal", String(e)), true);
        return stopIterator(it);
      }
      this.opened(st, id);
      try {
        if (r === PENDING) r = await first;
        else if (r.done !== true) r = null;
        const window = this.conn.negotiated!.peerLimits.initialWindow;
        for (;;) {
          if (r === null) {
            await this.backlogWithin(id, window);
            if (st.done) break;
            r = await it.next();
          }
          if (st.done) break;
          if (r.done === true) {
            this.conn.sendEnd(id);
            this.scheduleFlush();
            break;
          }
          this.conn.sendMessage(id, toPayload(r.value));
          this.scheduleFlush();
          r = null;
        }
      } catch (e) {
        this.abandonStream(st, producerError(e));
      }
    })();
  }

  /**
   * Resolves once this side's unsent bytes on `callId` are at most `limit` (or the call's
   * output is gone, or the connection ended): a stream producer's backpressure.
   */
  protected backlogWithin(callId: number, limit: number): Promise<void> {
    if (this.closedError !== null || this.conn.streamBacklog(callId) <= limit) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.backlogWaiters.get(callId) ?? [];
      list.push({ limit, resolve });
      this.backlogWaiters.set(callId, list);
    });
  }

  private wakeBacklogWaiters(): void {
    if (this.backlogWaiters.size === 0) return;
    for (const [id, list] of [...this.backlogWaiters]) {
      const backlog = this.conn.streamBacklog(id);
      const keep = list.filter((w) => {
        if (this.closedError === null && backlog > w.limit) return true;
        w.resolve();
        return false;
      });
      if (keep.length === 0) this.backlogWaiters.delete(id);
      else this.backlogWaiters.set(id, keep);
    }
  }

  /** Gives up on a streaming call locally: cancels it on the wire (if it is open) and fails it at once. */
  private abandonStream(st: LocalStream, error: PolycallError): void {
    if (st.done) return;
    const id = st.id;
    this.finishStream(st, error, true);
    if (id !== null) {
      try {
        this.conn.cancel(id);
      } catch {
        // the connection is closed: nothing to tell the peer
      }
      this.scheduleFlush();
    }
  }

  /** A streaming call is over: `error` null is success (the reply stream ended). */
  private finishStream(st: LocalStream, error: PolycallError | null, immediate = false): void {
    if (st.done) return;
    st.done = true;
    st.span?.end(error);
    if (st.id !== null) this.streams.delete(st.id);
    if (st.timer !== undefined) clearTimeout(st.timer);
    if (st.onAbort !== undefined) st.signal?.removeEventListener("abort", st.onAbort);
    stopIterator(st.requests);
    if (st.replies !== null) {
      if (error === null) st.replies.end();
      else st.replies.fail(error, immediate);
    }
    if (error !== null) st.reject?.(error);
  }

  /** Events on a streaming call this side opened. */
  private streamEvent(st: LocalStream, e: ConnectionEvent): void {
    switch (e.type) {
      case "replyStream":
        if (st.kind === "client") {
          this.abandonStream(st, new PolycallError("unsupported", "the callee answered with a stream of replies; call it with callBidiStream"));
        }
        return;
      case "message":
        st.replies?.push(e.payload, e.wireLen);
        return;
      case "end":
        this.finishStream(st, null);
        return;
      case "reply":
        // One reply, not a stream: for a server stream or bidi, a stream of one message.
        if (st.kind === "client") {
          st.resolve?.(e.payload);
        } else {
          st.replies!.push(e.payload, 0);
        }
        this.finishStream(st, null);
        return;
      case "failed":
        this.finishStream(st, e.error);
        return;
      default:
        return;
    }
  }

  /** Round trip of a PING, in milliseconds. */
  ping(timeoutMs = 5000): Promise<number> {
    const opaque = ++this.pingSeq;
    const start = performance.now();
    try {
      this.conn.ping(opaque);
    } catch (e) {
      return Promise.reject(e);
    }
    this.scheduleFlush();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pongs.delete(opaque);
        reject(new PolycallError("deadline_exceeded", `no PONG within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pongs.set(opaque, () => {
        clearTimeout(timer);
        resolve(performance.now() - start);
      });
    });
  }

  /** Closes the connection; calls in flight fail with `unavailable`. */
  async close(reason = "the client closed the connection"): Promise<void> {
    // Best effort: the spans recorded so far leave first (bounded by the export's deadline).
    if (this.closedError === null && this.recorder.pending) await this.recorder.flush();
    if (this.closedError === null) {
      this.conn.close(new PolycallError("ok", reason));
      this.drainEvents();
      this.flush();
      this.socket.end();
    }
    await this.closedPromise;
  }

  /** Stops waiting for a call: cancels it on the wire and fails its promise. */
  private abandon(id: number, error: PolycallError): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.settle(id, p);
    try {
      this.conn.cancel(id);
    } catch {
      // the connection is closed: nothing to tell the peer
    }
    this.scheduleFlush();
    p.reject(error);
  }

  private settle(id: number, p: Pending): void {
    this.pending.delete(id);
    if (p.timer !== undefined) clearTimeout(p.timer);
    if (p.onAbort !== undefined) p.signal?.removeEventListener("abort", p.onAbort);
  }

  private onData(chunk: Buffer): void {
    try {
      this.conn.feed(chunk);
    } catch (e) {
      if (!(e instanceof ProtoError)) throw e;
      // The error frame for the peer is queued: send it, then close.
      this.drainEvents();
      this.flush();
      this.socket.end();
      return;
    }
    this.drainEvents();
    this.flush();
  }

  private onTransportEnd(reason: string): void {
    this.conn.transportClosed(reason);
    this.drainEvents();
    if (!this.socket.destroyed) this.socket.destroy();
  }

  private drainEvents(): void {
    for (let e = this.conn.pollEvent(); e !== undefined; e = this.conn.pollEvent()) this.dispatch(e);
  }

  /** Handles one event; providers override to serve calls. */
  protected dispatch(e: ConnectionEvent): void {
    if ("callId" in e) {
      const st = this.streams.get(e.callId);
      if (st !== undefined) return this.streamEvent(st, e);
    }
    switch (e.type) {
      case "connected":
        this.onConnected?.();
        return;
      case "replyStream":
        if (this.pending.has(e.callId)) {
          this.abandon(e.callId, new PolycallError("unsupported", "the callee answered with a stream of replies; call it with callServerStream"));
        }
        return;
      case "reply": {
        const p = this.pending.get(e.callId);
        if (p !== undefined) {
          this.settle(e.callId, p);
          p.resolve(e.payload);
        }
        return;
      }
      case "failed": {
        const p = this.pending.get(e.callId);
        if (p !== undefined) {
          this.settle(e.callId, p);
          p.reject(e.error);
        }
        return;
      }
      case "pong":
        this.pongs.get(e.opaque)?.();
        this.pongs.delete(e.opaque);
        return;
      case "closed": {
        this.closedError = e.error;
        this.recorder.stop();
        const gone = new PolycallError("unavailable", `connection ended before the call completed: ${e.error.detail}`, { cause: e.error });
        for (const [id, p] of [...this.pending]) {
          this.settle(id, p);
          p.reject(gone);
        }
        for (const st of [...this.streams.values()]) this.finishStream(st, gone, true);
        this.wakeBacklogWaiters();
        this.resolveClosed(e.error);
        return;
      }
      case "call":
      case "streamCall":
        // A plain client serves nothing.
        this.respondError(e.callId, new PolycallError("unknown_method", `this client serves no methods (called ${e.service}.${e.method})`));
        return;
      default:
        return;
    }
  }

  /**
   * Answers a call the peer opened with an error (ignored if it was cancelled meanwhile);
   * `afterQueued`: after the reply stream's queued messages.
   */
  protected respondError(callId: number, error: PolycallError, afterQueued = false): void {
    if (!this.conn.isCallOpen(callId)) return;
    try {
      this.conn.sendError(callId, error, afterQueued);
    } catch {
      return;
    }
    this.scheduleFlush();
  }

  /** Answers a call the peer opened (ignored if it was cancelled meanwhile). */
  protected respond(callId: number, payload: Payload): void {
    if (!this.conn.isCallOpen(callId)) return;
    try {
      this.conn.sendReply(callId, payload);
    } catch (e) {
      this.respondError(callId, e instanceof PolycallError ? e : new PolycallError("internal", String(e)));
      return;
    }
    this.scheduleFlush();
  }

  /** Flushes on the next turn of the event loop, so calls made together leave in one write. */
  protected scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Writes what the connection has to send, within the socket's buffer budget. */
  protected flush(): void {
    if (this.socket.destroyed || this.socket.pending || this.socket.connecting) return;
    const budget = Math.max(0, WRITE_HIGH_WATER - this.socket.writableLength);
    const chunks = this.conn.pollTransmit(budget);
    if (chunks.length > 0) {
      this.socket.cork();
      for (const c of chunks) this.socket.write(c);
      this.socket.uncork();
    }
    if (this.conn.canFrameMore && !this.waitingDrain) {
      if (this.socket.writableLength >= WRITE_HIGH_WATER) this.waitingDrain = true;
      else this.scheduleFlush();
    }
    this.wakeBacklogWaiters();
  }
}
