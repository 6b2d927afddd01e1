/** Typed errors of decoding frames. */

import type { Code } from "./status.js";

/** Names of frame type bytes, for messages. */
export const FRAME_TYPE_NAMES: Readonly<Record<number, string>> = {
  0x01: "HELLO",
  0x02: "WELCOME",
  0x03: "AUTH",
  0x10: "CALL",
  0x11: "REPLY",
  0x12: "ERROR",
  0x13: "CANCEL",
  0x14: "DATA",
  0x15: "END",
  0x20: "PING",
  0x21: "PONG",
  0x22: "GOAWAY",
  0x23: "CREDIT",
  0x24: "STREAM_CREDIT",
  0x25: "DICTIONARY",
  0x30: "REGISTER",
  0x31: "UNREGISTER",
};

function typeName(t: number): string {
  return FRAME_TYPE_NAMES[t] ?? `0x${t.toString(16).padStart(2, "0")}`;
}

/** Which rule a frame broke (the `error` of `tests/vectors/malformed.json`). */
export type FrameErrorKind =
  | "too_large"
  | "unknown_type"
  | "unknown_flags"
  | "reserved"
  | "bad_call_id"
  | "checksum"
  | "malformed";

/** The fields of a {@link FrameError}, named as in the golden vectors. */
export interface FrameErrorFields {
  /** too_large: the announced body length. */
  len?: number;
  /** too_large: the limit in force. */
  max?: number;
  /** unknown_type: the type byte. */
  type?: number;
  /** The frame type byte (all kinds but too_large and unknown_type). */
  frame?: number;
  /** unknown_flags: the undefined bits. */
  flags?: number;
  /** reserved: the reserved field's value. */
  value?: number;
  /** bad_call_id: the call id. */
  call_id?: number;
  /** checksum: the trailer's value. */
  expected?: number;
  /** checksum: what the bytes hash to. */
  actual?: number;
  /** malformed: what is wrong. */
  reason?: string;
}

/**
 * Bytes that are not a valid frame. Every kind is a connection error: after it the byte
 * stream cannot be trusted to be in sync.
 */
export class FrameError extends Error {
  constructor(
    /** Which rule was broken. */
    readonly kind: FrameErrorKind,
    /** Its details. */
    readonly fields: FrameErrorFields,
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }

  /** The status code the peer is told in the error frame that closes the connection. */
  code(): Code {
    switch (this.kind) {
      case "too_large":
        return "too_large";
      case "unknown_type":
        return "unsupported";
      default:
        return "malformed";
    }
  }

  /** The error as the golden vectors state it: `{"error": kind, ...fields}`. */
  toJSON(): Record<string, unknown> {
    return { error: this.kind, ...this.fields };
  }

  static tooLarge(len: number, max: number): FrameError {
    return new FrameError("too_large", { len, max }, `frame body of ${len} bytes exceeds the negotiated maximum of ${max}`);
  }

  static unknownType(type: number): FrameError {
    return new FrameError("unknown_type", { type }, `unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
  }

  static unknownFlags(frame: number, flags: number): FrameError {
    return new FrameError(
      "unknown_flags",
      { frame, flags },
      `${typeName(frame)} frame has undefined flag bits 0x${flags.toString(16).padStart(2, "0")}`,
    );
  }

  static reserved(frame: number, value: number): FrameError {
    return new FrameError(
      "reserved",
      { frame, value },
      `${typeName(frame)} frame has non-zero reserved header bytes 0x${value.toString(16).padStart(4, "0")}`,
    );
  }

  static badCallId(frame: number, callId: number): FrameError {
    return new FrameError(
      "bad_call_id",
      { frame, call_id: callId },
      `${typeName(frame)} frame with call id ${callId} (connection frames use 0, call frames never do)`,
    );
  }

  static checksum(frame: number, expected: number, actual: number): FrameError {
    const h = (n: number) => n.toString(16).padStart(8, "0");
    return new FrameError(
      "checksum",
      { frame, expected, actual },
      `${typeName(frame)} frame checksum mismatch: trailer says 0x${h(expected)}, frame hashes to 0x${h(actual)}`,
    );
  }

  static malformed(frame: number, reason: string): FrameError {
    return new FrameError("malformed", { frame, reason }, `malformed ${typeName(frame)} frame: ${reason}`);
  }
}
