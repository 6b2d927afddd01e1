/**
 * The handshake: what a side offers in HELLO and what is agreed in WELCOME
 * (`docs/protocol.md` §4).
 */

import { readableCompressions } from "./compress.js";
import {
  type ErrorFrame,
  type HelloFrame,
  type Limits,
  type WelcomeFrame,
  type ContentType,
  type Compression,
  COMPRESSIONS,
  CONTENT_TYPES,
  compressionId,
  contentTypeId,
} from "./frame.js";
import { CODES, PolycallError } from "./status.js";

/** The protocol versions this binding speaks. */
export const SUPPORTED_VERSIONS: [number, number] = [1, 1];
/** Frame body limit before the handshake completes. */
export const HANDSHAKE_MAX_FRAME = 16 * 1024;
/** Smallest `maxFrame` / `initialWindow` a peer may advertise. */
export const MIN_MAX_FRAME = 1024;

/** Feature bits. */
export const FEATURES = {
  /** Every frame after the handshake carries a CRC32C trailer. */
  crc32c: 1n << 0n,
  /** Streaming calls (offered by default: `docs/protocol.md` §3, §6.1). */
  streaming: 1n << 1n,
  /** Per-method zstd dictionaries (reserved). */
  zstdDictionaries: 1n << 2n,
} as const;

/** Every feature bit version 1 knows. */
export const KNOWN_FEATURES = FEATURES.crc32c | FEATURES.streaming | FEATURES.zstdDictionaries;

/** Limits this binding advertises by default. */
export const DEFAULT_LIMITS: Limits = {
  maxFrame: 256 * 1024,
  maxMessage: 64 * 1024 * 1024,
  maxInFlight: 16 * 1024,
  initialWindow: 8 * 1024 * 1024,
};

/** One side's protocol settings. */
export interface Settings {
  minVersion: number;
  maxVersion: number;
  /** Feature bits offered. */
  features: bigint;
  /** This side's receive limits. */
  limits: Limits;
  /** Codecs this side reads, preferred first. */
  codecs: ContentType[];
  /** Compression this side reads, preferred first. */
  compressions: Compression[];
  /** Implementation name sent to the peer. */
  agent: string;
}

/** Settings with the defaults: version 1, streaming offered, raw + JSON, brotli (+ zstd when available). */
export function defaultSettings(overrides: Partial<Settings> = {}): Settings {
  return {
    minVersion: SUPPORTED_VERSIONS[0],
    maxVersion: SUPPORTED_VERSIONS[1],
    features: FEATURES.streaming,
    limits: { ...DEFAULT_LIMITS },
    codecs: ["json", "raw"],
    compressions: readableCompressions(),
    agent: `polycall-node/0.1.0 (node ${process.versions.node})`,
    ...overrides,
  };
}

/** Why limits are unusable, or `null`. */
export function limitsProblem(l: Limits): string | null {
  if (l.maxFrame < MIN_MAX_FRAME) return `max_frame ${l.maxFrame} is below the minimum of ${MIN_MAX_FRAME}`;
  if (l.maxMessage === 0) return "max_message is 0";
  if (l.maxInFlight === 0) return "max_in_flight is 0";
  if (l.initialWindow < MIN_MAX_FRAME) return `initial_window ${l.initialWindow} is below the minimum of ${MIN_MAX_FRAME}`;
  return null;
}

/** The HELLO of these settings. */
export function hello(s: Settings): HelloFrame {
  return {
    type: "hello",
    minVersion: s.minVersion,
    maxVersion: s.maxVersion,
    features: s.features,
    limits: s.limits,
    codecs: s.codecs.map(contentTypeId),
    compressions: s.compressions.map(compressionId),
    authMethods: [0],
    agent: s.agent,
  };
}

/** What both sides agreed. */
export interface Negotiated {
  version: number;
  features: bigint;
  /** Limits this side enforces on what it receives. */
  localLimits: Limits;
  /** Limits the peer enforces: this side sends within them. */
  peerLimits: Limits;
  codecs: ContentType[];
  compressions: Compression[];
  peerAgent: string;
}

