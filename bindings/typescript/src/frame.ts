/**
 * Frames: the units of the polycall protocol and their exact byte layout
 * (`docs/protocol.md` §2–3). A frame is a 12-byte header, a body and, when CRC32C was
 * negotiated, a 4-byte trailer. All integers are little-endian. Encoding is canonical,
 * and decoding accepts only canonical bytes, so decode → encode is the identity.
 */

import { crc32c, crc32cAppend } from "./crc32c.js";
import { FrameError } from "./errors.js";
import {
  FLAG,
  FRAME_AUTH,
  FRAME_CALL,
  FRAME_CANCEL,
  FRAME_CREDIT,
  FRAME_DATA,
  FRAME_END,
  FRAME_ERROR,
  FRAME_GOAWAY,
  FRAME_HELLO,
  FRAME_PING,
  FRAME_PONG,
  FRAME_REGISTER,
  FRAME_REPLY,
  FRAME_RULES,
  FRAME_STREAM_CREDIT,
  FRAME_DICTIONARY,
  FRAME_UNREGISTER,
  FRAME_WELCOME,
} from "./frame-types.js";
import { type WireMeta, decodeMeta, encodeMeta } from "./meta.js";
import { splitFullName } from "./names.js";
import { Reader, Writer } from "./wire.js";

/** Length of the frame header. */
export const HEADER_LEN = 12;
/** Length of the CRC32C trailer. */
export const CRC_LEN = 4;
/** Longest message text of ERROR and GOAWAY frames, in bytes. */
export const MAX_MESSAGE_TEXT = 4096;

/** Payload codecs (content types) by wire id. */
export const CONTENT_TYPES = ["raw", "json", "postcard"] as const;
/** A payload codec name. */
export type ContentType = (typeof CONTENT_TYPES)[number];
/**
 * Compression algorithms by wire id. `zstd-dict` (3) is zstd with a dictionary the sender
 * shipped in a DICTIONARY frame (feature bit 2, §7.1); this binding does not offer it.
 */
export const COMPRESSIONS = ["none", "zstd", "brotli", "zstd-dict"] as const;
/** A compression algorithm name. */
export type Compression = (typeof COMPRESSIONS)[number];

/** The wire id of a content type. */
export function contentTypeId(c: ContentType): number {
  return CONTENT_TYPES.indexOf(c);
}

/** The wire id of a compression algorithm. */
export function compressionId(c: Compression): number {
  return COMPRESSIONS.indexOf(c);
}

/** One side's receive limits. */
export interface Limits {
  /** Largest frame body accepted, in bytes. */
  maxFrame: number;
  /** Largest message (reassembled, decompressed) accepted, in bytes. */
  maxMessage: number;
  /** Most calls the peer may have open towards this side. */
  maxInFlight: number;
  /** Flow-control credit granted at the start, in payload bytes. */
  initialWindow: number;
}

/** Client's opening offer. */
export interface HelloFrame {
  type: "hello";
  minVersion: number;
  maxVersion: number;
  /** Feature bits offered (u64). */
  features: bigint;
  limits: Limits;
  /** Codec ids the client reads, preferred first. */
  codecs: number[];
  /** Compression ids the client reads, preferred first. */
  compressions: number[];
  /** Auth method ids it can perform. */
  authMethods: number[];
  agent: string;
}

/** Server's answer: what was agreed. */
export interface WelcomeFrame {
  type: "welcome";
  version: number;
  features: bigint;
  limits: Limits;
  codecs: number[];
  compressions: number[];
  authMethod: number;
  agent: string;
}

/** An authentication step (reserved in version 1). */
export interface AuthFrame {
  type: "auth";
  method: number;
  step: number;
  data: Uint8Array;
}

/** Opens a call with the first fragment of its request. */
export interface CallFrame {
  type: "call";
  callId: number;
  /** 0 = not interned. */
  methodId: number;
  /** `SERVICE.METHOD` when the frame names the method (flag NAMED). */
  methodName: string | null;
  contentType: ContentType;
  compression: Compression;
  meta: WireMeta;
  more: boolean;
  /** With `more`: the whole message's length on the wire. */
  messageLen: number | null;
  /** Further request messages follow (DATA with FIRST), ended by END. */
  stream: boolean;
  /**
   * Flag EMPTY (only with `stream`, never with `more`): the frame opens the request
   * stream without a message; content type raw, compression none, no fragment.
   * Decoding always sets it; absent means false.
   */
  empty?: boolean;
  payload: Uint8Array;
}

