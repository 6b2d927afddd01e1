/**
 * The connection state machine, sans-IO: feed it bytes, take out events and bytes to
 * send. It owns the preface and handshake, call ids and the legal sequence of frames
 * on each call, method-name interning, fragmentation and reassembly, flow-control
 * credit, the in-flight limits and goaway — and no socket.
 *
 * ```ts
 * const conn = new Connection("client", config);
 * socket.on("data", (b) => { conn.feed(b); for (let e; (e = conn.pollEvent()); ) handle(e); write(conn.pollTransmit()); });
 * ```
 *
 * Streaming calls (feature bit 1, `docs/protocol.md` §3, §6.1): either direction of a
 * call may be a stream of messages — opened by CALL / REPLY with STREAM (EMPTY when no
 * message comes with the opening), continued by DATA with FIRST, ended by END. Each
 * streaming direction has its own window besides the connection's: the sender stays
 * within both, and the receiver returns STREAM_CREDIT as bytes arrive except while the
 * stream's complete messages not yet taken by the application ({@link
 * Connection.streamTaken}) hold half its window or more.
 */

import { decompress } from "./compress.js";
import { FrameError } from "./errors.js";
import {
  type Compression,
  type ContentType,
  type ErrorFrame,
  type Frame,
  type MethodEntry,
  CRC_LEN,
  HEADER_LEN,
  decodeFrameExact,
  encodeFrameChunks,
  flowLen,
  frameLength,
  parseHeader,
} from "./frame.js";
import { FEATURES, HANDSHAKE_MAX_FRAME, type Negotiated, type Settings, acceptWelcome, hello, negotiate } from "./handshake.js";
import { type WireMeta, encodeMeta } from "./meta.js";
import { Writer } from "./wire.js";
import { splitFullName } from "./names.js";
import { Payload } from "./payload.js";
import { type Code, PolycallError } from "./status.js";

/** The 8 bytes each side sends before its first frame: `\x89POLY\r\n\x1a`. */
export const PREFACE = Uint8Array.of(0x89, 0x50, 0x4f, 0x4c, 0x59, 0x0d, 0x0a, 0x1a);

/** Messages up to this size travel whole in their CALL frame. */
const INLINE_CALL_MAX = 8 * 1024;
/** Most method names one side interns on a connection. */
export const MAX_INTERNED = 4096;

/** Which end of the connection this is. */
export type Role = "client" | "server";

/** Configuration of a {@link Connection}. */
export interface ConnectionConfig {
  /** Protocol settings offered in the handshake. */
  settings: Settings;
  /** Largest payload fragment per frame (capped by the peer's max_frame). */
  fragmentSize: number;
  /** Most bytes of partly received messages held at once (at least max_message). */
  reassemblyBudget: number;
}

/** Something that happened on the connection. */
export type ConnectionEvent =
  | { type: "connected" }
  /** The peer opened a call (its request is complete). */
  | { type: "call"; callId: number; service: string; method: string; payload: Payload; meta: WireMeta }
  /**
   * The peer opened a call with a stream of requests (CALL with STREAM): its messages
   * follow as `message` events (the first may have come with the CALL), ended by `end`.
   */
  | { type: "streamCall"; callId: number; service: string; method: string; meta: WireMeta }
  /** The reply to a call this side opened. */
  | { type: "reply"; callId: number; payload: Payload }
  /**
   * The callee answers a call this side opened with a stream of replies (REPLY with
   * STREAM): its messages follow as `message` events, ended by `end` (or `failed`).
   */
  | { type: "replyStream"; callId: number }
  /**
   * A message of the peer's stream on a call (requests on the peer's call, replies on
   * this side's). `wireLen` counts against the stream's window until the application
   * hands it back with {@link Connection.streamTaken}.
   */
  | { type: "message"; callId: number; payload: Payload; wireLen: number }
  /**
   * The peer's stream on the call is complete (END). For a call this side opened, the
   * call is over.
   */
  | { type: "end"; callId: number }
  /** A call this side opened failed. */
  | { type: "failed"; callId: number; error: PolycallError }
  /** The peer gave up on a call it opened (or the connection ended under it). */
  | { type: "cancelled"; callId: number }
  /** Server role: a provider announces methods; answer with sendReply (empty) or sendError. */
  | { type: "register"; callId: number; methods: MethodEntry[] }
  /** Server role: a provider withdraws methods. */
  | { type: "unregister"; callId: number; methods: string[] }
  | { type: "pong"; opaque: bigint }
  /** The peer serves no call above `lastCallId`; this side's calls above it failed with `unavailable`. */
  | { type: "goaway"; lastCallId: number; error: PolycallError }
  /** The connection ended; no further events follow. `error.code` is `ok` for a clean close. */
  | { type: "closed"; error: PolycallError };

/** A connection error: the connection cannot go on (an error frame for the peer is queued). */
export class ProtoError extends Error {
  constructor(
    /** What the peer (and local callers) are told. */
    readonly status: PolycallError,
  ) {
    super(status.message);
    this.name = "ProtoError";
  }
}

interface Assembly {
  contentType: ContentType;
  compression: Compression;
  one: Uint8Array | null;
  buf: Uint8Array | null;
  expected: number;
  len: number;
  reserved: number;
}

interface CallState {
  local: boolean;
  admin: boolean;
  rx: Assembly | null;
  rxStarted: boolean;
  /** Peer calls: name and metadata until the request is complete. */
  pending: { service: string; method: string; meta: WireMeta } | null;
  /** The peer's direction is a stream (its CALL or REPLY carried STREAM). */
  rxStream: boolean;
  /** The peer's stream ended (END). */
  rxDone: boolean;
  /** Stream window: payload bytes the peer may still send on this call's stream. */
  rxWindow: number;
  /** Wire bytes of complete stream messages delivered and not yet taken by the application. */
  rxHeld: number;
  /** Stream bytes received and not yet returned with STREAM_CREDIT. */
  rxDue: number;
  /** This side's direction is a stream (CALL or REPLY with STREAM sent). */
  txStream: boolean;
  /** This side's stream ended (END queued). */
  txDone: boolean;
  /** Peer calls: this side answered (a reply or the opening of a reply stream is queued). */
  replied: boolean;
}

function newCall(local: boolean, admin: boolean, pending: CallState["pending"] = null): CallState {
  return {
    local,
    admin,
    rx: null,
    rxStarted: !local,
    pending,
    rxStream: false,
    rxDone: false,
    rxWindow: 0,
    rxHeld: 0,
    rxDue: 0,
    txStream: false,
    txDone: false,
    replied: false,
  };
}

