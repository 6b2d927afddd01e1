/** Frame type bytes, flag bits and which flags and call ids each type allows. */

export const FRAME_HELLO = 0x01;
export const FRAME_WELCOME = 0x02;
export const FRAME_AUTH = 0x03;
export const FRAME_CALL = 0x10;
export const FRAME_REPLY = 0x11;
export const FRAME_ERROR = 0x12;
export const FRAME_CANCEL = 0x13;
export const FRAME_DATA = 0x14;
export const FRAME_END = 0x15;
export const FRAME_PING = 0x20;
export const FRAME_PONG = 0x21;
export const FRAME_GOAWAY = 0x22;
export const FRAME_CREDIT = 0x23;
export const FRAME_STREAM_CREDIT = 0x24;
/** A zstd dictionary the sender will compress messages with (feature bit 2, §7.1). */
export const FRAME_DICTIONARY = 0x25;
export const FRAME_REGISTER = 0x30;
export const FRAME_UNREGISTER = 0x31;

/**
 * Flag bits. `FIRST` (on DATA) and `EMPTY` (on CALL and REPLY) are the same bit of
 * different frame types.
 */
export const FLAG = { MORE: 0x01, STREAM: 0x02, NAMED: 0x04, FIRST: 0x08, EMPTY: 0x08 } as const;

/** Per type: allowed flags, and whether its call id is non-zero (true), zero (false) or either (null). */
export const FRAME_RULES: ReadonlyMap<number, { flags: number; call: boolean | null }> = new Map([
  [FRAME_HELLO, { flags: 0, call: false }],
  [FRAME_WELCOME, { flags: 0, call: false }],
  [FRAME_AUTH, { flags: 0, call: false }],
  [FRAME_CALL, { flags: FLAG.MORE | FLAG.STREAM | FLAG.NAMED | FLAG.EMPTY, call: true }],
  [FRAME_REPLY, { flags: FLAG.MORE | FLAG.STREAM | FLAG.EMPTY, call: true }],
  [FRAME_ERROR, { flags: 0, call: null }],
  [FRAME_CANCEL, { flags: 0, call: true }],
  [FRAME_DATA, { flags: FLAG.MORE | FLAG.FIRST, call: true }],
  [FRAME_END, { flags: 0, call: true }],
  [FRAME_PING, { flags: 0, call: false }],
  [FRAME_PONG, { flags: 0, call: false }],
  [FRAME_GOAWAY, { flags: 0, call: false }],
  [FRAME_CREDIT, { flags: 0, call: false }],
  [FRAME_STREAM_CREDIT, { flags: 0, call: true }],
  [FRAME_DICTIONARY, { flags: 0, call: false }],
  [FRAME_REGISTER, { flags: 0, call: true }],
  [FRAME_UNREGISTER, { flags: 0, call: true }],
]);