function known<T>(names: readonly T[], ids: number[], always: T): T[] {
  const out: T[] = [];
  for (const id of ids) {
    const n = names[id];
    if (n !== undefined && !out.includes(n)) out.push(n);
  }
  if (!out.includes(always)) out.push(always);
  return out;
}

function errorFrame(code: keyof typeof CODES, message: string): ErrorFrame {
  return { type: "error", callId: 0, code: CODES[code], message, retryAfterMs: null, supportedVersions: null, extensions: [] };
}

/** The server's side: the WELCOME for a HELLO, or the ERROR frame that ends the connection. */
export function negotiate(server: Settings, h: HelloFrame): { welcome: WelcomeFrame; negotiated: Negotiated } | ErrorFrame {
  const range = (lo: number, hi: number) => `${lo}..=${hi}`;
  if (h.minVersion > h.maxVersion) {
    return errorFrame("malformed", `client offers the empty version range ${range(h.minVersion, h.maxVersion)}`);
  }
  const lo = Math.max(h.minVersion, server.minVersion);
  const hi = Math.min(h.maxVersion, server.maxVersion);
  if (lo > hi) {
    const e = errorFrame(
      "version_mismatch",
      `no common protocol version: client offers ${range(h.minVersion, h.maxVersion)}, server supports ${range(server.minVersion, server.maxVersion)}`,
    );
    e.supportedVersions = [server.minVersion, server.maxVersion];
    return e;
  }
  const bad = limitsProblem(h.limits);
  if (bad !== null) return errorFrame("invalid_input", `client limits refused: ${bad}`);
  if (!h.authMethods.includes(0)) {
    return errorFrame("unauthenticated", `no common authentication method: client offers [${h.authMethods.join(", ")}], server accepts [0]`);
  }
  const codecs = server.codecs.map(contentTypeId).filter((id) => h.codecs.includes(id));
  if (!codecs.includes(0)) codecs.push(0);
  const compressions = server.compressions.map(compressionId).filter((id) => h.compressions.includes(id));
  if (!compressions.includes(0)) compressions.push(0);
  const welcome: WelcomeFrame = {
    type: "welcome",
    version: hi,
    features: h.features & server.features & KNOWN_FEATURES,
    limits: server.limits,
    codecs,
    compressions,
    authMethod: 0,
    agent: server.agent,
  };
  return {
    welcome,
    negotiated: {
      version: hi,
      features: welcome.features,
      localLimits: server.limits,
      peerLimits: h.limits,
      codecs: known(CONTENT_TYPES, codecs, "raw"),
      compressions: known(COMPRESSIONS, compressions, "none"),
      peerAgent: h.agent,
    },
  };
}

/** The client's check of a WELCOME against its offer. */
export function acceptWelcome(client: Settings, w: WelcomeFrame): Negotiated {
  const bad = (what: string) => new PolycallError("malformed", `server's WELCOME is not within the client's offer: ${what}`);
  if (w.version < client.minVersion || w.version > client.maxVersion) {
    throw bad(`version ${w.version} outside ${client.minVersion}..=${client.maxVersion}`);
  }
  if ((w.features & ~client.features) !== 0n) throw bad(`features 0x${(w.features & ~client.features).toString(16)} not offered`);
  if (w.authMethod !== 0) throw bad(`auth method ${w.authMethod} not offered`);
  const offeredCompressions = client.compressions.map(compressionId);
  for (const id of w.compressions) {
    if (id !== 0 && !offeredCompressions.includes(id)) throw bad(`compression ${id} not offered`);
  }
  const problem = limitsProblem(w.limits);
  if (problem !== null) throw new PolycallError("invalid_input", `server limits refused: ${problem}`);
  return {
    version: w.version,
    features: w.features,
    localLimits: client.limits,
    peerLimits: w.limits,
    codecs: known(CONTENT_TYPES, w.codecs, "raw"),
    compressions: known(COMPRESSIONS, w.compressions, "none"),
    peerAgent: w.agent,
  };
}
