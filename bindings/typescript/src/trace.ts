/**
 * W3C trace context across calls, and spans: the current trace context of the code
 * running (an `AsyncLocalStorage`), the spans of calls served and made, and a
 * {@link SpanRecorder} per connection that hands finished spans to the runtime's
 * exporter (`sys.trace.export`).
 */

import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

import { type TraceContext } from "./meta.js";
import { PolycallError } from "./status.js";
import { clipBytes, utf8Bytes } from "./wire.js";

/** The trace context of the code running now: what calls it makes continue. */
export interface SpanContext {
  /** 16 bytes, not all zero. */
  traceId: Uint8Array;
  /** The current span: 8 bytes, not all zero (the parent of the spans of calls made now). */
  spanId: Uint8Array;
  /** W3C flags (bit 0: sampled). */
  flags: number;
  /** W3C tracestate, passed on unchanged. */
  tracestate?: string | undefined;
}

/**
 * The current trace context. A provider runs each handler of a call that carries a trace
 * inside its server span's context; calls made meanwhile (on any connection) open client
 * spans under it.
 */
export const traceStorage = new AsyncLocalStorage<SpanContext | undefined>();

/** The trace context of the code running now, if any. */
export function currentTrace(): SpanContext | undefined {
  return traceStorage.getStore();
}

/**
 * Runs `fn` with `ctx` as the current trace context (`undefined`: none), e.g. to continue
 * a trace that arrived another way (an HTTP `traceparent`; see {@link spanContextOf}).
 */
export function runWithTrace<T>(ctx: SpanContext | undefined, fn: () => T): T {
  // Without a context to set or clear, `AsyncLocalStorage` is not switched on at all.
  if (ctx === undefined && traceStorage.getStore() === undefined) return fn();
  return traceStorage.run(ctx, fn);
}

/** The context a received trace continues: its parent id becomes the current span. */
export function spanContextOf(t: TraceContext): SpanContext {
  return { traceId: t.traceId, spanId: t.parentId, flags: t.flags, tracestate: t.tracestate };
}

/** Whether W3C `flags` mark the trace sampled (bit 0). */
export function isSampled(flags: number): boolean {
  return (flags & 1) === 1;
}

function randomNonZero(n: number): Uint8Array {
  for (;;) {
    const b = Uint8Array.from(randomBytes(n));
    if (b.some((x) => x !== 0)) return b;
  }
}

/** A random span id: 8 bytes, not all zero. */
export function newSpanId(): Uint8Array {
  return randomNonZero(8);
}

/** A random trace id: 16 bytes, not all zero. */
export function newTraceId(): Uint8Array {
  return randomNonZero(16);
}

/**
 * The context of a new trace (fresh trace and span ids; sampled unless told otherwise),
 * to start one with {@link runWithTrace}.
 */
export function newTraceContext(sampled = true): SpanContext {
  return { traceId: newTraceId(), spanId: newSpanId(), flags: sampled ? 1 : 0 };
}

/** Lowercase hex of bytes. */
export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

/** Which side of a call a span records. */
export type SpanKind = "server" | "client";

/**
 * A finished span as `sys.trace.export` takes it (field names are the wire's).
 * `start_unix_nanos` is a JSON number: exact to about 256 ns at today's dates.
 */
export interface SpanRecord {
  /** 32 lowercase hex digits. */
  trace_id: string;
  /** 16 lowercase hex digits, not all zero. */
  span_id: string;
  /** 16 lowercase hex digits; absent for a root span. */
  parent_id?: string | undefined;
  /** `service.method`. */
  name: string;
  kind: SpanKind;
  /** The recording program's service name (1..=128 bytes). */
  service: string;
  /** Start, Unix nanoseconds. */
  start_unix_nanos: number;
  /** How long it lasted, nanoseconds. */
  duration_nanos: number;
  /** The status code's name when the call failed (`deadline_exceeded`). */
  error?: string | undefined;
  /** At most 64 `[key, value]` pairs; keys up to 128 bytes, values up to 1 KiB. */
  attributes: [string, string][];
}

/** What `sys.trace.export` answers. */
export interface ExportResult {
  /** Spans taken. */
  accepted: number;
  /** Whether the runtime records spans at all (false: nothing more is sent). */
  recording: boolean;
}

/** Hands a batch of spans on (a connection's `sys.trace.export` call). */
export type SpanExporter = (spans: SpanRecord[]) => Promise<ExportResult>;

/** The service name spans are recorded under when none is given. */
export const DEFAULT_SERVICE_NAME = "polycall-typescript";
/** Most spans one `sys.trace.export` call carries. */
export const MAX_EXPORT_BATCH = 1000;

/** Options of a {@link SpanRecorder}. */
export interface SpanRecorderOptions {
  /** `service` of the recorded spans (1..=128 bytes; default {@link DEFAULT_SERVICE_NAME}). */
  service?: string | undefined;
  /** Spans buffered that trigger an export at once (default 64). */
  batchSize?: number | undefined;
  /** Milliseconds after the first buffered span that it is exported at the latest (default 200). */
  flushDelayMs?: number | undefined;
  /** Spans kept while exports lag; more are dropped (default 4096). */
  maxBuffered?: number | undefined;
  /** Sees every batch just before it is exported (a test's or a local sink). */
  onBatch?: ((spans: readonly SpanRecord[]) => void) | undefined;
  /** Called with each export failure; without it the first is logged with `console.warn`. */
  onError?: ((error: unknown) => void) | undefined;
}

