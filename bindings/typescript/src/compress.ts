/**
 * Compression this binding reads: brotli always (Node's zlib has it), zstd only when
 * the running Node's zlib offers it (Node 20 does not: then zstd is never offered, so
 * a peer never sends it). This side sends messages uncompressed, which the protocol
 * always allows.
 */

import * as zlib from "node:zlib";

import type { Compression } from "./frame.js";
import { PolycallError } from "./status.js";

type Decompress = (b: Uint8Array, opts: { maxOutputLength: number }) => Buffer;

const z = zlib as unknown as Record<string, unknown>;
const zstdDecompress: Decompress | undefined =
  typeof z["zstdDecompressSync"] === "function" ? (z["zstdDecompressSync"] as Decompress) : undefined;

/** Whether this Node can read zstd (Node ≥ 22.15 / 23.8). */
export const HAS_ZSTD = zstdDecompress !== undefined;

/** Compression ids this side can read, preferred first (`none` always last). */
export function readableCompressions(): Compression[] {
  return HAS_ZSTD ? ["zstd", "brotli", "none"] : ["brotli", "none"];
}

/**
 * Decompresses a whole message, refusing output over `max` bytes
 * (`too_large`) and corrupt input (`malformed`).
 */
export function decompress(alg: Compression, data: Uint8Array, max: number): Uint8Array {
  if (alg === "none") return data;
  const run = alg === "brotli" ? (zlib.brotliDecompressSync as Decompress) : zstdDecompress;
  if (run === undefined) throw new PolycallError("malformed", `message compressed with ${alg}, which this side cannot read`);
  try {
    // maxOutputLength must be at least 1.
    return run(data, { maxOutputLength: Math.max(1, max) });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ERR_BUFFER_TOO_LARGE" || e instanceof RangeError) {
      throw new PolycallError("too_large", `${alg} message decompresses to more than the limit of ${max} bytes`);
    }
    throw new PolycallError("malformed", `${alg} message does not decompress: ${(e as Error).message}`);
  }
}