/** A message to send, cut into fragments as credit allows. */
interface OutMsg {
  kind: "msg";
  /** Its first frame is the REPLY (else a DATA with FIRST, or — `started` — continuations only). */
  reply: boolean;
  /** With `reply`: the REPLY opens a stream of replies. */
  stream: boolean;
  contentType: ContentType;
  data: Uint8Array;
  offset: number;
  started: boolean;
}

/** What one call has queued to send, in order. */
type OutItem = OutMsg | { kind: "empty_reply" } | { kind: "end" } | { kind: "error"; error: PolycallError };

interface OutQueue {
  items: OutItem[];
  /** Payload bytes of its messages not yet framed. */
  bytes: number;
}

type State = "preface" | "handshake" | "open" | "closed";

/** Received bytes not yet decoded, kept as the chunks they arrived in. */
class ChunkQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  /** Bytes held. */
  length = 0;

  push(b: Uint8Array): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** The first `n` bytes, contiguous; removed when `consume`. */
  take(n: number, consume: boolean): Uint8Array {
    const first = this.chunks[0]!;
    let out: Uint8Array;
    if (first.length - this.head >= n) {
      out = first.subarray(this.head, this.head + n);
    } else {
      out = new Uint8Array(n);
      let at = 0;
      let i = 0;
      let off = this.head;
      while (at < n) {
        const c = this.chunks[i]!;
        const k = Math.min(c.length - off, n - at);
        out.set(c.subarray(off, off + k), at);
        at += k;
        off += k;
        if (off === c.length) {
          i++;
          off = 0;
        }
      }
    }
    if (consume) this.skip(n);
    return out;
  }

  skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const left = c.length - this.head;
      if (left > n) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }
}

function connError(code: Code, message: string): ProtoError {
  return new ProtoError(new PolycallError(code, message));
}

function violation(message: string): ProtoError {
  return connError("malformed", `protocol violation: ${message}`);
}

function errorFrame(callId: number, e: PolycallError): ErrorFrame {
  return {
    type: "error",
    callId,
    code: e.codeNumber,
    message: e.detail,
    retryAfterMs: e.retryAfterMs ?? null,
    supportedVersions: null,
    extensions: [],
  };
}

/** The error a received ERROR frame carries. */
export function errorOfFrame(f: ErrorFrame): PolycallError {
  return PolycallError.fromWire(f.code, f.message, {
    retryAfterMs: f.retryAfterMs ?? undefined,
    supportedVersions: f.supportedVersions ?? undefined,
  });
}

/** The polycall connection state machine (sans-IO). */
export class Connection {
  private state: State = "preface";
  private negotiatedParams: Negotiated | null = null;
  private crc = false;
  private readonly rx = new ChunkQueue();
  private out: Uint8Array[] = [];
  private outBytes = 0;
  private readonly events: ConnectionEvent[] = [];
  private eventHead = 0;
  private readonly calls = new Map<number, CallState>();
  private nextLocalId: number;
  private highestPeerId = 0;
  private localOpen = 0;
  private peerOpen = 0;
  private readonly txNames = new Map<string, number>();
  private readonly rxNames = new Map<number, string>();
  private sendCredit = 0;
  private recvCredit: number;
  private creditToReturn = 0;
  private reassembling = 0;
  private readonly queues = new Map<number, OutQueue>();
  private ready: number[] = [];
  private queuedBytes = 0;
  private framable = false;
  /** Stream windows of this side's streaming directions (payload bytes it may still send), while they may send. */
  private readonly txWindows = new Map<number, number>();
  /** Calls whose received stream bytes are not all returned with STREAM_CREDIT. */
  private readonly creditDue = new Set<number>();
  private peerGoingAway: number | null = null;
  private localGoingAway: number | null = null;

  constructor(
    /** This side's role. */
    readonly role: Role,
    private readonly config: ConnectionConfig,
  ) {
    if (config.fragmentSize <= 0) throw new PolycallError("invalid_input", "fragmentSize must be positive");
    if (config.reassemblyBudget < config.settings.limits.maxMessage) {
      throw new PolycallError(
        "invalid_input",
        `reassemblyBudget ${config.reassemblyBudget} is below max_message ${config.settings.limits.maxMessage}: a largest message could never arrive`,
      );
    }
    this.nextLocalId = role === "client" ? 1 : 2;
    this.recvCredit = config.settings.limits.initialWindow;
    this.push([PREFACE]);
    if (role === "client") this.emit(hello(config.settings), false);
  }

  /** What the handshake agreed, once `connected` was emitted. */
  get negotiated(): Negotiated | null {
    return this.negotiatedParams;
  }

  /** Whether the handshake completed and the connection is not closed. */
  get isOpen(): boolean {
    return this.state === "open";
  }

  /** Whether the connection ended. */
  get isClosed(): boolean {
    return this.state === "closed";
  }

  /** Calls open in either direction. */
  get openCalls(): number {
    return this.calls.size;
  }

  /** Calls this side opened that are not finished. */
  get localInFlight(): number {
    return this.localOpen;
  }

  /** Payload bytes this side may still send before the peer grants more credit. */
  get credit(): number {
    return this.sendCredit;
  }

  /** Payload bytes queued and not yet framed. */
  get queued(): number {
    return this.queuedBytes;
  }

  /**
   * Whether the last {@link Connection.pollTransmit} stopped at its byte budget with
   * fragments it could frame now (not only ones waiting for credit or a stream window).
   */
  get canFrameMore(): boolean {
    return this.framable;
  }

  /** Whether streaming calls were negotiated (feature bit 1). */
  get streaming(): boolean {
    return this.negotiatedParams !== null && (this.negotiatedParams.features & FEATURES.streaming) !== 0n;
  }

  /** Payload bytes of `callId`'s messages queued and not yet framed (a stream producer's backlog). */
  streamBacklog(callId: number): number {
    return this.queues.get(callId)?.bytes ?? 0;
  }

  /** The stream window left for this side's stream on `callId` (undefined: none open). */
  streamWindow(callId: number): number | undefined {
    return this.txWindows.get(callId);
  }

  /** Whether the peer announced GOAWAY. */
  get peerIsGoingAway(): boolean {
    return this.peerGoingAway !== null;
  }

  // ---------------------------------------------------------------- output plumbing

  private push(chunks: Uint8Array[]): void {
    for (const c of chunks) {
      this.out.push(c);
      this.outBytes += c.length;
    }
  }

  private emit(f: Frame, crc: boolean = this.crc): void {
    this.push(encodeFrameChunks(f, crc));
  }

