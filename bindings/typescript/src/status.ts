/**
 * Status codes and typed errors. The numbers and names are the wire protocol's
 * (`crates/polycall-core/src/status.rs`): they never change meaning.
 */

/** Every status code name, by wire number. */
export const CODES = {
  ok: 0,
  cancelled: 1,
  invalid_input: 2,
  not_found: 3,
  deadline_exceeded: 4,
  unauthenticated: 5,
  permission_denied: 6,
  unavailable: 7,
  busy: 8,
  too_large: 9,
  internal: 10,
  unsupported: 11,
  version_mismatch: 12,
  unknown_method: 13,
  malformed: 14,
  already_exists: 15,
  failed_precondition: 16,
  unknown: 65535,
} as const;

/** A status code name (`deadline_exceeded`). */
export type Code = keyof typeof CODES;

const BY_NUMBER = new Map<number, Code>(
  (Object.entries(CODES) as [Code, number][]).map(([name, n]) => [n, name]),
);

/** The name of a wire number; numbers this version does not know are `unknown`. */
export function codeName(n: number): Code {
  return BY_NUMBER.get(n) ?? "unknown";
}

/** The wire number of a code name. */
export function codeNumber(code: Code): number {
  return CODES[code];
}

/** Whether `s` is a known code name. */
export function isCode(s: string): s is Code {
  return Object.prototype.hasOwnProperty.call(CODES, s);
}

/** Options of a {@link PolycallError}. */
export interface PolycallErrorOptions {
  /** When a retry may succeed, in milliseconds (from the error frame's detail). */
  retryAfterMs?: number | undefined;
  /** The versions the peer supports (sent with `version_mismatch`). */
  supportedVersions?: [number, number] | undefined;
  /** The wire number, when it is not one this version knows. */
  rawCode?: number | undefined;
  /** The error this one wraps. */
  cause?: unknown;
}

/**
 * A failed call or connection: a stable `code` name, a message for people, and
 * optional retry and version hints.
 *
 * ```ts
 * try { await client.call("inventory", "get", payload); }
 * catch (e) { if (e instanceof PolycallError && e.code === "not_found") ... }
 * ```
 */
export class PolycallError extends Error {
  /** The stable code name. */
  readonly code: Code;
  /** The wire number (differs from `CODES[code]` only for unknown codes). */
  readonly codeNumber: number;
  /** When a retry may succeed, in milliseconds. */
  readonly retryAfterMs: number | undefined;
  /** The versions the peer supports (with `version_mismatch`). */
  readonly supportedVersions: [number, number] | undefined;

  constructor(code: Code, message: string, options: PolycallErrorOptions = {}) {
    super(`${code}: ${message}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "PolycallError";
    this.code = code;
    this.codeNumber = options.rawCode ?? CODES[code];
    this.retryAfterMs = options.retryAfterMs;
    this.supportedVersions = options.supportedVersions;
    this.detail = message;
  }

  /** The message without the `code: ` prefix. */
  readonly detail: string;

  /** An error of a wire code number (unknown numbers become `unknown`). */
  static fromWire(n: number, message: string, options: PolycallErrorOptions = {}): PolycallError {
    return new PolycallError(codeName(n), message, { ...options, rawCode: n });
  }
}

/** Throws-friendly constructor: `throw status("invalid_input", "x must be positive")`. */
export function status(code: Code, message: string, options: PolycallErrorOptions = {}): PolycallError {
  return new PolycallError(code, message, options);
}
