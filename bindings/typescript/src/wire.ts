/** Bounds-checked little-endian reading and writing of frame bodies. */

import { FrameError } from "./errors.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8enc = new TextEncoder();

/** UTF-8 bytes of `s`. */
export function utf8Bytes(s: string): Uint8Array {
  return utf8enc.encode(s);
}

/** Truncates UTF-8 `b` to at most `max` bytes on a character boundary. */
export function clipBytes(b: Uint8Array, max: number): Uint8Array {
  if (b.length <= max) return b;
  let end = max;
  // Step back over continuation bytes (10xxxxxx).
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

/** Reads a frame body; every read is bounds-checked and fails with a `malformed` {@link FrameError}. */
export class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly body: Uint8Array,
    private readonly frameType: number,
  ) {
    this.view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  }

  /** A `malformed` error about this body. */
  err(reason: string): FrameError {
    return FrameError.malformed(this.frameType, reason);
  }

  private take(n: number, what: string): number {
    const start = this.pos;
    if (n < 0 || start + n > this.body.length) throw this.err(what);
    this.pos = start + n;
    return start;
  }

  u8(what: string): number {
    return this.body[this.take(1, what)]!;
  }

  u16(what: string): number {
    return this.view.getUint16(this.take(2, what), true);
  }

  u32(what: string): number {
    return this.view.getUint32(this.take(4, what), true);
  }

  u64(what: string): bigint {
    return this.view.getBigUint64(this.take(8, what), true);
  }

  /** `n` bytes as a view of the body (no copy). */
  bytes(n: number, what: string): Uint8Array {
    const at = this.take(n, what);
    return this.body.subarray(at, at + n);
  }

  str(n: number, what: string): string {
    const b = this.bytes(n, what);
    try {
      return utf8.decode(b);
    } catch {
      throw this.err("text is not UTF-8");
    }
  }

  str8(what: string): string {
    return this.str(this.u8(what), what);
  }

  str16(what: string): string {
    return this.str(this.u16(what), what);
  }

  list8(what: string): number[] {
    const n = this.u8(what);
    return Array.from(this.bytes(n, what));
  }

  /** Everything left (no copy). */
  rest(): Uint8Array {
    const b = this.body.subarray(this.pos);
    this.pos = this.body.length;
    return b;
  }

  remaining(): number {
    return this.body.length - this.pos;
  }

  /** Fails unless the whole body was read. */
  finish(): void {
    if (this.pos !== this.body.length) throw this.err("trailing bytes after the last field");
  }
}

/** A growable little-endian byte buffer for frame headers and fields. */
export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  /** Bytes written. */
  len = 0;

  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
  }

  private reserve(n: number): number {
    const at = this.len;
    if (at + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, at + n));
      next.set(this.buf.subarray(0, at));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    this.len = at + n;
    return at;
  }

  u8(v: number): void {
    const at = this.reserve(1);
    this.buf[at] = v;
  }

  u16(v: number): void {
    const at = this.reserve(2);
    this.view.setUint16(at, v, true);
  }

  u32(v: number): void {
    const at = this.reserve(4);
    this.view.setUint32(at, v >>> 0, true);
  }

  u64(v: bigint): void {
    const at = this.reserve(8);
    this.view.setBigUint64(at, BigInt.asUintN(64, v), true);
  }

  /** Overwrites a u16 written earlier at `at`. */
  patchU16(at: number, v: number): void {
    this.view.setUint16(at, v, true);
  }

  /** Overwrites a u32 written earlier at `at`. */
  patchU32(at: number, v: number): void {
    this.view.setUint32(at, v >>> 0, true);
  }

  bytes(b: Uint8Array): void {
    const at = this.reserve(b.length);
    this.buf.set(b, at);
  }

  /** Text with a u8 length, clipped to 255 bytes. */
  str8(s: string): void {
    const b = clipBytes(utf8Bytes(s), 255);
    this.u8(b.length);
    this.bytes(b);
  }

  /** Text with a u16 length, clipped to `max` bytes. */
  str16(s: string, max = 0xffff): void {
    const b = clipBytes(utf8Bytes(s), max);
    this.u16(b.length);
    this.bytes(b);
  }

  /** A u8 count, then the ids. */
  list8(ids: readonly number[]): void {
    this.u8(ids.length);
    for (const id of ids) this.u8(id);
  }

  /** The bytes written (a view; the writer must not be used afterwards). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}