  private event(e: ConnectionEvent): void {
    this.events.push(e);
  }

  // ---------------------------------------------------------------- input

  /**
   * Appends received bytes and handles every whole frame. On a connection error the
   * error frame for the peer is queued, every open call fails, the connection closes
   * (a `closed` event) and the {@link ProtoError} is thrown.
   */
  feed(data: Uint8Array): void {
    if (this.state === "closed") return;
    this.rx.push(data);
    try {
      this.process();
    } catch (e) {
      if (e instanceof ProtoError) throw this.fail(e);
      if (e instanceof FrameError) throw this.fail(connError(e.code(), e.message));
      if (e instanceof PolycallError) throw this.fail(new ProtoError(e));
      throw e;
    }
  }

  private process(): void {
    for (;;) {
      if (this.state === "closed") return;
      if (this.state === "preface") {
        const n = Math.min(this.rx.length, PREFACE.length);
        if (n === 0) return;
        const got = this.rx.take(n, false);
        for (let i = 0; i < n; i++) {
          if (got[i] !== PREFACE[i]) throw connError("malformed", `the peer does not speak polycall: ${describe(got)}`);
        }
        if (n < PREFACE.length) return;
        this.rx.skip(PREFACE.length);
        this.state = "handshake";
        continue;
      }
      if (this.rx.length < HEADER_LEN) return;
      const max = this.negotiatedParams?.localLimits.maxFrame ?? HANDSHAKE_MAX_FRAME;
      const crc = this.negotiatedParams !== null && this.crc;
      const header = parseHeader(this.rx.take(HEADER_LEN, false), max);
      const total = frameLength(header, crc);
      if (this.rx.length < total) return;
      const bytes = this.rx.take(total, true);
      this.handle(decodeFrameExact(bytes, header, crc));
    }
  }

  /** Closes because of `err`: tells the peer (unless the peer closed), fails every open call. */
  private fail(err: ProtoError, tellPeer = true): ProtoError {
    if (this.state === "closed") return err;
    if (tellPeer) this.emit(errorFrame(0, err.status));
    this.closeCalls(err.status);
    this.state = "closed";
    this.event({ type: "closed", error: err.status });
    return err;
  }

  private closeCalls(status: PolycallError): void {
    const ids = [...this.calls.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const c = this.takeCall(id)!;
      if (c.local) {
        this.event({
          type: "failed",
          callId: id,
          error: new PolycallError("unavailable", `connection ended before the call completed: ${status.message}`, { cause: status }),
        });
      } else if (c.pending === null) {
        this.event({ type: "cancelled", callId: id });
      }
    }
    this.queues.clear();
    this.ready = [];
    this.queuedBytes = 0;
    this.txWindows.clear();
    this.creditDue.clear();
    this.localOpen = 0;
    this.peerOpen = 0;
  }

  private takeCall(id: number): CallState | undefined {
    const c = this.calls.get(id);
    if (c === undefined) return undefined;
    this.calls.delete(id);
    if (c.rx !== null) this.reassembling -= c.rx.reserved;
    return c;
  }

  private isLocalId(id: number): boolean {
    return (id % 2 === 1) === (this.role === "client");
  }

  private handle(f: Frame): void {
    if (this.state === "handshake") return this.handleHandshake(f);
    const flow = flowLen(f);
    if (flow > 0) {
      if (flow > this.recvCredit) {
        throw connError("malformed", `flow control violated: ${flow} bytes received with ${this.recvCredit} bytes of credit`);
      }
      this.recvCredit -= flow;
      this.creditToReturn += flow;
    }
    switch (f.type) {
      case "hello":
      case "welcome":
        throw violation("handshake frame after the handshake");
      case "auth":
        throw violation("AUTH frame, but no authentication method was negotiated");
      case "call":
        return this.onCall(f);
      case "reply":
        return this.onReply(f);
      case "data":
        return this.onData(f);
      case "end":
        return this.onEnd(f.callId);
      case "error":
        return this.onError(f);
      case "cancel": {
        if (this.isLocalId(f.callId)) throw violation(`CANCEL of call ${f.callId}, which this side opened`);
        const c = this.takeCall(f.callId);
        // Whatever of the answer is still queued (a reply stream's tail) is moot.
        this.dropOutput(f.callId);
        if (c !== undefined) {
          this.peerOpen = Math.max(0, this.peerOpen - 1);
          if (c.pending === null) this.event({ type: "cancelled", callId: f.callId });
        } else {
          this.checkKnownPeerId(f.callId, "CANCEL");
        }
        return;
      }
      case "ping":
        this.emit({ type: "pong", opaque: f.opaque });
        return;
      case "pong":
        this.event({ type: "pong", opaque: f.opaque });
        return;
      case "goaway":
        return this.onGoAway(f.lastCallId, f.code, f.message);
      case "credit":
        this.sendCredit += f.increment;
        return;
      case "stream_credit":
        return this.onStreamCredit(f.callId, f.increment);
      case "dictionary":
        // This binding does not offer feature bit 2: a peer that ships one anyway
        // breaks the protocol.
        throw violation("DICTIONARY frame, but dictionaries were not agreed");
      case "register":
      case "unregister":
        this.openPeerAdmin(f.callId, f.type.toUpperCase());
        if (f.type === "register") this.event({ type: "register", callId: f.callId, methods: f.methods });
        else this.event({ type: "unregister", callId: f.callId, methods: f.methods });
        return;
    }
  }

  private handleHandshake(f: Frame): void {
    const s = this.config.settings;
    if (this.role === "server" && f.type === "hello") {
      const r = negotiate(s, f);
      if ("type" in r) {
        this.emit(r, false);
        throw this.fail(new ProtoError(errorOfFrame(r)), false);
      }
      this.emit(r.welcome, false);
      return this.open(r.negotiated);
    }
    if (this.role === "client" && f.type === "welcome") {
      let n: Negotiated;
      try {
        n = acceptWelcome(s, f);
      } catch (e) {
        throw new ProtoError(e as PolycallError);
      }
      return this.open(n);
    }
    if (f.type === "error" && f.callId === 0) {
      throw this.fail(new ProtoError(errorOfFrame(f)), false);
    }
    throw violation(`${f.type.toUpperCase()} frame during the handshake (expected ${this.role === "server" ? "HELLO" : "WELCOME"})`);
  }

  private open(n: Negotiated): void {
    this.crc = (n.features & FEATURES.crc32c) !== 0n;
    this.sendCredit = n.peerLimits.initialWindow;
    this.negotiatedParams = n;
    this.state = "open";
    this.event({ type: "connected" });
  }