/** The success reply of a call. */
export interface ReplyFrame {
  type: "reply";
  callId: number;
  contentType: ContentType;
  compression: Compression;
  more: boolean;
  messageLen: number | null;
  /** Further reply messages follow (DATA with FIRST), ended by END or ERROR. */
  stream: boolean;
  /** Flag EMPTY, as for {@link CallFrame.empty}: the reply stream opens without a message. */
  empty?: boolean;
  payload: Uint8Array;
}

/** A detail entry of an error frame of a tag this version does not know. */
export interface ErrorExtension {
  tag: number;
  value: Uint8Array;
}

/** A failed call, or (call id 0) a failed connection. */
export interface ErrorFrame {
  type: "error";
  callId: number;
  /** Status code number. */
  code: number;
  message: string;
  retryAfterMs: number | null;
  supportedVersions: [number, number] | null;
  extensions: ErrorExtension[];
}

/** A fragment: continues a message, or (with `first`) starts a further stream message. */
export interface DataFrame {
  type: "data";
  callId: number;
  first: { contentType: ContentType; compression: Compression } | null;
  more: boolean;
  messageLen: number | null;
  payload: Uint8Array;
}

/** One method a provider announces. */
export interface MethodEntry {
  /** `SERVICE.METHOD`. */
  name: string;
  idempotent: boolean;
  /** Flag bit 1: the method takes a stream of requests (absent: false). */
  requestStream?: boolean;
  /** Flag bit 2: the method answers with a stream of replies (absent: false). */
  replyStream?: boolean;
  summary: string;
  /** Input schema hint. */
  input: string;
  /** Output schema hint. */
  output: string;
}

/** A frame. */
export type Frame =
  | HelloFrame
  | WelcomeFrame
  | AuthFrame
  | CallFrame
  | ReplyFrame
  | ErrorFrame
  | { type: "cancel"; callId: number }
  | DataFrame
  | { type: "end"; callId: number }
  | { type: "ping"; opaque: bigint }
  | { type: "pong"; opaque: bigint }
  | { type: "goaway"; lastCallId: number; code: number; message: string }
  | { type: "credit"; increment: number }
  /** More payload bytes the receiver may send on this call's stream (§6.1). */
  | { type: "stream_credit"; callId: number; increment: number }
  /** A zstd dictionary (id ≥ 32768) the sender will compress messages with (§7.1). */
  | { type: "dictionary"; id: number; data: Uint8Array }
  | { type: "register"; callId: number; methods: MethodEntry[] }
  | { type: "unregister"; callId: number; methods: string[] };

const TYPE_BYTE: Record<Frame["type"], number> = {
  hello: FRAME_HELLO,
  welcome: FRAME_WELCOME,
  auth: FRAME_AUTH,
  call: FRAME_CALL,
  reply: FRAME_REPLY,
  error: FRAME_ERROR,
  cancel: FRAME_CANCEL,
  data: FRAME_DATA,
  end: FRAME_END,
  ping: FRAME_PING,
  pong: FRAME_PONG,
  goaway: FRAME_GOAWAY,
  credit: FRAME_CREDIT,
  stream_credit: FRAME_STREAM_CREDIT,
  dictionary: FRAME_DICTIONARY,
  register: FRAME_REGISTER,
  unregister: FRAME_UNREGISTER,
};

/** The type byte of a frame. */
export function frameTypeByte(f: Frame): number {
  return TYPE_BYTE[f.type];
}

/** The call id in a frame's header (0 for connection frames). */
export function frameCallId(f: Frame): number {
  return "callId" in f ? f.callId : 0;
}

/** Payload bytes that count against flow control (CALL, REPLY and DATA). */
export function flowLen(f: Frame): number {
  return f.type === "call" || f.type === "reply" || f.type === "data" ? f.payload.length : 0;
}

