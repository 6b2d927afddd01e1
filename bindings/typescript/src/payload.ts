/** Payloads: bytes plus how they are encoded (raw, JSON). */

import type { ContentType } from "./frame.js";
import { PolycallError } from "./status.js";

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/** A message: bytes and their content type. */
export class Payload {
  constructor(
    /** The encoded bytes. */
    readonly bytes: Uint8Array,
    /** How they are encoded. */
    readonly contentType: ContentType = "raw",
  ) {}

  /** Raw bytes (a string is sent as its UTF-8 bytes). */
  static raw(b: Uint8Array | string): Payload {
    return new Payload(typeof b === "string" ? encoder.encode(b) : b, "raw");
  }

  /** A JSON-encoded value. */
  static json(value: unknown): Payload {
    const text = JSON.stringify(value);
    if (text === undefined) throw new PolycallError("invalid_input", "value cannot be encoded as JSON");
    return new Payload(encoder.encode(text), "json");
  }

  /** Length in bytes. */
  get length(): number {
    return this.bytes.length;
  }

  /** The bytes as UTF-8 text. */
  text(): string {
    try {
      return decoder.decode(this.bytes);
    } catch {
      throw new PolycallError("invalid_input", "payload is not UTF-8 text");
    }
  }

  /** The payload decoded as JSON (any content type whose bytes are JSON text). */
  json<T = unknown>(): T {
    if (this.contentType === "postcard") {
      throw new PolycallError("unsupported", "payload is postcard-encoded; this binding reads raw and JSON payloads");
    }
    const text = this.text();
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new PolycallError("invalid_input", `payload is not valid JSON: ${(e as Error).message}`);
    }
  }
}
