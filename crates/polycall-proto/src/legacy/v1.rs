//! libpolycall's first-generation binary header: 16 bytes, little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 1 | type: 1 handshake, 2 auth, 3 command, 4 response, 5 error, 6 heartbeat |
//! | 2 | 2 | flags: 1 encrypted, 2 compressed, 4 urgent, 8 reliable |
//! | 4 | 4 | sequence |
//! | 8 | 4 | payload length |
//! | 12 | 4 | checksum of the payload ([`checksum`]) |
//!
//! Unlike the original, this implementation bounds every length, accepts empty
//! payloads, verifies the checksum, refuses the flags it cannot honour (encrypted,
//! compressed) and — in [`Session`] — never reaches READY without verified credentials.
//!
//! ```
//! use bytes::BytesMut;
//! use polycall_proto::legacy::v1::{self, Decoder, MsgType};
//! let mut buf = BytesMut::new();
//! v1::encode(MsgType::Heartbeat, 0, 1, b"hi", &mut buf).unwrap();
//! let m = Decoder::default().decode(&mut buf).unwrap().unwrap();
//! assert_eq!((m.kind, m.sequence, &m.payload[..]), (MsgType::Heartbeat, 1, &b"hi"[..]));
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::MAX_MESSAGE;

/// The only version byte.
pub const VERSION: u8 = 1;
/// The size of a header.
pub const HEADER_LEN: usize = 16;
/// The magic of a handshake payload: "PLC".
pub const HANDSHAKE_MAGIC: u32 = 0x0050_4C43;

/// Header flags.
pub mod flags {
    /// The payload is encrypted (never honoured: refused).
    pub const ENCRYPTED: u16 = 1;
    /// The payload is compressed (never honoured: refused).
    pub const COMPRESSED: u16 = 2;
    /// Urgent (accepted; no effect).
    pub const URGENT: u16 = 4;
    /// Reliable delivery asked for (accepted; TCP is reliable).
    pub const RELIABLE: u16 = 8;
    /// Every flag the format defines.
    pub const ALL: u16 = ENCRYPTED | COMPRESSED | URGENT | RELIABLE;
    /// The flags a receiver here honours.
    pub const HONOURED: u16 = URGENT | RELIABLE;
}

/// The message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// Opens a session.
    Handshake = 1,
    /// Credentials.
    Auth = 2,
    /// A command: `{"command", "data"}`.
    Command = 3,
    /// A successful answer.
    Response = 4,
    /// A failed answer.
    Error = 5,
    /// Keep-alive, echoed.
    Heartbeat = 6,
}

impl MsgType {
    /// The type of a type byte.
    pub fn from_u8(b: u8) -> Option<MsgType> {
        Some(match b {
            1 => MsgType::Handshake,
            2 => MsgType::Auth,
            3 => MsgType::Command,
            4 => MsgType::Response,
            5 => MsgType::Error,
            6 => MsgType::Heartbeat,
            _ => return None,
        })
    }
}

/// The payload checksum: start at 0; for each byte `c = rotate_left(c, 5) + byte`
/// (wrapping).
///
/// ```
/// assert_eq!(polycall_proto::legacy::v1::checksum(b""), 0);
/// assert_eq!(polycall_proto::legacy::v1::checksum(&[1, 2]), (1 << 5) + 2);
/// ```
pub fn checksum(payload: &[u8]) -> u32 {
    payload
        .iter()
        .fold(0u32, |c, &b| c.rotate_left(5).wrapping_add(u32::from(b)))
}

