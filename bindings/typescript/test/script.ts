/**
 * A scripted peer: a TCP server that speaks raw frames, so a test states exactly what
 * the binding is sent (well-formed or not, within its windows or not) and checks
 * exactly which frames come back. It answers the preface and HELLO with a WELCOME of
 * the test's limits and features, returns connection CREDIT for every payload byte it
 * receives (unless told not to), and records CREDIT and STREAM_CREDIT frames apart from
 * the others.
 */

import assert from "node:assert/strict";
import * as net from "node:net";

import { PREFACE } from "../src/connection.js";
import { type ContentType, type Frame, type HelloFrame, type Limits, decodeFrame, encodeFrame, flowLen } from "../src/frame.js";
import { DEFAULT_LIMITS, FEATURES } from "../src/handshake.js";
import type { WireMeta } from "../src/meta.js";
import { Payload } from "../src/payload.js";
import { CODES, type Code } from "../src/status.js";

/** What the scripted peer answers the handshake with. */
export interface ScriptOptions {
  /** Feature bits it offers (default: streaming). */
  features?: bigint;
  /** Its receive limits (the binding sends within them). */
  limits?: Partial<Limits>;
  /** Return connection CREDIT for every payload byte received (default true). */
  autoCredit?: boolean;
}

/** One accepted connection, driven by the test. */
export class ScriptConn {
  hello: HelloFrame | null = null;
  /** Frames received other than CREDIT and STREAM_CREDIT, not yet taken by `next`. */
  private readonly queue: Frame[] = [];
  /** Every frame received, in order. */
  readonly log: Frame[] = [];
  /** Sum of CREDIT increments received. */
  creditReceived = 0;
  /** Sum of STREAM_CREDIT increments received, by call id. */
  readonly streamCredit = new Map<number, number>();
  /** Payload bytes received in CALL, REPLY and DATA frames, by call id. */
  readonly payloadBytes = new Map<number, number>();
  private buf: Uint8Array = new Uint8Array(0);
  private prefaceSeen = false;
  private waiters: (() => void)[] = [];
  ended = false;
  readonly connected: Promise<void>;
  private resolveConnected!: () => void;