  private checkKnownPeerId(id: number, what: string): void {
    if (this.isLocalId(id)) throw violation(`${what} for call ${id}, which this side opened`);
    if (id > this.highestPeerId) throw violation(`${what} for call ${id}, which was never opened`);
  }

  private checkKnownLocalId(id: number, what: string): void {
    if (!this.isLocalId(id)) throw violation(`${what} for call ${id}, which the peer opened`);
    if (id >= this.nextLocalId) throw violation(`${what} for call ${id}, which was never opened`);
  }

  /** Checks a new peer call id; false when the call is refused (busy / going away). */
  private admitPeerCall(id: number, what: string): boolean {
    if (this.isLocalId(id)) throw violation(`${what} with call id ${id} of this side's parity`);
    if (id <= this.highestPeerId) {
      throw violation(`${what} reuses call id ${id} (ids must increase; highest so far ${this.highestPeerId})`);
    }
    this.highestPeerId = id;
    if (this.localGoingAway !== null && id > this.localGoingAway) {
      this.emit(errorFrame(id, new PolycallError("unavailable", "the connection is going away; retry on a new one")));
      return false;
    }
    const limit = this.config.settings.limits.maxInFlight;
    if (this.peerOpen >= limit) {
      this.emit(
        errorFrame(id, new PolycallError("busy", `in-flight limit of ${limit} calls on this connection reached`, { retryAfterMs: 10 })),
      );
      return false;
    }
    return true;
  }

  private openPeerAdmin(id: number, what: string): void {
    if (this.role !== "server") throw violation(`${what} sent to the connecting side`);
    if (this.admitPeerCall(id, what)) {
      this.calls.set(id, newCall(false, true));
      this.peerOpen++;
    }
  }

  private onCall(f: Extract<Frame, { type: "call" }>): void {
    const name = this.resolveMethod(f.methodId, f.methodName);
    if (f.stream && !this.streaming) throw violation("streaming CALL, but streaming was not negotiated");
    if (!this.admitPeerCall(f.callId, "CALL")) return;
    this.peerOpen++;
    const [service, method] = splitFullName(name)!;
    if (!f.stream) {
      this.calls.set(f.callId, newCall(false, false, { service, method, meta: f.meta }));
      this.startMessage(f.callId, f.contentType, f.compression, f.payload, f.messageLen);
      return;
    }
    const c = newCall(false, false);
    this.openRxStream(f.callId, c, f.payload.length);
    this.calls.set(f.callId, c);
    this.event({ type: "streamCall", callId: f.callId, service, method, meta: f.meta });
    if (f.empty !== true) this.startMessage(f.callId, f.contentType, f.compression, f.payload, f.messageLen);
  }

  /** The peer's direction of a call becomes a stream; `first` bytes came with its opening frame. */
  private openRxStream(id: number, c: CallState, first: number): void {
    c.rxStream = true;
    c.rxWindow = this.config.settings.limits.initialWindow;
    this.streamBytes(id, c, first);
  }

  /** Stream payload bytes arrived on `id`: they count against the stream's window (§6.1). */
  private streamBytes(id: number, c: CallState, n: number): void {
    if (n === 0) return;
    if (n > c.rxWindow) {
      throw connError(
        "malformed",
        `stream flow control violated on call ${id}: ${n} bytes received with ${c.rxWindow} bytes left of the stream's window`,
      );
    }
    c.rxWindow -= n;
    c.rxDue += n;
    this.creditDue.add(id);
  }

  private onStreamCredit(id: number, increment: number): void {
    if (!this.streaming) throw violation("STREAM_CREDIT, but streaming was not negotiated");
    const w = this.txWindows.get(id);
    if (w !== undefined) {
      this.txWindows.set(id, w + increment);
      return;
    }
    // An open call: this side's stream ended, or its direction does not stream
    // (nothing to add to, as the reference has it).
    if (this.calls.has(id)) return;
    // A call that ended is ignored; one never opened is a violation.
    if (this.isLocalId(id)) this.checkKnownLocalId(id, "STREAM_CREDIT");
    else this.checkKnownPeerId(id, "STREAM_CREDIT");
  }

  private resolveMethod(id: number, name: string | null): string {
    if (name !== null) {
      if (id !== 0) {
        if (id > MAX_INTERNED) throw violation(`method id ${id} above the interning limit of ${MAX_INTERNED}`);
        if (this.rxNames.has(id)) throw violation(`method id ${id} bound twice`);
        this.rxNames.set(id, name);
      }
      return name;
    }
    const bound = this.rxNames.get(id);
    if (bound === undefined) throw violation(`method id ${id} was never bound to a name`);
    return bound;
  }

  private onReply(f: Extract<Frame, { type: "reply" }>): void {
    const c = this.calls.get(f.callId);
    if (c === undefined) return this.checkKnownLocalId(f.callId, "REPLY");
    if (!c.local) throw violation(`REPLY on call ${f.callId}, which the peer opened`);
    if (c.rxStarted) throw violation(`second REPLY on call ${f.callId}`);
    if (f.stream && (!this.streaming || c.admin)) throw violation("streaming REPLY, but streaming was not negotiated for this call");
    c.rxStarted = true;
    if (!f.stream) {
      this.startMessage(f.callId, f.contentType, f.compression, f.payload, f.messageLen);
      return;
    }
    this.openRxStream(f.callId, c, f.payload.length);
    this.event({ type: "replyStream", callId: f.callId });
    if (f.empty !== true) this.startMessage(f.callId, f.contentType, f.compression, f.payload, f.messageLen);
  }

  private onData(f: Extract<Frame, { type: "data" }>): void {
    const c = this.calls.get(f.callId);
    if (c === undefined) {
      if (this.isLocalId(f.callId)) this.checkKnownLocalId(f.callId, "DATA");
      else this.checkKnownPeerId(f.callId, "DATA");
      return;
    }
    if (c.rxStream) this.streamBytes(f.callId, c, f.payload.length);
    if (f.first !== null) {
      if (!c.rxStarted || !c.rxStream || c.rxDone || c.rx !== null) {
        throw violation(`DATA starting a message on call ${f.callId}, which has no open stream from the peer`);
      }
      this.startMessage(f.callId, f.first.contentType, f.first.compression, f.payload, f.messageLen);
      return;
    }
    const m = c.rx;
    if (m === null) throw violation(`DATA continuing a message on call ${f.callId}, but no message is in progress`);
    if (m.buf === null) throw violation("DATA continuing a message that was not fragmented");
    const at = m.len;
    m.len += f.payload.length;
    let wrong: string | null = null;
    if (m.len > m.expected) wrong = "its fragments exceed the declared message length";
    else if (!f.more && m.len !== m.expected) wrong = "its fragments end short of the declared message length";
    if (wrong !== null) {
      this.refuseMessage(f.callId, new PolycallError("malformed", `message on call ${f.callId}: ${wrong} (${m.expected} bytes)`));
      return;
    }
    m.buf.set(f.payload, at);
    if (!f.more) this.completeMessage(f.callId);
  }