/// Why bytes are not an acceptable first-generation message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V1Error {
    /// The version byte is not 1.
    #[error("version {0}: only version 1 of the first-generation header exists")]
    BadVersion(u8),
    /// The type byte is not 1–6.
    #[error("unknown message type {kind} (sequence {sequence}): 1 handshake … 6 heartbeat")]
    BadType {
        /// The type byte.
        kind: u8,
        /// The header's sequence.
        sequence: u32,
    },
    /// The payload is longer than allowed.
    #[error("a payload of {length} bytes (sequence {sequence}) is over the limit of {max} bytes")]
    TooLarge {
        /// The stated length.
        length: u64,
        /// The limit.
        max: u32,
        /// The header's sequence.
        sequence: u32,
    },
    /// The payload does not match the header's checksum.
    #[error(
        "checksum mismatch (sequence {sequence}): header says {stated:#010x}, payload gives {actual:#010x}"
    )]
    BadChecksum {
        /// The header's checksum.
        stated: u32,
        /// The payload's.
        actual: u32,
        /// The header's sequence.
        sequence: u32,
    },
    /// Flags outside the four the format defines.
    #[error(
        "unknown flags {0:#06x}: the format defines 1 encrypted, 2 compressed, 4 urgent, 8 reliable"
    )]
    UnknownFlags(u16),
    /// Encrypted or compressed: defined, but there is nothing to decrypt or decompress with.
    #[error(
        "flags {0:#06x} are not supported: encrypted (1) and compressed (2) payloads cannot be read here; send plain payloads (use TLS for confidentiality)"
    )]
    UnsupportedFlags(u16),
    /// A handshake payload that is not magic + version + flags.
    #[error("bad handshake: {0}")]
    BadHandshake(String),
    /// A message not allowed in the session's state.
    #[error("a {kind:?} message is not allowed in state {state:?}{hint}")]
    OutOfOrder {
        /// The message type.
        kind: MsgType,
        /// The session's state.
        state: SessionState,
        /// What was expected.
        hint: &'static str,
    },
    /// A payload that is not the JSON shape expected.
    #[error("bad {what}: {reason}")]
    BadPayload {
        /// What was being read (auth, command).
        what: &'static str,
        /// Why it is not acceptable.
        reason: String,
    },
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: MsgType,
    /// Flags.
    pub flags: u16,
    /// Sequence.
    pub sequence: u32,
    /// Payload length.
    pub length: u32,
    /// Payload checksum.
    pub checksum: u32,
}

impl Header {
    /// Parses and checks a header against `max` payload bytes (flags are checked by
    /// [`Session`], so the message can be answered).
    pub fn parse(b: &[u8; HEADER_LEN], max: u32) -> Result<Header, V1Error> {
        if b[0] != VERSION {
            return Err(V1Error::BadVersion(b[0]));
        }
        let le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let sequence = le(4);
        let kind = MsgType::from_u8(b[1]).ok_or(V1Error::BadType {
            kind: b[1],
            sequence,
        })?;
        let length = le(8);
        if length > max {
            return Err(V1Error::TooLarge {
                length: length.into(),
                max,
                sequence,
            });
        }
        Ok(Header {
            kind,
            flags: u16::from_le_bytes([b[2], b[3]]),
            sequence,
            length,
            checksum: le(12),
        })
    }

    /// Appends the header's 16 bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(VERSION);
        dst.put_u8(self.kind as u8);
        dst.put_u16_le(self.flags);
        dst.put_u32_le(self.sequence);
        dst.put_u32_le(self.length);
        dst.put_u32_le(self.checksum);
    }
}

/// One message, its checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type.
    pub kind: MsgType,
    /// Flags as sent.
    pub flags: u16,
    /// Sequence as sent.
    pub sequence: u32,
    /// The payload (may be empty).
    pub payload: Bytes,
}

/// Appends a message (at most [`MAX_MESSAGE`] payload bytes) with its checksum.
pub fn encode(
    kind: MsgType,
    flags: u16,
    sequence: u32,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), V1Error> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_MESSAGE)
        .ok_or(V1Error::TooLarge {
            length: payload.len() as u64,
            max: MAX_MESSAGE,
            sequence,
        })?;
    dst.reserve(HEADER_LEN + payload.len());
    Header {
        kind,
        flags,
        sequence,
        length,
        checksum: checksum(payload),
    }
    .encode(dst);
    dst.put_slice(payload);
    Ok(())
}

/// Splits messages off a receive buffer, verifying lengths and checksums.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    /// The largest payload accepted.
    pub max: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { max: MAX_MESSAGE }
    }
}

impl Decoder {
    /// The next whole message, removed from `buf`; `Ok(None)` while incomplete. Header
    /// errors are reported before the body arrives; a checksum mismatch consumes the
    /// message.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, V1Error> {
        if let Some(&v) = buf.first()
            && v != VERSION
        {
            return Err(V1Error::BadVersion(v));
        }
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Header::parse(h, self.max)?;
        let total = HEADER_LEN + h.length as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(h.length as usize).freeze();
        let actual = checksum(&payload);
        if actual != h.checksum {
            return Err(V1Error::BadChecksum {
                stated: h.checksum,
                actual,
                sequence: h.sequence,
            });
        }
        Ok(Some(Message {
            kind: h.kind,
            flags: h.flags,
            sequence: h.sequence,
            payload,
        }))
    }
}

