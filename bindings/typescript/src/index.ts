/**
 * polycall for Node.js: the wire protocol (sans-IO), a {@link Client} that calls
 * methods and a {@link Provider} that serves them through a polycall runtime.
 */

export { Client } from "./client.js";
export {
  type BidiStreamHandler,
  type CallContext,
  type ClientStreamHandler,
  type Handler,
  type MethodInfo,
  type MethodKind,
  Methods,
  Provider,
  type ServerStreamHandler,
} from "./provider.js";
export { MessageStream, type StreamSource } from "./stream.js";
export { type CallOptions, type ConnectOptions, Peer, parseEndpoint } from "./peer.js";
export { Payload } from "./payload.js";
export { CODES, type Code, PolycallError, type PolycallErrorOptions, codeName, codeNumber, isCode, status } from "./status.js";
export { type ConnectionConfig, type ConnectionEvent, Connection, PREFACE, ProtoError, type Role, defaultConnectionConfig } from "./connection.js";
export * from "./frame.js";
export { FrameError, type FrameErrorFields, type FrameErrorKind } from "./errors.js";
export {
  DEFAULT_LIMITS,
  FEATURES,
  KNOWN_FEATURES,
  type Negotiated,
  SUPPORTED_VERSIONS,
  type Settings,
  acceptWelcome,
  defaultSettings,
  hello,
  negotiate,
} from "./handshake.js";
export { type Extension, type Priority, type TraceContext, type WireMeta, decodeMeta, encodeMeta, parseTraceparent, traceparent } from "./meta.js";
export {
  DEFAULT_SERVICE_NAME,
  type ExportResult,
  MAX_EXPORT_BATCH,
  type SpanContext,
  type SpanExporter,
  type SpanKind,
  type SpanRecord,
  SpanRecorder,
  type SpanRecorderOptions,
  currentTrace,
  isSampled,
  newSpanId,
  newTraceContext,
  newTraceId,
  runWithTrace,
  spanContextOf,
  toHex,
  traceStorage,
} from "./trace.js";
export { HAS_ZSTD, decompress, readableCompressions } from "./compress.js";
export { crc32c } from "./crc32c.js";
export { splitFullName } from "./names.js";
export * as stubs from "./stubs.js";