  private onEnd(id: number): void {
    const c = this.calls.get(id);
    if (c === undefined) {
      if (this.isLocalId(id)) this.checkKnownLocalId(id, "END");
      else this.checkKnownPeerId(id, "END");
      return;
    }
    if (!c.rxStarted || !c.rxStream || c.rxDone || c.rx !== null) {
      throw violation(`END on call ${id}, which has no open stream from the peer (or a message in progress)`);
    }
    c.rxDone = true;
    this.creditDue.delete(id);
    this.event({ type: "end", callId: id });
    if (c.local) {
      // The reply stream is complete: the call is over, whatever of the request is still queued is moot.
      this.takeCall(id);
      this.localOpen = Math.max(0, this.localOpen - 1);
      this.dropOutput(id);
    }
  }

  private onError(f: ErrorFrame): void {
    if (f.callId === 0) throw this.fail(new ProtoError(errorOfFrame(f)), false);
    if (!this.isLocalId(f.callId)) {
      throw violation(`ERROR on call ${f.callId}, which the peer opened (a caller cancels, it does not fail)`);
    }
    if (this.takeCall(f.callId) !== undefined) {
      this.dropOutput(f.callId);
      this.localOpen = Math.max(0, this.localOpen - 1);
      this.event({ type: "failed", callId: f.callId, error: errorOfFrame(f) });
    } else {
      this.checkKnownLocalId(f.callId, "ERROR");
    }
  }

  private onGoAway(last: number, code: number, message: string): void {
    this.peerGoingAway = last;
    const doomed = [...this.calls.entries()]
      .filter(([id, c]) => c.local && id > last)
      .map(([id]) => id)
      .sort((a, b) => a - b);
    for (const id of doomed) {
      this.takeCall(id);
      this.dropOutput(id);
      this.localOpen = Math.max(0, this.localOpen - 1);
      this.event({
        type: "failed",
        callId: id,
        error: new PolycallError("unavailable", "the peer is going away and did not process this call; retry elsewhere"),
      });
    }
    this.event({ type: "goaway", lastCallId: last, error: PolycallError.fromWire(code, message) });
  }

  private startMessage(
    id: number,
    contentType: ContentType,
    compression: Compression,
    payload: Uint8Array,
    messageLen: number | null,
  ): void {
    const n = this.negotiatedParams!;
    const max = n.localLimits.maxMessage;
    const c = this.calls.get(id);
    if (c === undefined) return;
    const total = messageLen ?? payload.length;
    let refusal: PolycallError | null = null;
    if (!n.compressions.includes(compression)) {
      refusal = new PolycallError("malformed", `message compressed with ${compression}, which was not negotiated`);
    } else if (total > max) {
      refusal = new PolycallError("too_large", `message of ${total} bytes exceeds the limit of ${max}`);
    } else if (messageLen !== null && this.reassembling + total > this.config.reassemblyBudget) {
      refusal = new PolycallError(
        "busy",
        `${this.reassembling} bytes of partly received messages are held (budget ${this.config.reassemblyBudget}); retry shortly`,
        { retryAfterMs: 20 },
      );
    }
    if (refusal !== null) return this.refuseMessage(id, refusal);
    if (messageLen === null) {
      c.rx = { contentType, compression, one: payload, buf: null, expected: payload.length, len: payload.length, reserved: 0 };
      return this.completeMessage(id);
    }
    const buf = Buffer.allocUnsafe(messageLen);
    buf.set(payload, 0);
    c.rx = { contentType, compression, one: null, buf, expected: messageLen, len: payload.length, reserved: messageLen };
    this.reassembling += messageLen;
  }

  /** A message cannot be accepted: the call ends (error to the peer, or cancel + local failure). */
  private refuseMessage(id: number, status: PolycallError): void {
    const c = this.takeCall(id);
    if (c === undefined) return;
    this.dropOutput(id);
    if (c.local) {
      this.localOpen = Math.max(0, this.localOpen - 1);
      this.emit({ type: "cancel", callId: id });
      this.event({ type: "failed", callId: id, error: status });
    } else {
      this.peerOpen = Math.max(0, this.peerOpen - 1);
      if (c.pending === null) this.event({ type: "cancelled", callId: id });
      this.emit(errorFrame(id, status));
    }
  }

  private completeMessage(id: number): void {
    const c = this.calls.get(id)!;
    const m = c.rx!;
    c.rx = null;
    this.reassembling -= m.reserved;
    let bytes = m.one ?? m.buf!;
    if (m.compression !== "none") {
      try {
        bytes = decompress(m.compression, bytes, this.negotiatedParams!.localLimits.maxMessage);
      } catch (e) {
        return this.refuseMessage(id, e as PolycallError);
      }
    }
    const payload = new Payload(bytes, m.contentType);
    if (c.rxStream) {
      c.rxHeld += m.len;
      this.event({ type: "message", callId: id, payload, wireLen: m.len });
    } else if (c.pending !== null) {
      const p = c.pending;
      c.pending = null;
      this.event({ type: "call", callId: id, service: p.service, method: p.method, payload, meta: p.meta });
    } else if (c.local) {
      this.takeCall(id);
      this.localOpen = Math.max(0, this.localOpen - 1);
      this.dropOutput(id);
      this.event({ type: "reply", callId: id, payload });
    }
  }

  // ---------------------------------------------------------------- events

  /** The next event, if any. */
  pollEvent(): ConnectionEvent | undefined {
    if (this.eventHead >= this.events.length) {
      if (this.events.length > 0) {
        this.events.length = 0;
        this.eventHead = 0;
      }
      return undefined;
    }
    const e = this.events[this.eventHead]!;
    this.events[this.eventHead] = undefined as unknown as ConnectionEvent;
    this.eventHead++;
    return e;
  }

  private returnCredit(): void {
    if (this.state !== "open") return;
    const window = this.config.settings.limits.initialWindow;
    this.returnStreamCredit(window);
    if (this.creditToReturn === 0 || this.creditToReturn < window / 4) return;
    while (this.creditToReturn > 0) {
      const inc = Math.min(this.creditToReturn, 0xffffffff);
      this.emit({ type: "credit", increment: inc });
      this.creditToReturn -= inc;
      this.recvCredit += inc;
    }
  }