/// A handshake payload: magic, version, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The protocol version the client speaks (1).
    pub version: u8,
    /// The client's flags.
    pub flags: u16,
}

impl Handshake {
    /// Parses a handshake payload: 7 bytes (magic u32 LE, version u8, flags u16 LE), the
    /// 8-byte form C padding produced (the pad byte after the version), the magic alone
    /// (4 bytes: version 1, no flags) or an empty payload (a bare hello, the same) —
    /// libpolycall's clients sent 0, 4 or 8 bytes.
    pub fn parse(p: &[u8]) -> Result<Handshake, V1Error> {
        let (version, flags) = match p.len() {
            0 => {
                return Ok(Handshake {
                    version: VERSION,
                    flags: 0,
                });
            }
            4 => (VERSION, 0),
            7 => (p[4], u16::from_le_bytes([p[5], p[6]])),
            8 => (p[4], u16::from_le_bytes([p[6], p[7]])),
            n => {
                return Err(V1Error::BadHandshake(format!(
                    "{n} bytes; a handshake is magic (4), version (1) and flags (2), 0, 4, 7 or 8 bytes with padding"
                )));
            }
        };
        let magic = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        if magic != HANDSHAKE_MAGIC {
            return Err(V1Error::BadHandshake(format!(
                "magic {magic:#010x}, expected {HANDSHAKE_MAGIC:#010x} (\"PLC\")"
            )));
        }
        if version != VERSION {
            return Err(V1Error::BadHandshake(format!(
                "version {version}; this server speaks version 1"
            )));
        }
        check_flags(flags)?;
        Ok(Handshake { version, flags })
    }

    /// The 8-byte (padded) form.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&HANDSHAKE_MAGIC.to_le_bytes());
        b[4] = self.version;
        b[6..].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

fn check_flags(f: u16) -> Result<(), V1Error> {
    if f & !flags::ALL != 0 {
        Err(V1Error::UnknownFlags(f))
    } else if f & !flags::HONOURED != 0 {
        Err(V1Error::UnsupportedFlags(f & !flags::HONOURED))
    } else {
        Ok(())
    }
}

/// Credentials of an auth message: `{"username", "password"}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A command: `{"command": "service.operation", "data": <any JSON>}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// `service.operation`.
    pub command: String,
    /// The input (`null` when absent or the payload is empty).
    pub data: Value,
}

fn json_object(p: &[u8], what: &'static str) -> Result<serde_json::Map<String, Value>, V1Error> {
    match serde_json::from_slice::<Value>(p) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(V1Error::BadPayload {
            what,
            reason: "expected a JSON object".into(),
        }),
        Err(e) => Err(V1Error::BadPayload {
            what,
            reason: format!("not valid JSON: {e}"),
        }),
    }
}

fn str_field(
    m: &serde_json::Map<String, Value>,
    key: &str,
    what: &'static str,
) -> Result<String, V1Error> {
    m.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| V1Error::BadPayload {
            what,
            reason: format!("\"{key}\" must be a string"),
        })
}

impl Credentials {
    /// Parses an auth payload.
    pub fn parse(p: &[u8]) -> Result<Credentials, V1Error> {
        let m = json_object(p, "auth payload")?;
        Ok(Credentials {
            username: str_field(&m, "username", "auth payload")?,
            password: str_field(&m, "password", "auth payload")?,
        })
    }
}

impl Command {
    /// Parses a command payload.
    pub fn parse(p: &[u8]) -> Result<Command, V1Error> {
        let mut m = json_object(p, "command")?;
        let command = str_field(&m, "command", "command")?;
        Ok(Command {
            command,
            data: m.remove("data").unwrap_or(Value::Null),
        })
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Nothing received yet; a handshake is expected.
    Init,
    /// Handshake done; credentials are expected.
    Handshake,
    /// Credentials received, being verified.
    Auth,
    /// Authenticated: commands and heartbeats.
    Ready,
    /// A fatal error was reported; the connection closes next.
    Error,
    /// Closed.
    Closed,
}

/// What a received message asks of the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Answer the handshake (with [`Handshake::encode`] in a response).
    Handshake(Handshake),
    /// Verify these credentials, then call [`Session::authenticated`].
    Auth(Credentials),
    /// Run a command and answer with a response or an error.
    Command(Command),
    /// Echo this heartbeat.
    Heartbeat(Bytes),
}