function flagsOf(f: Frame): number {
  const bit = (c: boolean, b: number) => (c ? b : 0);
  switch (f.type) {
    case "call":
      return (
        bit(f.more, FLAG.MORE) | bit(f.stream, FLAG.STREAM) | bit(f.methodName !== null, FLAG.NAMED) | bit(f.empty === true, FLAG.EMPTY)
      );
    case "reply":
      return bit(f.more, FLAG.MORE) | bit(f.stream, FLAG.STREAM) | bit(f.empty === true, FLAG.EMPTY);
    case "data":
      return bit(f.more, FLAG.MORE) | bit(f.first !== null, FLAG.FIRST);
    default:
      return 0;
  }
}

function writeLimits(w: Writer, l: Limits): void {
  w.u32(l.maxFrame);
  w.u32(l.maxMessage);
  w.u32(l.maxInFlight);
  w.u32(l.initialWindow);
}

function writeFields(f: Frame, w: Writer): void {
  switch (f.type) {
    case "hello":
      w.u16(f.minVersion);
      w.u16(f.maxVersion);
      w.u64(f.features);
      writeLimits(w, f.limits);
      w.list8(f.codecs);
      w.list8(f.compressions);
      w.list8(f.authMethods);
      w.str8(f.agent);
      return;
    case "welcome":
      w.u16(f.version);
      w.u64(f.features);
      writeLimits(w, f.limits);
      w.list8(f.codecs);
      w.list8(f.compressions);
      w.u8(f.authMethod);
      w.str8(f.agent);
      return;
    case "auth":
      w.u8(f.method);
      w.u8(f.step);
      return;
    case "call": {
      w.u16(f.methodId);
      if (f.methodName !== null) w.str8(f.methodName);
      w.u8(contentTypeId(f.contentType));
      w.u8(compressionId(f.compression));
      const at = w.len;
      w.u16(0);
      encodeMeta(f.meta, w);
      w.patchU16(at, w.len - at - 2);
      if (f.more) w.u32(f.messageLen ?? 0);
      return;
    }
    case "reply":
      w.u8(contentTypeId(f.contentType));
      w.u8(compressionId(f.compression));
      if (f.more) w.u32(f.messageLen ?? 0);
      return;
    case "error":
      w.u16(f.code);
      w.str16(f.message, MAX_MESSAGE_TEXT);
      if (f.retryAfterMs !== null) {
        w.u8(1);
        w.u16(4);
        w.u32(f.retryAfterMs);
      }
      if (f.supportedVersions !== null) {
        w.u8(2);
        w.u16(4);
        w.u16(f.supportedVersions[0]);
        w.u16(f.supportedVersions[1]);
      }
      for (const e of f.extensions) {
        w.u8(e.tag);
        w.u16(e.value.length);
        w.bytes(e.value);
      }
      return;
    case "data":
      if (f.first !== null) {
        w.u8(contentTypeId(f.first.contentType));
        w.u8(compressionId(f.first.compression));
        if (f.more) w.u32(f.messageLen ?? 0);
      }
      return;
    case "cancel":
    case "end":
      return;
    case "ping":
    case "pong":
      w.u64(f.opaque);
      return;
    case "goaway":
      w.u32(f.lastCallId);
      w.u16(f.code);
      w.str16(f.message, MAX_MESSAGE_TEXT);
      return;
    case "credit":
    case "stream_credit":
      w.u32(f.increment);
      return;
    case "dictionary":
      w.u32(f.id);
      return;
    case "register":
      w.u16(f.methods.length);
      for (const m of f.methods) {
        w.str8(m.name);
        w.u8(methodFlags(m));
        w.str16(m.summary, MAX_MESSAGE_TEXT);
        w.str16(m.input, MAX_MESSAGE_TEXT);
        w.str16(m.output, MAX_MESSAGE_TEXT);
      }
      return;
    case "unregister":
      w.u16(f.methods.length);
      for (const m of f.methods) w.str8(m);
      return;
  }
}

/** The REGISTER flag byte of a method: bit 0 idempotent, bit 1 request stream, bit 2 reply stream. */
export function methodFlags(m: MethodEntry): number {
  return (m.idempotent ? 1 : 0) | (m.requestStream === true ? 2 : 0) | (m.replyStream === true ? 4 : 0);
}

function payloadOf(f: Frame): Uint8Array | null {
  switch (f.type) {
    case "call":
    case "reply":
    case "data":
      return f.payload;
    case "auth":
    case "dictionary":
      return f.data;
    default:
      return null;
  }
}

/** Payloads at least this long are not copied into the header buffer. */
const INLINE_MAX = 1024;