  /**
   * STREAM_CREDIT for the bytes each stream received, by quarters of the window, except
   * while the stream's messages not yet taken by the application hold half the window.
   */
  private returnStreamCredit(window: number): void {
    for (const id of this.creditDue) {
      const c = this.calls.get(id);
      if (c === undefined || !c.rxStream || c.rxDone || c.rxDue === 0) {
        this.creditDue.delete(id);
        continue;
      }
      if (c.rxDue < window / 4 || c.rxHeld >= window / 2) continue;
      this.emit({ type: "stream_credit", callId: id, increment: c.rxDue });
      c.rxWindow += c.rxDue;
      c.rxDue = 0;
      this.creditDue.delete(id);
    }
  }

  /**
   * The application took a stream message of `wireLen` bytes (its `message` event's)
   * from the buffer: the stream's credit may flow again. Unknown or ended calls are
   * ignored.
   */
  streamTaken(callId: number, wireLen: number): void {
    const c = this.calls.get(callId);
    if (c === undefined || !c.rxStream) return;
    c.rxHeld = Math.max(0, c.rxHeld - wireLen);
    if (c.rxDue > 0 && !c.rxDone) this.creditDue.add(callId);
  }

  // ---------------------------------------------------------------- sending

  private checkOpen(): Negotiated {
    if (this.state === "open" && this.negotiatedParams !== null) return this.negotiatedParams;
    if (this.state === "closed") throw new PolycallError("unavailable", "the connection is closed; open a new one");
    throw new PolycallError("unavailable", "the handshake has not completed; wait for the connected event");
  }

  private checkPayload(n: Negotiated, p: Payload): void {
    if (p.length > n.peerLimits.maxMessage) {
      throw new PolycallError("too_large", `message of ${p.length} bytes exceeds the peer's maximum of ${n.peerLimits.maxMessage}`);
    }
    if (!n.codecs.includes(p.contentType)) {
      throw new PolycallError("unsupported", `the peer did not negotiate the ${p.contentType} codec`);
    }
  }

  private intern(full: string): { id: number; name: string | null } {
    const id = this.txNames.get(full);
    if (id !== undefined) return { id, name: null };
    if (this.txNames.size < MAX_INTERNED) {
      const next = this.txNames.size + 1;
      this.txNames.set(full, next);
      return { id: next, name: full };
    }
    return { id: 0, name: full };
  }

  private enqueue(id: number, item: OutItem): void {
    let q = this.queues.get(id);
    if (q === undefined) {
      q = { items: [], bytes: 0 };
      this.queues.set(id, q);
      this.ready.push(id);
    }
    q.items.push(item);
    if (item.kind === "msg") {
      const n = item.data.length - item.offset;
      q.bytes += n;
      this.queuedBytes += n;
    }
  }

  private dropOutput(id: number): void {
    this.txWindows.delete(id);
    const q = this.queues.get(id);
    if (q === undefined) return;
    this.queuedBytes -= q.bytes;
    this.queues.delete(id);
  }

  /**
   * Opens a call of `service.method` with its request. Returns the call id; the answer
   * arrives as a `reply` (or, when the callee streams its replies, `replyStream`,
   * `message`s and `end`) or `failed` event. Refusals before anything is sent throw a
   * {@link PolycallError} (`busy`, `too_large`, `unsupported`, `unavailable`).
   */
  openCall(service: string, method: string, payload: Payload, meta: WireMeta = {}): number {
    return this.openLocal(service, method, payload, meta, false);
  }

  /**
   * Opens a call whose requests are a stream (CALL with STREAM): `first` travels with the
   * CALL, or `null` opens the stream without a message (EMPTY). Further requests follow
   * with {@link Connection.sendMessage}, the end with {@link Connection.sendEnd}. The
   * answer arrives as for {@link Connection.openCall}. Throws `unsupported` when
   * streaming was not negotiated.
   */
  openStreamCall(service: string, method: string, first: Payload | null, meta: WireMeta = {}): number {
    return this.openLocal(service, method, first, meta, true);
  }

  private openLocal(service: string, method: string, payload: Payload | null, meta: WireMeta, stream: boolean): number {
    const n = this.checkOpen();
    if (this.peerGoingAway !== null || this.localGoingAway !== null) {
      throw new PolycallError("unavailable", "the connection is going away; open a new one");
    }
    if (stream && !this.streaming) {
      throw new PolycallError("unsupported", "streaming calls were not negotiated with the peer (it did not offer feature bit 1)");
    }
    const limit = n.peerLimits.maxInFlight;
    if (this.localOpen >= limit) {
      throw new PolycallError(
        "busy",
        `the peer allows ${limit} calls in flight on one connection; wait for one to finish or open another connection`,
      );
    }
    const full = `${service}.${method}`;
    if (splitFullName(full) === null) {
      throw new PolycallError("invalid_input", `${JSON.stringify(full)} is not a valid SERVICE.METHOD name`);
    }
    if (payload !== null) this.checkPayload(n, payload);
    const metaWriter = new Writer(64);
    encodeMeta(meta, metaWriter);
    // The fixed fields: method id and name, content type, compression, metadata, message length.
    const fields = 2 + 1 + Buffer.byteLength(full) + 4 + metaWriter.len + 4;
    if (fields > n.peerLimits.maxFrame) {
      throw new PolycallError("too_large", `the call's name and metadata take ${fields} bytes; the peer accepts frames of ${n.peerLimits.maxFrame}`);
    }
    const id = this.nextLocalId;
    if (id > 0xffffffff - 2) throw new PolycallError("unavailable", "call ids are exhausted on this connection; open a new one");
    this.nextLocalId += 2;
    const c = newCall(true, false);
    c.txStream = stream;
    this.calls.set(id, c);
    this.localOpen++;
    const ref = this.intern(full);
    const window = stream ? n.peerLimits.initialWindow : Infinity;
    if (payload === null) {
      this.txWindows.set(id, window);
      this.emit({
        type: "call",
        callId: id,
        methodId: ref.id,
        methodName: ref.name,
        contentType: "raw",
        compression: "none",
        meta,
        more: false,
        messageLen: null,
        stream: true,
        empty: true,
        payload: new Uint8Array(0),
      });
      return id;
    }
    const data = payload.bytes;
    const inlineMax = Math.min(INLINE_CALL_MAX, this.config.fragmentSize, n.peerLimits.maxFrame - fields);
    const inline = data.length <= inlineMax && data.length <= this.sendCredit && data.length <= window;
    const first = inline ? data : new Uint8Array(0);
    this.sendCredit -= first.length;
    if (stream) this.txWindows.set(id, window - first.length);
    this.emit({
      type: "call",
      callId: id,
      methodId: ref.id,
      methodName: ref.name,
      contentType: payload.contentType,
      compression: "none",
      meta,
      more: !inline,
      messageLen: inline ? null : data.length,
      stream,
      empty: false,
      payload: first,
    });
    if (!inline) {
      this.enqueue(id, { kind: "msg", reply: false, stream: false, contentType: payload.contentType, data, offset: 0, started: true });
    }
    return id;
  }