/// A received message's meaning, with its sequence for the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The sequence to answer with.
    pub sequence: u32,
    /// What it asks.
    pub input: Input,
}

/// The server side of a first-generation session: INIT → HANDSHAKE → AUTH → READY,
/// then ERROR → CLOSED.
///
/// ```
/// use polycall_proto::legacy::v1::{Handshake, Input, Message, MsgType, Session, SessionState};
/// let mut s = Session::default();
/// let hs = Message { kind: MsgType::Handshake, flags: 0, sequence: 1,
///     payload: Handshake { version: 1, flags: 0 }.encode().to_vec().into() };
/// assert!(matches!(s.receive(hs).unwrap().input, Input::Handshake(_)));
/// assert_eq!(s.state(), SessionState::Handshake);
/// ```
#[derive(Debug, Clone)]
pub struct Session {
    state: SessionState,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            state: SessionState::Init,
        }
    }
}

impl Session {
    /// The state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Interprets a received message. An error moves the session to ERROR when it is
    /// fatal ([`Session::state`] tells); a refused flag or a bad command payload only
    /// refuses that message.
    pub fn receive(&mut self, m: Message) -> Result<Received, V1Error> {
        let sequence = m.sequence;
        let out_of_order = |state, hint| V1Error::OutOfOrder {
            kind: m.kind,
            state,
            hint,
        };
        if let Err(e) = check_flags(m.flags) {
            if self.state != SessionState::Ready {
                self.state = SessionState::Error;
            }
            return Err(e);
        }
        let input = match (self.state, m.kind) {
            (SessionState::Init, MsgType::Handshake) => {
                let h = Handshake::parse(&m.payload)
                    .inspect_err(|_| self.state = SessionState::Error)?;
                self.state = SessionState::Handshake;
                Input::Handshake(h)
            }
            (SessionState::Handshake, MsgType::Auth) => {
                let c = Credentials::parse(&m.payload)
                    .inspect_err(|_| self.state = SessionState::Error)?;
                self.state = SessionState::Auth;
                Input::Auth(c)
            }
            (SessionState::Ready, MsgType::Command) => Input::Command(Command::parse(&m.payload)?),
            (
                SessionState::Init | SessionState::Handshake | SessionState::Ready,
                MsgType::Heartbeat,
            ) => Input::Heartbeat(m.payload),
            (state, _) => {
                let hint = match state {
                    SessionState::Init => "; send a handshake first",
                    SessionState::Handshake => "; send credentials (auth) next",
                    SessionState::Auth => "; credentials are being verified",
                    SessionState::Ready => "; a ready session takes commands and heartbeats",
                    SessionState::Error | SessionState::Closed => "; the session is over",
                };
                self.state = SessionState::Error;
                return Err(out_of_order(state, hint));
            }
        };
        Ok(Received { sequence, input })
    }

    /// The outcome of verifying credentials: READY, or ERROR.
    pub fn authenticated(&mut self, ok: bool) {
        if self.state == SessionState::Auth {
            self.state = if ok {
                SessionState::Ready
            } else {
                SessionState::Error
            };
        }
    }

    /// Marks the session failed (ERROR).
    pub fn fail(&mut self) {
        if self.state != SessionState::Closed {
            self.state = SessionState::Error;
        }
    }