/**
 * Encodes a frame as chunks to write in order: the header and fixed fields, and —
 * for payloads of 1 KiB or more — the payload as its own chunk (not copied) and the
 * CRC trailer. With `crc`, a CRC32C trailer follows the body.
 */
export function encodeFrameChunks(f: Frame, crc: boolean): Uint8Array[] {
  const payload = payloadOf(f);
  const inline = payload !== null && payload.length < INLINE_MAX;
  const w = new Writer(HEADER_LEN + 48 + (inline ? payload.length + CRC_LEN : CRC_LEN));
  w.u32(0);
  w.u8(TYPE_BYTE[f.type]);
  w.u8(flagsOf(f));
  w.u16(0);
  w.u32(frameCallId(f));
  writeFields(f, w);
  const bodyLen = w.len - HEADER_LEN + (payload?.length ?? 0);
  w.patchU32(0, bodyLen);
  if (payload === null || inline) {
    if (payload !== null) w.bytes(payload);
    if (crc) {
      const sum = crc32c(w.finish().subarray(0, w.len));
      w.u32(sum);
    }
    return [w.finish()];
  }
  const head = w.finish();
  if (!crc) return [head, payload];
  const sum = crc32cAppend(crc32c(head), payload);
  const trailer = new Uint8Array(4);
  new DataView(trailer.buffer).setUint32(0, sum, true);
  return [head, payload, trailer];
}

/** Encodes a frame into one buffer. */
export function encodeFrame(f: Frame, crc: boolean): Uint8Array {
  const chunks = encodeFrameChunks(f, crc);
  if (chunks.length === 1) return chunks[0]!;
  return Buffer.concat(chunks);
}

/** What a frame header says, read before the body arrives. */
export interface Header {
  len: number;
  type: number;
  flags: number;
  callId: number;
}

/**
 * Reads and checks a frame header (the first 12 bytes of `b`), in the protocol's
 * order: known type, length within `maxBody`, no undefined flag, reserved 0, call id.
 */
export function parseHeader(b: Uint8Array, maxBody: number): Header {
  const v = new DataView(b.buffer, b.byteOffset, HEADER_LEN);
  const len = v.getUint32(0, true);
  const type = b[4]!;
  const flags = b[5]!;
  const reserved = v.getUint16(6, true);
  const callId = v.getUint32(8, true);
  const rules = FRAME_RULES.get(type);
  if (rules === undefined) throw FrameError.unknownType(type);
  if (len > maxBody) throw FrameError.tooLarge(len, maxBody);
  if ((flags & ~rules.flags) !== 0) throw FrameError.unknownFlags(type, flags & ~rules.flags);
  if (reserved !== 0) throw FrameError.reserved(type, reserved);
  if ((rules.call === true && callId === 0) || (rules.call === false && callId !== 0)) {
    throw FrameError.badCallId(type, callId);
  }
  return { len, type, flags, callId };
}

/** The total length (header, body, trailer) of the frame whose header is at `b`. */
export function frameLength(h: Header, crc: boolean): number {
  return HEADER_LEN + h.len + (crc ? CRC_LEN : 0);
}

/**
 * Decodes one whole frame from `b`, which must hold exactly the frame's bytes (see
 * {@link parseHeader} and {@link frameLength}). Payloads are views of `b` (no copy).
 */
export function decodeFrameExact(b: Uint8Array, h: Header, crc: boolean): Frame {
  let end = b.length;
  if (crc) {
    end -= CRC_LEN;
    const expected = new DataView(b.buffer, b.byteOffset + end, 4).getUint32(0, true);
    const actual = crc32c(b.subarray(0, end));
    if (expected !== actual) throw FrameError.checksum(h.type, expected, actual);
  }
  return decodeBody(h, b.subarray(HEADER_LEN, end));
}

/**
 * Decodes one frame from the front of `buf`: `null` when `buf` does not yet hold a whole
 * frame; otherwise the frame and the number of bytes it took. A header announcing a
 * body over `maxBody` fails at once.
 */
export function decodeFrame(buf: Uint8Array, maxBody: number, crc: boolean): { frame: Frame; used: number } | null {
  if (buf.length < HEADER_LEN) return null;
  const h = parseHeader(buf, maxBody);
  const total = frameLength(h, crc);
  if (buf.length < total) return null;
  return { frame: decodeFrameExact(buf.subarray(0, total), h, crc), used: total };
}