  /** Answers a call the peer opened (or, server role, a register request) with its reply. */
  sendReply(callId: number, payload: Payload): void {
    const n = this.checkOpen();
    this.checkPayload(n, payload);
    const c = this.peerCall(callId);
    if (c.pending !== null) throw new PolycallError("failed_precondition", `call ${callId}: its request has not arrived yet`);
    if (c.replied) throw new PolycallError("failed_precondition", `call ${callId} was answered already`);
    this.takeCall(callId);
    this.peerOpen = Math.max(0, this.peerOpen - 1);
    this.enqueue(callId, { kind: "msg", reply: true, stream: false, contentType: payload.contentType, data: payload.bytes, offset: 0, started: false });
  }

  /**
   * Answers a call the peer opened with a stream of replies (REPLY with STREAM): `first`
   * travels with the REPLY, or `null` opens the stream without a message (EMPTY).
   * Further replies follow with {@link Connection.sendMessage}; {@link Connection.sendEnd}
   * (success) or {@link Connection.sendError} ends the stream and the call.
   */
  sendReplyStream(callId: number, first: Payload | null): void {
    const n = this.checkOpen();
    if (!this.streaming) {
      throw new PolycallError("unsupported", "streaming calls were not negotiated with the peer (it did not offer feature bit 1)");
    }
    if (first !== null) this.checkPayload(n, first);
    const c = this.peerCall(callId);
    if (c.admin) throw new PolycallError("failed_precondition", `call ${callId} is a register request; it is answered with one reply`);
    if (c.pending !== null) throw new PolycallError("failed_precondition", `call ${callId}: its request has not arrived yet`);
    if (c.replied) throw new PolycallError("failed_precondition", `call ${callId} was answered already`);
    c.replied = true;
    c.txStream = true;
    this.txWindows.set(callId, n.peerLimits.initialWindow);
    if (first === null) this.enqueue(callId, { kind: "empty_reply" });
    else this.enqueue(callId, { kind: "msg", reply: true, stream: true, contentType: first.contentType, data: first.bytes, offset: 0, started: false });
  }

  /** The call whose stream from this side is open, or a `failed_precondition` error. */
  private txStreamCall(callId: number): CallState {
    const c = this.calls.get(callId);
    if (c === undefined) throw new PolycallError("failed_precondition", `call ${callId} is not open (finished, cancelled or never opened)`);
    if (!c.txStream || c.txDone || (!c.local && !c.replied)) {
      throw new PolycallError("failed_precondition", `call ${callId}: no open stream from this side on the call`);
    }
    return c;
  }

  /**
   * Sends a further message on this side's open stream of a call (its request stream,
   * or its reply stream on a call the peer opened): DATA with FIRST, then continuations,
   * within the connection's credit and the stream's window.
   */
  sendMessage(callId: number, payload: Payload): void {
    const n = this.checkOpen();
    this.checkPayload(n, payload);
    this.txStreamCall(callId);
    this.enqueue(callId, { kind: "msg", reply: false, stream: false, contentType: payload.contentType, data: payload.bytes, offset: 0, started: false });
  }

  /**
   * Ends this side's stream on the call (END after its queued messages). On a call the
   * peer opened this completes the answer: the call is over for this side.
   */
  sendEnd(callId: number): void {
    this.checkOpen();
    const c = this.txStreamCall(callId);
    c.txDone = true;
    this.enqueue(callId, { kind: "end" });
    if (!c.local) {
      this.takeCall(callId);
      this.peerOpen = Math.max(0, this.peerOpen - 1);
    }
  }

  /**
   * Fails a call the peer opened (or refuses a register request). Whatever of its answer
   * is still queued is dropped — unless `afterQueued`, when the ERROR follows the reply
   * stream's queued messages (a handler that failed after yielding some).
   */
  sendError(callId: number, error: PolycallError, afterQueued = false): void {
    this.checkOpen();
    this.peerCall(callId);
    this.takeCall(callId);
    this.peerOpen = Math.max(0, this.peerOpen - 1);
    if (afterQueued && this.queues.has(callId)) {
      this.enqueue(callId, { kind: "error", error });
      return;
    }
    this.dropOutput(callId);
    this.emit(errorFrame(callId, error));
  }

  private peerCall(callId: number): CallState {
    const c = this.calls.get(callId);
    if (c === undefined) throw new PolycallError("failed_precondition", `call ${callId} is not open (finished, cancelled or never opened)`);
    if (c.local) throw new PolycallError("failed_precondition", `call ${callId}: this side opened the call; only the peer replies to it`);
    return c;
  }

  /** Whether a call is still open (not answered, failed or cancelled). */
  isCallOpen(callId: number): boolean {
    return this.calls.has(callId);
  }

  /** Gives up on a call this side opened: tells the peer, drops queued request data. */
  cancel(callId: number): void {
    this.checkOpen();
    const c = this.calls.get(callId);
    if (c === undefined || !c.local) return;
    this.takeCall(callId);
    this.dropOutput(callId);
    this.localOpen = Math.max(0, this.localOpen - 1);
    this.emit({ type: "cancel", callId });
  }

  /** Sends a PING; the answer arrives as a `pong` event. */
  ping(opaque: bigint): void {
    this.checkOpen();
    this.emit({ type: "ping", opaque });
  }

  /** Announces that this side opens no new call and serves the peer's calls up to the highest seen. */
  goAway(error: PolycallError): void {
    this.checkOpen();
    this.localGoingAway = this.highestPeerId;
    this.emit({ type: "goaway", lastCallId: this.highestPeerId, code: error.codeNumber, message: error.detail });
  }

  /** Closes the connection: an ERROR frame (call id 0) is queued and every open call fails. */
  close(error: PolycallError): void {
    if (this.state === "closed") return;
    if (this.state === "open") this.emit(errorFrame(0, error));
    this.closeCalls(error);
    this.state = "closed";
    this.event({ type: "closed", error });
  }