    /// Marks the session closed.
    pub fn close(&mut self) {
        self.state = SessionState::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: MsgType, flags: u16, seq: u32, payload: &[u8]) -> Message {
        Message {
            kind,
            flags,
            sequence: seq,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn checksum_matches_the_definition() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"a"), 97);
        assert_eq!(checksum(b"ab"), (97u32 << 5) + 98);
        // Wraps instead of overflowing.
        let big = vec![0xFFu8; 10_000];
        let mut c = 0u32;
        for b in &big {
            c = c.rotate_left(5).wrapping_add(u32::from(*b));
        }
        assert_eq!(checksum(&big), c);
    }

    #[test]
    fn round_trip_every_type_with_layout() {
        for t in 1..=6u8 {
            let kind = MsgType::from_u8(t).unwrap();
            let mut buf = BytesMut::new();
            encode(kind, flags::URGENT, 0x0102_0304, b"xyz", &mut buf).unwrap();
            assert_eq!(buf[0], 1);
            assert_eq!(buf[1], t);
            assert_eq!(&buf[2..4], &[4, 0]);
            assert_eq!(&buf[4..8], &[4, 3, 2, 1]);
            assert_eq!(&buf[8..12], &[3, 0, 0, 0]);
            assert_eq!(&buf[12..16], &checksum(b"xyz").to_le_bytes());
            let m = Decoder::default().decode(&mut buf).unwrap().unwrap();
            assert_eq!(m, msg(kind, flags::URGENT, 0x0102_0304, b"xyz"));
        }
        assert_eq!(MsgType::from_u8(0), None);
        assert_eq!(MsgType::from_u8(7), None);
    }

    #[test]
    fn empty_payloads_and_partial_input() {
        let mut all = BytesMut::new();
        encode(MsgType::Heartbeat, 0, 1, b"", &mut all).unwrap();
        encode(MsgType::Command, 0, 2, b"{}", &mut all).unwrap();
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(m) = Decoder::default().decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].payload.is_empty());
    }

    #[test]
    fn decoder_errors() {
        let d = Decoder::default();
        assert_eq!(
            d.decode(&mut BytesMut::from(&[2u8][..])),
            Err(V1Error::BadVersion(2))
        );
        let mut b = BytesMut::new();
        encode(MsgType::Command, 0, 9, b"", &mut b).unwrap();
        b[1] = 7;
        assert_eq!(
            d.decode(&mut b),
            Err(V1Error::BadType {
                kind: 7,
                sequence: 9
            })
        );
        // Oversize, found on the header alone.
        let mut b = BytesMut::new();
        Header {
            kind: MsgType::Command,
            flags: 0,
            sequence: 3,
            length: MAX_MESSAGE + 1,
            checksum: 0,
        }
        .encode(&mut b);
        assert!(matches!(
            d.decode(&mut b),
            Err(V1Error::TooLarge { sequence: 3, .. })
        ));
        assert!(matches!(
            encode(
                MsgType::Command,
                0,
                1,
                &vec![0; MAX_MESSAGE as usize + 1],
                &mut BytesMut::new()
            ),
            Err(V1Error::TooLarge { .. })
        ));
        // Checksum mismatch.
        let mut b = BytesMut::new();
        encode(MsgType::Command, 0, 4, b"{}", &mut b).unwrap();
        b[12] ^= 1;
        assert!(matches!(
            d.decode(&mut b),
            Err(V1Error::BadChecksum { sequence: 4, .. })
        ));
    }

    #[test]
    fn handshake_forms() {
        let h = Handshake {
            version: 1,
            flags: flags::RELIABLE,
        };
        let eight = h.encode();
        assert_eq!(&eight[..4], &[0x43, 0x4C, 0x50, 0x00]);
        assert_eq!(Handshake::parse(&eight), Ok(h));
        let seven = [0x43, 0x4C, 0x50, 0x00, 1, 8, 0];
        assert_eq!(Handshake::parse(&seven), Ok(h));
        assert_eq!(
            Handshake::parse(&[]),
            Ok(Handshake {
                version: 1,
                flags: 0
            })
        );
        assert_eq!(
            Handshake::parse(&eight[..4]),
            Ok(Handshake {
                version: 1,
                flags: 0
            })
        );
        assert!(matches!(
            Handshake::parse(&[0x43, 0x4C, 0x50, 0, 1]),
            Err(V1Error::BadHandshake(_))
        ));
        assert!(matches!(
            Handshake::parse(&[1, 2, 3, 4]),
            Err(V1Error::BadHandshake(_))
        ));
        let mut bad = eight;
        bad[0] = 0;
        assert!(matches!(
            Handshake::parse(&bad),
            Err(V1Error::BadHandshake(_))
        ));
        let mut bad = eight;
        bad[4] = 2;
        assert!(matches!(
            Handshake::parse(&bad),
            Err(V1Error::BadHandshake(_))
        ));
        let enc = Handshake {
            version: 1,
            flags: flags::ENCRYPTED,
        }
        .encode();
        assert_eq!(Handshake::parse(&enc), Err(V1Error::UnsupportedFlags(1)));
        let unknown = Handshake {
            version: 1,
            flags: 0x100,
        }
        .encode();
        assert_eq!(
            Handshake::parse(&unknown),
            Err(V1Error::UnknownFlags(0x100))
        );
    }

    #[test]
    fn session_happy_path() {
        let mut s = Session::default();
        assert_eq!(s.state(), SessionState::Init);
        let r = s
            .receive(msg(
                MsgType::Handshake,
                0,
                1,
                &Handshake {
                    version: 1,
                    flags: 0,
                }
                .encode(),
            ))
            .unwrap();
        assert_eq!(r.sequence, 1);
        assert_eq!(s.state(), SessionState::Handshake);
        let r = s
            .receive(msg(
                MsgType::Auth,
                0,
                2,
                br#"{"username":"alice","password":"s3cret"}"#,
            ))
            .unwrap();
        let Input::Auth(c) = r.input else { panic!() };
        assert_eq!(c.username, "alice");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(s.state(), SessionState::Auth);
        s.authenticated(true);
        assert_eq!(s.state(), SessionState::Ready);
        let r = s
            .receive(msg(
                MsgType::Command,
                flags::RELIABLE,
                3,
                br#"{"command":"debug.echo","data":[1]}"#,
            ))
            .unwrap();
        assert_eq!(
            r.input,
            Input::Command(Command {
                command: "debug.echo".into(),
                data: serde_json::json!([1])
            })
        );
        let r = s.receive(msg(MsgType::Heartbeat, 0, 4, b"")).unwrap();
        assert_eq!(r.input, Input::Heartbeat(Bytes::new()));
        // A refused flag in READY refuses that message only.
        assert_eq!(
            s.receive(msg(MsgType::Command, flags::COMPRESSED, 5, b"{}")),
            Err(V1Error::UnsupportedFlags(2))
        );
        assert_eq!(s.state(), SessionState::Ready);
        // So does a bad command payload.
        assert!(matches!(
            s.receive(msg(MsgType::Command, 0, 6, b"nope")),
            Err(V1Error::BadPayload { .. })
        ));
        assert_eq!(s.state(), SessionState::Ready);
        s.close();
        assert_eq!(s.state(), SessionState::Closed);
    }

    #[test]
    fn session_refuses_out_of_order_and_failed_auth() {
        // A command before authentication.
        let mut s = Session::default();
        assert!(matches!(
            s.receive(msg(MsgType::Command, 0, 1, b"{}")),
            Err(V1Error::OutOfOrder {
                state: SessionState::Init,
                ..
            })
        ));
        assert_eq!(s.state(), SessionState::Error);
        // Auth before the handshake.
        let mut s = Session::default();
        assert!(s.receive(msg(MsgType::Auth, 0, 1, b"{}")).is_err());
        // Command after the handshake, before auth.
        let mut s = Session::default();
        s.receive(msg(MsgType::Handshake, 0, 1, b"")).unwrap();
        assert!(matches!(
            s.receive(msg(MsgType::Command, 0, 2, b"{}")),
            Err(V1Error::OutOfOrder {
                state: SessionState::Handshake,
                ..
            })
        ));
        // Bad credentials shape.
        let mut s = Session::default();
        s.receive(msg(MsgType::Handshake, 0, 1, b"")).unwrap();
        assert!(matches!(
            s.receive(msg(MsgType::Auth, 0, 2, br#"{"username":"a"}"#)),
            Err(V1Error::BadPayload { .. })
        ));
        assert_eq!(s.state(), SessionState::Error);
        // Refused credentials.
        let mut s = Session::default();
        s.receive(msg(MsgType::Handshake, 0, 1, b"")).unwrap();
        s.receive(msg(
            MsgType::Auth,
            0,
            2,
            br#"{"username":"a","password":"b"}"#,
        ))
        .unwrap();
        s.authenticated(false);
        assert_eq!(s.state(), SessionState::Error);
        // A handshake with an encrypted flag in the header is refused.
        let mut s = Session::default();
        assert_eq!(
            s.receive(msg(MsgType::Handshake, flags::ENCRYPTED, 1, b"")),
            Err(V1Error::UnsupportedFlags(1))
        );
        assert_eq!(s.state(), SessionState::Error);
        // Responses from a client are out of order anywhere.
        let mut s = Session::default();
        assert!(s.receive(msg(MsgType::Response, 0, 1, b"")).is_err());
    }
}