function readLimits(r: Reader): Limits {
  return {
    maxFrame: r.u32("limits are cut short"),
    maxMessage: r.u32("limits are cut short"),
    maxInFlight: r.u32("limits are cut short"),
    initialWindow: r.u32("limits are cut short"),
  };
}

function fullName(r: Reader): string {
  const name = r.str8("method name is cut short");
  if (splitFullName(name) === null) throw r.err("method name is not a valid SERVICE.METHOD");
  return name;
}

function messageLen(r: Reader, present: boolean): number | null {
  if (!present) return null;
  const len = r.u32("message length is missing");
  if (len <= r.remaining()) {
    throw r.err("message length does not exceed the first fragment although MORE is set");
  }
  return len;
}

/**
 * EMPTY on CALL and REPLY opens a stream without a message: only with STREAM, never
 * with MORE, and the message fields hold nothing (raw, none, no bytes) so the encoding
 * stays canonical. Checked once the frame's fields are read, as the reference does.
 */
function checkEmpty(r: Reader, has: (f: number) => boolean, ct: ContentType, comp: Compression): boolean {
  if (!has(FLAG.EMPTY)) return false;
  if (!has(FLAG.STREAM)) throw r.err("EMPTY without STREAM");
  if (has(FLAG.MORE)) throw r.err("EMPTY with MORE");
  if (ct !== "raw" || comp !== "none" || r.remaining() !== 0) throw r.err("EMPTY frame carries a message");
  return true;
}