  /** The transport ended under the connection: every open call fails, no frame is sent. */
  transportClosed(reason: string): void {
    if (this.state === "closed") return;
    const error = new PolycallError("unavailable", reason);
    this.closeCalls(error);
    this.state = "closed";
    this.event({ type: "closed", error });
  }

  /** Announces methods this side serves (client role). The answer is a `reply` or `failed` event on the returned id. */
  register(methods: MethodEntry[]): number {
    return this.admin({ type: "register", callId: 0, methods });
  }

  /** Withdraws methods (client role); answered like {@link Connection.register}. */
  unregister(methods: string[]): number {
    return this.admin({ type: "unregister", callId: 0, methods });
  }

  private admin(f: Extract<Frame, { type: "register" | "unregister" }>): number {
    const n = this.checkOpen();
    if (this.role !== "client") throw new PolycallError("failed_precondition", "only the connecting side registers methods");
    if (this.peerGoingAway !== null || this.localGoingAway !== null) {
      throw new PolycallError("unavailable", "the connection is going away; open a new one");
    }
    for (const m of f.methods) {
      const name = typeof m === "string" ? m : m.name;
      if (splitFullName(name) === null) throw new PolycallError("invalid_input", `${JSON.stringify(name)} is not a valid SERVICE.METHOD name`);
      if (typeof m !== "string" && (m.requestStream === true || m.replyStream === true) && !this.streaming) {
        throw new PolycallError("unsupported", `${m.name} streams, but streaming calls were not negotiated with the peer`);
      }
    }
    f.callId = this.nextLocalId;
    const chunks = encodeFrameChunks(f, this.crc);
    const body = chunks.reduce((a, c) => a + c.length, 0) - HEADER_LEN - (this.crc ? CRC_LEN : 0);
    if (body > n.peerLimits.maxFrame) {
      throw new PolycallError("too_large", `the method list takes ${body} bytes; the peer accepts frames of ${n.peerLimits.maxFrame}: register in parts`);
    }
    this.nextLocalId += 2;
    this.calls.set(f.callId, newCall(true, true));
    this.localOpen++;
    this.push(chunks);
    return f.callId;
  }

  // ---------------------------------------------------------------- output

  /** Whether {@link Connection.pollTransmit} has something to return now. */
  get wantsWrite(): boolean {
    return this.outBytes > 0 || (this.ready.length > 0 && this.state === "open");
  }

  /**
   * The bytes to send, in order, framing queued messages until about `maxBytes` are
   * buffered. Messages are cut into fragments and the fragments of concurrent calls
   * take turns, so one huge message never holds back small ones; a stream whose window
   * is spent waits without holding back the others.
   */
  pollTransmit(maxBytes = 256 * 1024): Uint8Array[] {
    this.returnCredit();
    this.framable = false;
    if (this.state === "open") {
      let stalled = 0;
      while (this.outBytes < maxBytes && this.ready.length > 0 && stalled < this.ready.length) {
        const id = this.ready.shift()!;
        const q = this.queues.get(id);
        if (q === undefined) continue;
        if (this.emitOne(id, q)) stalled = 0;
        else stalled++;
        if (q.items.length > 0) this.ready.push(id);
        else this.queues.delete(id);
      }
      this.framable = this.ready.length > 0 && stalled < this.ready.length;
    }
    const out = this.out;
    this.out = [];
    this.outBytes = 0;
    return out;
  }

  /** Frames the next item of a call's queue; false when blocked on credit or the stream's window. */
  private emitOne(id: number, q: OutQueue): boolean {
    const item = q.items[0]!;
    switch (item.kind) {
      case "end":
        q.items.shift();
        this.txWindows.delete(id);
        this.emit({ type: "end", callId: id });
        return true;
      case "error":
        q.items.shift();
        this.txWindows.delete(id);
        this.emit(errorFrame(id, item.error));
        return true;
      case "empty_reply":
        q.items.shift();
        this.emit({
          type: "reply",
          callId: id,
          contentType: "raw",
          compression: "none",
          more: false,
          messageLen: null,
          stream: true,
          empty: true,
          payload: new Uint8Array(0),
        });
        return true;
      case "msg":
        break;
    }
    const m = item;
    const n = this.negotiatedParams!;
    const left = m.data.length - m.offset;
    const cap = Math.max(1, Math.min(this.config.fragmentSize, n.peerLimits.maxFrame - 6));
    const window = this.txWindows.get(id);
    const chunk = Math.min(left, cap, this.sendCredit, window ?? Infinity);
    // Wait for credit rather than send slivers — but never for more than a quarter of
    // the peer's window: a receiver returns credit by quarters, so with a small window
    // (under 4 KiB) waiting for a whole KiB could wait forever.
    if (chunk < Math.min(left, cap, 1024, Math.floor(n.peerLimits.initialWindow / 4))) return false;
    const payload = m.data.subarray(m.offset, m.offset + chunk);
    m.offset += chunk;
    q.bytes -= chunk;
    this.queuedBytes -= chunk;
    this.sendCredit -= chunk;
    if (window !== undefined) this.txWindows.set(id, window - chunk);
    const more = m.offset < m.data.length;
    if (!more) q.items.shift();
    if (m.started) {
      this.emit({ type: "data", callId: id, first: null, more, messageLen: null, payload });
      return true;
    }
    m.started = true;
    const messageLen = more ? m.data.length : null;
    if (m.reply) {
      this.emit({
        type: "reply",
        callId: id,
        contentType: m.contentType,
        compression: "none",
        more,
        messageLen,
        stream: m.stream,
        empty: false,
        payload,
      });
    } else {
      this.emit({ type: "data", callId: id, first: { contentType: m.contentType, compression: "none" }, more, messageLen, payload });
    }
    return true;
  }
}

/** Names what the first bytes of a non-polycall peer look like. */
function describe(b: Uint8Array): string {
  if (b.length >= 4 && b[0] === 0x50 && b[1] === 0x43 && b[2] === 0x52 && b[3] === 0x31) return "libpolycall PCR1";
  if (b[0] === 0x01) return "libpolycall first-generation protocol";
  if (b[0] === 0x16) return "a TLS handshake";
  if (b[0] === 0x47 || b[0] === 0x50) return "possibly HTTP";
  return "unrecognised bytes";
}

/** The default connection configuration of `settings`. */
export function defaultConnectionConfig(settings: Settings): ConnectionConfig {
  return {
    settings,
    fragmentSize: 64 * 1024,
    reassemblyBudget: Math.max(128 * 1024 * 1024, settings.limits.maxMessage),
  };
}