  constructor(
    readonly socket: net.Socket,
    private readonly opts: ScriptOptions,
  ) {
    this.connected = new Promise((r) => (this.resolveConnected = r));
    socket.on("data", (b) => this.onData(b));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.ended = true;
      this.wake();
    });
  }

  /** The limits it advertised. */
  get limits(): Limits {
    return { ...DEFAULT_LIMITS, ...this.opts.limits };
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private onData(b: Buffer): void {
    const joined = new Uint8Array(this.buf.length + b.length);
    joined.set(this.buf, 0);
    joined.set(b, this.buf.length);
    this.buf = joined;
    if (!this.prefaceSeen) {
      if (this.buf.length < PREFACE.length) return;
      assert.deepEqual(Buffer.from(this.buf.subarray(0, 8)), Buffer.from(PREFACE));
      this.buf = this.buf.subarray(8);
      this.prefaceSeen = true;
    }
    for (;;) {
      const r = decodeFrame(this.buf, 1 << 30, false);
      if (r === null) break;
      this.buf = this.buf.subarray(r.used);
      this.onFrame(r.frame);
    }
    this.wake();
  }

  private onFrame(f: Frame): void {
    this.log.push(f);
    if (f.type === "hello") {
      this.hello = f;
      const offered = this.opts.features ?? FEATURES.streaming;
      this.socket.write(PREFACE);
      this.send({
        type: "welcome",
        version: 1,
        features: f.features & offered,
        limits: this.limits,
        codecs: f.codecs.includes(1) ? [1, 0] : [0],
        compressions: [0],
        authMethod: 0,
        agent: "scripted-peer/0",
      });
      this.resolveConnected();
      return;
    }
    if (f.type === "credit") {
      this.creditReceived += f.increment;
      return;
    }
    if (f.type === "stream_credit") {
      this.streamCredit.set(f.callId, (this.streamCredit.get(f.callId) ?? 0) + f.increment);
      return;
    }
    const n = flowLen(f);
    if (n > 0) {
      const id = (f as { callId: number }).callId;
      this.payloadBytes.set(id, (this.payloadBytes.get(id) ?? 0) + n);
      if (this.opts.autoCredit !== false) this.send({ type: "credit", increment: n });
    }
    this.queue.push(f);
  }

  /** Sends frames (or raw bytes). */
  send(...frames: (Frame | Uint8Array)[]): void {
    for (const f of frames) this.socket.write(f instanceof Uint8Array ? f : encodeFrame(f, false));
  }

  /** Waits until `pred` holds (checked whenever something arrives), failing after `ms`. */
  async until(pred: () => boolean, what: string, ms = 3000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`scripted peer: timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 50));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The next frame (not CREDIT or STREAM_CREDIT) the binding sent. */
  async next(ms = 3000): Promise<Frame> {
    await this.until(() => this.queue.length > 0 || this.ended, "a frame", ms);
    const f = this.queue.shift();
    if (f === undefined) throw new Error("scripted peer: the connection ended");
    return f;
  }

  /** The next frame, which must be of `type`. */
  async expect<T extends Frame["type"]>(type: T, ms = 3000): Promise<Extract<Frame, { type: T }>> {
    const f = await this.next(ms);
    assert.equal(f.type, type, `expected ${type}, got ${JSON.stringify(f, (_k, v) => (typeof v === "bigint" ? String(v) : v instanceof Uint8Array ? `<${v.length} bytes>` : v))}`);
    return f as Extract<Frame, { type: T }>;
  }

  /** Frames (not CREDIT or STREAM_CREDIT) that arrive within `ms`. */
  async drain(ms: number): Promise<Frame[]> {
    await new Promise((r) => setTimeout(r, ms));
    return this.queue.splice(0);
  }

  /** Whether nothing but credit is waiting. */
  get idle(): boolean {
    return this.queue.length === 0;
  }

  /** Waits for the binding to close the transport. */
  async closed(ms = 3000): Promise<void> {
    await this.until(() => this.ended, "the connection to end", ms);
  }
}

/** A listening scripted peer; each accepted connection is handed to the test. */
export class ScriptServer {
  private readonly accepted: ScriptConn[] = [];
  private waiters: (() => void)[] = [];

  private constructor(
    readonly server: net.Server,
    readonly endpoint: string,
  ) {}

  static async listen(opts: ScriptOptions = {}): Promise<ScriptServer> {
    let self: ScriptServer | null = null;
    const server = net.createServer((socket) => {
      socket.setNoDelay(true);
      self!.accepted.push(new ScriptConn(socket, opts));
      for (const w of self!.waiters.splice(0)) w();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as net.AddressInfo).port;
    self = new ScriptServer(server, `127.0.0.1:${port}`);
    return self;
  }

  /** The next connection, once its handshake is done. */
  async accept(): Promise<ScriptConn> {
    while (this.accepted.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    const c = this.accepted.shift()!;
    await c.connected;
    return c;
  }

  close(): void {
    this.server.close();
  }
}

const NONE = new Uint8Array(0);

/** Bytes of a string or payload. */
function bytesOf(p: Payload | string | Uint8Array): { bytes: Uint8Array; contentType: ContentType } {
  if (p instanceof Payload) return { bytes: p.bytes, contentType: p.contentType };
  if (typeof p === "string") return { bytes: new TextEncoder().encode(p), contentType: "raw" };
  return { bytes: p, contentType: "raw" };
}

/** Frames a test sends. */
export const F = {
  /** CALL naming its method (id 0: not interned). */
  call(
    callId: number,
    name: string,
    p: Payload | string | Uint8Array | null,
    o: { stream?: boolean; meta?: WireMeta } = {},
  ): Frame {
    const m = p === null ? { bytes: NONE, contentType: "raw" as const } : bytesOf(p);
    return {
      type: "call",
      callId,
      methodId: 0,
      methodName: name,
      contentType: m.contentType,
      compression: "none",
      meta: o.meta ?? {},
      more: false,
      messageLen: null,
      stream: o.stream ?? p === null,
      empty: p === null,
      payload: m.bytes,
    };
  },
  /** REPLY; `null` with `stream` opens the reply stream EMPTY. */
  reply(callId: number, p: Payload | string | Uint8Array | null, o: { stream?: boolean } = {}): Frame {
    const m = p === null ? { bytes: NONE, contentType: "raw" as const } : bytesOf(p);
    return {
      type: "reply",
      callId,
      contentType: m.contentType,
      compression: "none",
      more: false,
      messageLen: null,
      stream: o.stream ?? p === null,
      empty: p === null,
      payload: m.bytes,
    };
  },
  /** DATA with FIRST: a further message of a stream, whole. */
  message(callId: number, p: Payload | string | Uint8Array): Frame {
    const m = bytesOf(p);
    return { type: "data", callId, first: { contentType: m.contentType, compression: "none" }, more: false, messageLen: null, payload: m.bytes };
  },
  end(callId: number): Frame {
    return { type: "end", callId };
  },
  cancel(callId: number): Frame {
    return { type: "cancel", callId };
  },
  error(callId: number, code: Code, message: string): Frame {
    return { type: "error", callId, code: CODES[code], message, retryAfterMs: null, supportedVersions: null, extensions: [] };
  },
  streamCredit(callId: number, increment: number): Frame {
    return { type: "stream_credit", callId, increment };
  },
};

/** The text of a frame's payload. */
export function text(f: Frame): string {
  assert.ok(f.type === "call" || f.type === "reply" || f.type === "data");
  return new TextDecoder().decode(f.payload);
}