function decodeBody(h: Header, body: Uint8Array): Frame {
  const r = new Reader(body, h.type);
  const has = (f: number) => (h.flags & f) !== 0;
  const contentType = (): ContentType => {
    const c = CONTENT_TYPES[r.u8("content type is missing")];
    if (c === undefined) throw r.err("unknown content type id");
    return c;
  };
  const compression = (): Compression => {
    const c = COMPRESSIONS[r.u8("compression id is missing")];
    if (c === undefined) throw r.err("unknown compression id");
    return c;
  };
  let frame: Frame;
  switch (h.type) {
    case FRAME_HELLO:
      frame = {
        type: "hello",
        minVersion: r.u16("versions are cut short"),
        maxVersion: r.u16("versions are cut short"),
        features: r.u64("features are cut short"),
        limits: readLimits(r),
        codecs: r.list8("codec list is cut short"),
        compressions: r.list8("compression list is cut short"),
        authMethods: r.list8("auth method list is cut short"),
        agent: r.str8("agent is cut short"),
      };
      break;
    case FRAME_WELCOME:
      frame = {
        type: "welcome",
        version: r.u16("version is cut short"),
        features: r.u64("features are cut short"),
        limits: readLimits(r),
        codecs: r.list8("codec list is cut short"),
        compressions: r.list8("compression list is cut short"),
        authMethod: r.u8("auth method is missing"),
        agent: r.str8("agent is cut short"),
      };
      break;
    case FRAME_AUTH:
      frame = { type: "auth", method: r.u8("auth method is missing"), step: r.u8("auth step is missing"), data: r.rest() };
      break;
    case FRAME_CALL: {
      const methodId = r.u16("method id is missing");
      const methodName = has(FLAG.NAMED) ? fullName(r) : null;
      if (methodName === null && methodId === 0) throw r.err("method id 0 without a name");
      const ct = contentType();
      const comp = compression();
      const metaLen = r.u16("metadata length is missing");
      const meta = decodeMeta(r.bytes(metaLen, "metadata is cut short"));
      const len = messageLen(r, has(FLAG.MORE));
      const empty = checkEmpty(r, has, ct, comp);
      frame = {
        type: "call",
        callId: h.callId,
        methodId,
        methodName,
        contentType: ct,
        compression: comp,
        meta,
        more: has(FLAG.MORE),
        messageLen: len,
        stream: has(FLAG.STREAM),
        empty,
        payload: r.rest(),
      };
      break;
    }
    case FRAME_REPLY: {
      const ct = contentType();
      const comp = compression();
      const len = messageLen(r, has(FLAG.MORE));
      const empty = checkEmpty(r, has, ct, comp);
      frame = {
        type: "reply",
        callId: h.callId,
        contentType: ct,
        compression: comp,
        more: has(FLAG.MORE),
        messageLen: len,
        stream: has(FLAG.STREAM),
        empty,
        payload: r.rest(),
      };
      break;
    }
    case FRAME_ERROR: {
      const code = r.u16("status code is missing");
      const message = r.str16("message is cut short");
      if (Buffer.byteLength(message) > MAX_MESSAGE_TEXT) throw r.err("message longer than 4096 bytes");
      const e: ErrorFrame = {
        type: "error",
        callId: h.callId,
        code,
        message,
        retryAfterMs: null,
        supportedVersions: null,
        extensions: [],
      };
      let last = 0;
      while (r.remaining() > 0) {
        const tag = r.u8("detail tag is missing");
        const len = r.u16("detail length is missing");
        if (tag <= last) throw r.err("detail tags are not strictly ascending (or tag 0)");
        last = tag;
        if ((tag === 1 || tag === 2) && len !== 4) throw r.err("detail entry has the wrong length");
        if (tag === 1) e.retryAfterMs = r.u32("retry-after");
        else if (tag === 2) e.supportedVersions = [r.u16("versions"), r.u16("versions")];
        else e.extensions.push({ tag, value: r.bytes(len, "detail entry is cut short") });
      }
      frame = e;
      break;
    }
    case FRAME_CANCEL:
      frame = { type: "cancel", callId: h.callId };
      break;
    case FRAME_DATA: {
      const first = has(FLAG.FIRST) ? { contentType: contentType(), compression: compression() } : null;
      const len = messageLen(r, first !== null && has(FLAG.MORE));
      frame = { type: "data", callId: h.callId, first, more: has(FLAG.MORE), messageLen: len, payload: r.rest() };
      break;
    }
    case FRAME_END:
      frame = { type: "end", callId: h.callId };
      break;
    case FRAME_PING:
      frame = { type: "ping", opaque: r.u64("ping value is missing") };
      break;
    case FRAME_PONG:
      frame = { type: "pong", opaque: r.u64("pong value is missing") };
      break;
    case FRAME_GOAWAY: {
      const lastCallId = r.u32("last call id is missing");
      const code = r.u16("status code is missing");
      const message = r.str16("message is cut short");
      if (Buffer.byteLength(message) > MAX_MESSAGE_TEXT) throw r.err("message longer than 4096 bytes");
      frame = { type: "goaway", lastCallId, code, message };
      break;
    }
    case FRAME_CREDIT: {
      const increment = r.u32("increment is missing");
      if (increment === 0) throw r.err("credit increment of 0");
      frame = { type: "credit", increment };
      break;
    }
    case FRAME_STREAM_CREDIT: {
      const increment = r.u32("increment is missing");
      if (increment === 0) throw r.err("stream credit increment of 0");
      frame = { type: "stream_credit", callId: h.callId, increment };
      break;
    }
    case FRAME_DICTIONARY: {
      const id = r.u32("dictionary id is missing");
      const data = r.rest();
      if (data.length === 0) throw r.err("empty dictionary");
      frame = { type: "dictionary", id, data };
      break;
    }
    case FRAME_REGISTER: {
      const n = r.u16("method count is missing");
      const methods: MethodEntry[] = [];
      for (let i = 0; i < n; i++) {
        const name = fullName(r);
        const flag = r.u8("method flags are missing");
        if (flag > 7) throw r.err("undefined method flag bits");
        const text = () => {
          const s = r.str16("method info is cut short");
          if (Buffer.byteLength(s) > MAX_MESSAGE_TEXT) throw r.err("method info text longer than 4096 bytes");
          return s;
        };
        const summary = text();
        const input = text();
        const output = text();
        methods.push({
          name,
          idempotent: (flag & 1) !== 0,
          requestStream: (flag & 2) !== 0,
          replyStream: (flag & 4) !== 0,
          summary,
          input,
          output,
        });
      }
      frame = { type: "register", callId: h.callId, methods };
      break;
    }
    case FRAME_UNREGISTER: {
      const n = r.u16("method count is missing");
      const methods: string[] = [];
      for (let i = 0; i < n; i++) methods.push(fullName(r));
      frame = { type: "unregister", callId: h.callId, methods };
      break;
    }
    default:
      throw FrameError.unknownType(h.type);
  }
  r.finish();
  return frame;
}