/** A clock in Unix nanoseconds: wall time at load, advanced by the monotonic clock. */
const UNIX_AT_LOAD = BigInt(Date.now()) * 1_000_000n;
const HR_AT_LOAD = process.hrtime.bigint();

/** Now, in Unix nanoseconds. */
export function nowUnixNanos(): bigint {
  return UNIX_AT_LOAD + (process.hrtime.bigint() - HR_AT_LOAD);
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const ZEROS = /^0+$/;

function clip(s: string, max: number): string {
  const b = utf8Bytes(s);
  return b.length <= max ? s : Buffer.from(clipBytes(b, max)).toString("utf8");
}

/** Runs `fn` outside any trace context: what the recorder sends is never traced. */
function untraced<T>(fn: () => T): T {
  return traceStorage.getStore() === undefined ? fn() : traceStorage.exit(fn);
}

/**
 * Buffers a connection's finished spans and exports them in batches: at once when
 * `batchSize` are buffered, else about `flushDelayMs` after the first (an unref'd timer,
 * which never keeps the process alive). One export is under way at a time; spans
 * recorded meanwhile wait (up to `maxBuffered`, then they are dropped). When the runtime
 * answers `recording: false` (or does not offer `sys.trace.export`), recording stops for
 * good. Export failures never reach the code whose calls were recorded: they go to
 * `onError`, or the first one to `console.warn`.
 */
export class SpanRecorder {
  /** `service` of the spans recorded here. */
  readonly service: string;
  /** Spans dropped because the buffer was full. */
  dropped = 0;
  private buffer: SpanRecord[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** An export is under way. */
  private sending = false;
  /** What is buffered is due to leave (a full batch, the timer, a flush). */
  private due = false;
  /** Spans buffered so far, and spans whose export is over (or that were dropped when recording stopped). */
  private recorded = 0;
  private settled = 0;
  private waiters: { upTo: number; resolve: () => void }[] = [];
  private on = true;
  private warned = false;
  private readonly batchSize: number;
  private readonly flushDelayMs: number;
  private readonly maxBuffered: number;

  constructor(
    private readonly exporter: SpanExporter,
    private readonly options: SpanRecorderOptions = {},
  ) {
    const service = options.service ?? DEFAULT_SERVICE_NAME;
    const len = Buffer.byteLength(service, "utf8");
    if (len === 0 || len > 128) {
      throw new PolycallError("invalid_input", `the service name of recorded spans must be 1 to 128 bytes, not ${len}`);
    }
    this.service = service;
    this.batchSize = Math.max(1, Math.min(options.batchSize ?? 64, MAX_EXPORT_BATCH));
    this.flushDelayMs = Math.max(0, options.flushDelayMs ?? 200);
    this.maxBuffered = Math.max(this.batchSize, options.maxBuffered ?? 4096);
  }

  /** Whether spans are still recorded (false once the runtime said it does not record, or after {@link stop}). */
  get recording(): boolean {
    return this.on;
  }

  /** Spans buffered and not yet handed to an export. */
  get buffered(): number {
    return this.buffer.length;
  }

  /** Whether anything is buffered or being exported. */
  get pending(): boolean {
    return this.buffer.length > 0 || this.sending;
  }

  /**
   * Buffers a finished span (dropped when not recording). Attributes are clipped to the
   * export's limits; throws `invalid_input` for malformed ids.
   */
  record(span: SpanRecord): void {
    if (!this.on) return;
    if (!HEX32.test(span.trace_id) || ZEROS.test(span.trace_id) || !HEX16.test(span.span_id) || ZEROS.test(span.span_id)) {
      throw new PolycallError("invalid_input", "a span needs a trace_id of 32 and a span_id of 16 lowercase hex digits, not all zero");
    }
    if (span.parent_id !== undefined && (!HEX16.test(span.parent_id) || ZEROS.test(span.parent_id))) {
      throw new PolycallError("invalid_input", "a span's parent_id is 16 lowercase hex digits, not all zero");
    }
    if (this.buffer.length >= this.maxBuffered) {
      this.dropped++;
      return;
    }
    const s: SpanRecord = {
      ...span,
      name: clip(span.name, 256),
      attributes: span.attributes.slice(0, 64).map(([k, v]) => [clip(k, 128), clip(v, 1024)]),
    };
    if (s.parent_id === undefined) delete s.parent_id;
    if (s.error === undefined) delete s.error;
    this.buffer.push(s);
    this.recorded++;
    if (this.buffer.length >= this.batchSize) {
      this.due = true;
      this.pump();
    } else if (this.timer === undefined && !this.sending) {
      this.armTimer();
    }
  }

  /**
   * Exports the spans buffered now without waiting for a full batch or the timer;
   * resolves once they are out (never rejects: failures are reported, not thrown).
   */
  flush(): Promise<void> {
    const upTo = this.recorded;
    if (!this.on || this.settled >= upTo) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.waiters.push({ upTo, resolve }));
    this.due = true;
    this.pump();
    return done;
  }

  /** Stops recording for good and drops what is buffered. */
  stop(): void {
    this.on = false;
    this.settled += this.buffer.length;
    this.buffer = [];
    this.clearTimer();
    this.wake();
  }

  private armTimer(): void {
    this.timer = untraced(() =>
      setTimeout(() => {
        this.timer = undefined;
        this.due = true;
        this.pump();
      }, this.flushDelayMs),
    );
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Resolves the flushes whose spans are all out (all of them once recording stopped). */
  private wake(): void {
    if (this.waiters.length === 0) return;
    const keep = this.waiters.filter((w) => {
      if (this.on && w.upTo > this.settled) return true;
      w.resolve();
      return false;
    });
    this.waiters = keep;
  }

  /** Starts the next export if one is due and none is under way. */
  private pump(): void {
    if (this.sending || !this.due) return;
    this.clearTimer();
    this.due = false;
    if (!this.on || this.buffer.length === 0) return;
    const batch = this.buffer.splice(0, MAX_EXPORT_BATCH);
    this.sending = true;
    void this.send(batch).then(() => {
      this.sending = false;
      this.settled += batch.length;
      this.wake();
      if (!this.on || this.buffer.length === 0) return;
      // What came meanwhile leaves at once when a batch is full or a flush waits for it, else after the delay.
      if (this.buffer.length >= this.batchSize || this.waiters.length > 0) this.due = true;
      if (this.due) this.pump();
      else this.armTimer();
    });
  }

  private async send(batch: SpanRecord[]): Promise<void> {
    try {
      this.options.onBatch?.(batch);
      const r = await untraced(() => this.exporter(batch));
      if (r.recording === false) this.stop();
    } catch (e) {
      if (!this.on) return; // stopped meanwhile (the connection ended): nothing to report
      // A runtime without `sys.trace.export` will not have it on the next attempt either.
      if (e instanceof PolycallError && (e.code === "unknown_method" || e.code === "unsupported")) this.stop();
      this.report(e);
    }
  }

  private report(e: unknown): void {
    const onError = this.options.onError;
    if (onError !== undefined) {
      try {
        onError(e);
      } catch {
        // a failing error callback is not the application's problem either
      }
      return;
    }
    if (this.warned) return;
    this.warned = true;
    console.warn(`polycall: exporting spans failed (later failures are not reported): ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * One side of a call, from its start until {@link Span.end}: its context (what the call
 * carries, or the handler runs in) and, when the trace is sampled, a record for the
 * recorder at the end.
 */
export class Span {
  /** The span's own context: its id is the parent of what it causes. */
  readonly context: SpanContext;
  private readonly parentId: Uint8Array;
  private readonly startNs: bigint | null;
  private ended = false;

  constructor(
    private readonly recorder: SpanRecorder,
    private readonly kind: SpanKind,
    private readonly service: string,
    private readonly method: string,
    parent: SpanContext,
  ) {
    this.context = { traceId: parent.traceId, spanId: newSpanId(), flags: parent.flags, tracestate: parent.tracestate };
    this.parentId = parent.spanId;
    this.startNs = isSampled(parent.flags) && recorder.recording ? nowUnixNanos() : null;
  }

  /** The trace a call this span makes carries: its trace id, this span as parent, its flags. */
  get outgoing(): TraceContext {
    const t: TraceContext = { traceId: this.context.traceId, parentId: this.context.spanId, flags: this.context.flags };
    if (this.context.tracestate !== undefined) t.tracestate = this.context.tracestate;
    return t;
  }

  /** Ends the span (once): records it if sampled, with `error`'s code name when it failed. */
  end(error: unknown = null): void {
    if (this.ended) return;
    this.ended = true;
    if (this.startNs === null || !this.recorder.recording) return;
    const endNs = nowUnixNanos();
    let code: string | undefined;
    if (error !== null && error !== undefined) {
      code = error instanceof PolycallError ? error.code : "internal";
      if (code === "ok") code = undefined;
    }
    try {
      this.recorder.record({
        trace_id: toHex(this.context.traceId),
        span_id: toHex(this.context.spanId),
        parent_id: toHex(this.parentId),
        name: `${this.service}.${this.method}`,
        kind: this.kind,
        service: this.recorder.service,
        start_unix_nanos: Number(this.startNs),
        duration_nanos: Number(endNs - this.startNs),
        error: code,
        attributes: [
          ["rpc.system", "polycall"],
          ["rpc.service", this.service],
          ["rpc.method", this.method],
          ["polycall.language", "typescript"],
        ],
      });
    } catch {
      // ids that are not a trace's (an application's own context): nothing to record
    }
  }

  /** Ends the span when `p` settles (before the continuations attached later run). */
  track<T>(p: Promise<T>): Promise<T> {
    p.then(
      () => this.end(null),
      (e: unknown) => this.end(e),
    );
    return p;
  }
}
