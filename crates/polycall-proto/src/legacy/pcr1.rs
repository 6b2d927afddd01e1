//! PCR1: libpolycall's RPC framing. Every message is a 16-byte header followed by a
//! UTF-8 JSON payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic, ASCII `PCR1` |
//! | 4 | 1 | type: 1 request, 2 response, 3 control, 4 control reply |
//! | 5 | 1 | flags: 0 |
//! | 6 | 2 | reserved: 0 |
//! | 8 | 4 | correlation id, big-endian, echoed in the answer |
//! | 12 | 4 | payload length, big-endian, at most 1 MiB |
//!
//! ```
//! use bytes::BytesMut;
//! use polycall_core::Code;
//! use polycall_proto::legacy::pcr1::{self, Decoder, Kind, Request};
//! let mut buf = BytesMut::new();
//! let body = br#"{"service":"debug","operation":"echo","deadline_ms":500,"input":{"a":1}}"#;
//! pcr1::encode(Kind::Request, 1, body, &mut buf).unwrap();
//! let msg = Decoder::default().decode(&mut buf).unwrap().unwrap();
//! let req = Request::parse(&msg.payload).unwrap();
//! assert_eq!((req.service.as_str(), req.deadline_ms), ("debug", Some(500)));
//! let err = pcr1::error_body(Code::UnknownMethod, "no such operation");
//! assert_eq!(err["error"]["code"], "operation.unknown");
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use polycall_core::{Code, Status};
use serde_json::{Value, json};

use super::MAX_MESSAGE;

/// The magic of every PCR1 header.
pub const MAGIC: [u8; 4] = *b"PCR1";
/// The size of a PCR1 header.
pub const HEADER_LEN: usize = 16;

/// A message's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A call: `{"service", "operation", "deadline_ms", "input"}`.
    Request = 1,
    /// The answer to a request.
    Response = 2,
    /// A control message: `{"action", "auth_token"}`.
    Control = 3,
    /// The answer to a control message.
    ControlReply = 4,
}

impl Kind {
    /// The type of a type byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Control,
            4 => Kind::ControlReply,
            _ => return None,
        })
    }

    /// The answer's type to a message of this type.
    pub fn answer(self) -> Kind {
        match self {
            Kind::Control | Kind::ControlReply => Kind::ControlReply,
            Kind::Request | Kind::Response => Kind::Response,
        }
    }
}

/// Why bytes are not a PCR1 message. Every variant is detected on the header alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pcr1Error {
    /// The first four bytes are not `PCR1`.
    #[error("bad magic {0:02x?}: a PCR1 header starts with ASCII \"PCR1\"")]
    BadMagic([u8; 4]),
    /// The type byte is not 1–4.
    #[error(
        "unknown message type {kind} (correlation id {correlation_id}): PCR1 has 1 request, 2 response, 3 control, 4 control reply"
    )]
    BadType {
        /// The type byte.
        kind: u8,
        /// The header's correlation id.
        correlation_id: u32,
    },
    /// The flags byte is not 0.
    #[error("flags {flags:#04x} (correlation id {correlation_id}): PCR1 defines no flags; send 0")]
    BadFlags {
        /// The flags byte.
        flags: u8,
        /// The header's correlation id.
        correlation_id: u32,
    },
    /// The reserved field is not 0.
    #[error("reserved field {reserved:#06x} (correlation id {correlation_id}): it must be 0")]
    BadReserved {
        /// The reserved field.
        reserved: u16,
        /// The header's correlation id.
        correlation_id: u32,
    },
    /// The payload is longer than allowed.
    #[error(
        "a payload of {length} bytes (correlation id {correlation_id}) is over the limit of {max} bytes"
    )]
    TooLarge {
        /// The stated (or attempted) length.
        length: u64,
        /// The limit.
        max: u32,
        /// The header's correlation id.
        correlation_id: u32,
    },
}

impl Pcr1Error {
    /// The correlation id of the offending header, when it got that far.
    pub fn correlation_id(&self) -> Option<u32> {
        match self {
            Pcr1Error::BadMagic(_) => None,
            Pcr1Error::BadType { correlation_id, .. }
            | Pcr1Error::BadFlags { correlation_id, .. }
            | Pcr1Error::BadReserved { correlation_id, .. }
            | Pcr1Error::TooLarge { correlation_id, .. } => Some(*correlation_id),
        }
    }

    /// The PCR1 error code to answer with: every header error is `request.malformed`.
    pub fn code(&self) -> Code {
        Code::Malformed
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub kind: Kind,
    /// The caller's correlation id.
    pub correlation_id: u32,
    /// The payload length.
    pub length: u32,
}

impl Header {
    /// Parses and checks a header against `max` payload bytes.
    pub fn parse(b: &[u8; HEADER_LEN], max: u32) -> Result<Header, Pcr1Error> {
        if b[..4] != MAGIC {
            return Err(Pcr1Error::BadMagic([b[0], b[1], b[2], b[3]]));
        }
        let correlation_id = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let length = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        let kind = Kind::from_u8(b[4]).ok_or(Pcr1Error::BadType {
            kind: b[4],
            correlation_id,
        })?;
        if b[5] != 0 {
            return Err(Pcr1Error::BadFlags {
                flags: b[5],
                correlation_id,
            });
        }
        let reserved = u16::from_be_bytes([b[6], b[7]]);
        if reserved != 0 {
            return Err(Pcr1Error::BadReserved {
                reserved,
                correlation_id,
            });
        }
        if length > max {
            return Err(Pcr1Error::TooLarge {
                length: length.into(),
                max,
                correlation_id,
            });
        }
        Ok(Header {
            kind,
            correlation_id,
            length,
        })
    }

    /// Appends the header's 16 bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&MAGIC);
        dst.put_u8(self.kind as u8);
        dst.put_u8(0);
        dst.put_u16(0);
        dst.put_u32(self.correlation_id);
        dst.put_u32(self.length);
    }
}

/// One PCR1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its type.
    pub kind: Kind,
    /// The correlation id.
    pub correlation_id: u32,
    /// The JSON payload (not yet parsed).
    pub payload: Bytes,
}

/// Appends a message of at most [`MAX_MESSAGE`] payload bytes.
pub fn encode(
    kind: Kind,
    correlation_id: u32,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), Pcr1Error> {
    encode_with_limit(kind, correlation_id, payload, MAX_MESSAGE, dst)
}

/// Appends a message of at most `max` payload bytes.
pub fn encode_with_limit(
    kind: Kind,
    correlation_id: u32,
    payload: &[u8],
    max: u32,
    dst: &mut BytesMut,
) -> Result<(), Pcr1Error> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= max)
        .ok_or(Pcr1Error::TooLarge {
            length: payload.len() as u64,
            max,
            correlation_id,
        })?;
    dst.reserve(HEADER_LEN + payload.len());
    Header {
        kind,
        correlation_id,
        length,
    }
    .encode(dst);
    dst.put_slice(payload);
    Ok(())
}

/// Splits PCR1 messages off a receive buffer.
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
    /// The header at the start of `buf`, checked, when 16 bytes are there.
    pub fn peek_header(&self, buf: &[u8]) -> Result<Option<Header>, Pcr1Error> {
        match buf.first_chunk::<HEADER_LEN>() {
            Some(h) => Header::parse(h, self.max).map(Some),
            None => {
                // Refuse a wrong magic as soon as its bytes are there.
                let n = buf.len().min(4);
                if buf[..n] != MAGIC[..n] {
                    let mut m = [0u8; 4];
                    m[..n].copy_from_slice(&buf[..n]);
                    return Err(Pcr1Error::BadMagic(m));
                }
                Ok(None)
            }
        }
    }

    /// The next whole message, removed from `buf`; `Ok(None)` while incomplete. A
    /// header error is reported as soon as the header is there, before its body.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, Pcr1Error> {
        let Some(h) = self.peek_header(buf)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + h.length as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(h.length as usize).freeze();
        Ok(Some(Message {
            kind: h.kind,
            correlation_id: h.correlation_id,
            payload,
        }))
    }
}

/// A call, as a PCR1 request carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The service.
    pub service: String,
    /// The operation.
    pub operation: String,
    /// The caller's deadline in milliseconds from now, when given.
    pub deadline_ms: Option<u64>,
    /// The input (`null` when absent).
    pub input: Value,
    /// The caller's bearer token, as libpolycall's control messages carry it (needed when
    /// the server requires authentication).
    pub auth_token: Option<String>,
}

/// Why a payload is not the JSON shape expected; answered as `request.malformed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

impl ShapeError {
    /// The status to answer with (`request.malformed`).
    pub fn status(&self) -> Status {
        Status::malformed(self.0.clone())
    }
}

fn object(payload: &[u8], what: &str) -> Result<serde_json::Map<String, Value>, ShapeError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ShapeError(format!("a {what} is a JSON object"))),
        Err(e) => Err(ShapeError(format!("the {what} is not valid JSON: {e}"))),
    }
}

fn string_field(
    m: &serde_json::Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<String, ShapeError> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(ShapeError(format!(
            "\"{key}\" of a {what} must be a non-empty string"
        ))),
        None => Err(ShapeError(format!("a {what} needs \"{key}\""))),
    }
}

impl Request {
    /// Parses a request payload.
    pub fn parse(payload: &[u8]) -> Result<Request, ShapeError> {
        let mut m = object(payload, "request")?;
        let service = string_field(&m, "service", "request")?;
        let operation = string_field(&m, "operation", "request")?;
        let deadline_ms = match m.get("deadline_ms") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ShapeError("\"deadline_ms\" must be a non-negative integer".into())
            })?),
        };
        let auth_token = match m.get("auth_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ShapeError("\"auth_token\" must be a string".into())),
        };
        Ok(Request {
            service,
            operation,
            deadline_ms,
            input: m.remove("input").unwrap_or(Value::Null),
            auth_token,
        })
    }

    /// The request's JSON.
    pub fn to_json(&self) -> Value {
        let mut v =
            json!({"service": self.service, "operation": self.operation, "input": self.input});
        if let Some(d) = self.deadline_ms {
            v["deadline_ms"] = d.into();
        }
        if let Some(t) = &self.auth_token {
            v["auth_token"] = t.clone().into();
        }
        v
    }
}

/// A control action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Liveness.
    Ping,
    /// Status of the server.
    Health,
    /// Every operation served.
    Describe,
    /// Stop the server (needs the token).
    Shutdown,
}

impl Action {
    /// The action's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Ping => "ping",
            Action::Health => "health",
            Action::Describe => "describe",
            Action::Shutdown => "shutdown",
        }
    }
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// What to do.
    pub action: Action,
    /// The token (needed for shutdown only).
    pub auth_token: Option<String>,
}

impl Control {
    /// Parses a control payload.
    pub fn parse(payload: &[u8]) -> Result<Control, ShapeError> {
        let m = object(payload, "control message")?;
        let action = match string_field(&m, "action", "control message")?.as_str() {
            "ping" => Action::Ping,
            "health" => Action::Health,
            "describe" => Action::Describe,
            "shutdown" => Action::Shutdown,
            other => {
                return Err(ShapeError(format!(
                    "unknown action {other:?}: ping, health, describe or shutdown"
                )));
            }
        };
        let auth_token = match m.get("auth_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ShapeError("\"auth_token\" must be a string".into())),
        };
        Ok(Control { action, auth_token })
    }

    /// The control message's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"action": self.action.as_str()});
        if let Some(t) = &self.auth_token {
            v["auth_token"] = t.clone().into();
        }
        v
    }
}

/// `{"ok": true, "output": output}`: a successful response.
pub fn ok_response(output: Value) -> Value {
    json!({"ok": true, "output": output})
}

/// `{"ok": true, "data": data}`: a successful control reply.
pub fn ok_control(data: Value) -> Value {
    json!({"ok": true, "data": data})
}

/// `{"ok": false, "error": {"code", "message"}}` with `code`'s PCR1 string.
pub fn error_body(code: Code, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code.pcr1(), "message": message}})
}

/// An answer, parsed (for clients and tests).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `ok: true` with its `output` (response) or `data` (control reply).
    Ok(Value),
    /// `ok: false`: the PCR1 code string and message.
    Err {
        /// The PCR1 code string (`item.unknown`, …).
        code: String,
        /// The message.
        message: String,
    },
}

impl Answer {
    /// Parses a response or control reply payload.
    pub fn parse(payload: &[u8]) -> Result<Answer, ShapeError> {
        let mut m = object(payload, "response")?;
        match m.get("ok") {
            Some(Value::Bool(true)) => Ok(Answer::Ok(
                m.remove("output")
                    .or_else(|| m.remove("data"))
                    .unwrap_or(Value::Null),
            )),
            Some(Value::Bool(false)) => {
                let e = m
                    .get("error")
                    .and_then(Value::as_object)
                    .ok_or_else(|| ShapeError("a failed response needs \"error\"".into()))?;
                let code = string_field(e, "code", "error")?;
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                Ok(Answer::Err { code, message })
            }
            _ => Err(ShapeError("a response needs \"ok\": true or false".into())),
        }
    }

    /// The polycall status of a failed answer (`None` for success or an unknown code).
    pub fn status(&self) -> Option<Status> {
        match self {
            Answer::Ok(_) => None,
            Answer::Err { code, message } => {
                Code::from_pcr1(code).map(|c| Status::new(c, message.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, flags: u8, reserved: u16, id: u32, len: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_slice(b"PCR1");
        b.put_u8(kind);
        b.put_u8(flags);
        b.put_u16(reserved);
        b.put_u32(id);
        b.put_u32(len);
        b
    }

    #[test]
    fn round_trip_every_kind() {
        for kind in [
            Kind::Request,
            Kind::Response,
            Kind::Control,
            Kind::ControlReply,
        ] {
            let mut buf = BytesMut::new();
            encode(kind, 0xDEAD_BEEF, b"{\"x\":1}", &mut buf).unwrap();
            assert_eq!(&buf[..4], b"PCR1");
            assert_eq!(buf[4], kind as u8);
            assert_eq!(&buf[8..12], &[0xDE, 0xAD, 0xBE, 0xEF]);
            assert_eq!(&buf[12..16], &[0, 0, 0, 7]);
            let m = Decoder::default().decode(&mut buf).unwrap().unwrap();
            assert_eq!(m.kind, kind);
            assert_eq!(m.correlation_id, 0xDEAD_BEEF);
            assert_eq!(&m.payload[..], b"{\"x\":1}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn incomplete_input_asks_for_more_and_pipelined_messages_split() {
        let mut all = BytesMut::new();
        encode(Kind::Request, 1, b"{}", &mut all).unwrap();
        encode(Kind::Control, 2, b"", &mut all).unwrap();
        let d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].correlation_id, 2);
        assert!(got[1].payload.is_empty());
    }

    #[test]
    fn header_errors_are_typed_and_found_before_the_body() {
        let d = Decoder::default();
        let mut b = BytesMut::from(&b"PCX"[..]);
        assert_eq!(
            d.decode(&mut b),
            Err(Pcr1Error::BadMagic([b'P', b'C', b'X', 0]))
        );
        let mut b = header(9, 0, 0, 5, 0);
        assert_eq!(
            d.decode(&mut b),
            Err(Pcr1Error::BadType {
                kind: 9,
                correlation_id: 5
            })
        );
        let mut b = header(1, 1, 0, 5, 0);
        assert!(matches!(
            d.decode(&mut b),
            Err(Pcr1Error::BadFlags { flags: 1, .. })
        ));
        let mut b = header(1, 0, 2, 5, 0);
        assert!(matches!(
            d.decode(&mut b),
            Err(Pcr1Error::BadReserved { reserved: 2, .. })
        ));
        // Oversize: refused on the header alone, with the correlation id for the answer.
        let mut b = header(1, 0, 0, 77, MAX_MESSAGE + 1);
        let e = d.decode(&mut b).unwrap_err();
        assert_eq!(e.correlation_id(), Some(77));
        assert_eq!(e.code().pcr1(), "request.malformed");
        assert!(
            matches!(e, Pcr1Error::TooLarge { length, .. } if length == u64::from(MAX_MESSAGE) + 1)
        );
        // Exactly the limit is fine (and waits for its body).
        let mut b = header(1, 0, 0, 1, MAX_MESSAGE);
        assert_eq!(d.decode(&mut b), Ok(None));
        // Encoding refuses oversize payloads too.
        let big = vec![b' '; MAX_MESSAGE as usize + 1];
        assert!(matches!(
            encode(Kind::Response, 3, &big, &mut BytesMut::new()),
            Err(Pcr1Error::TooLarge {
                correlation_id: 3,
                ..
            })
        ));
        // A full header with a wrong magic.
        let mut b = header(1, 0, 0, 1, 0);
        b[0] = b'X';
        assert!(matches!(d.decode(&mut b), Err(Pcr1Error::BadMagic(_))));
    }

    #[test]
    fn request_shapes() {
        let r = Request::parse(
            br#"{"service":"inventory","operation":"get","deadline_ms":250,"input":{"item_id":"widget-a"}}"#,
        )
        .unwrap();
        assert_eq!(r.service, "inventory");
        assert_eq!(r.operation, "get");
        assert_eq!(r.deadline_ms, Some(250));
        assert_eq!(r.input["item_id"], "widget-a");
        assert_eq!(
            Request::parse(r.to_json().to_string().as_bytes()).unwrap(),
            r
        );
        let r = Request::parse(br#"{"service":"debug","operation":"echo"}"#).unwrap();
        assert_eq!((r.deadline_ms, r.input), (None, Value::Null));
        for bad in [
            &b"{nope"[..],
            b"[1,2]",
            br#"{"operation":"echo"}"#,
            br#"{"service":"debug"}"#,
            br#"{"service":"","operation":"x"}"#,
            br#"{"service":1,"operation":"x"}"#,
            br#"{"service":"a","operation":"b","deadline_ms":-1}"#,
            br#"{"service":"a","operation":"b","deadline_ms":"soon"}"#,
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert_eq!(e.status().code.pcr1(), "request.malformed");
        }
    }

    #[test]
    fn control_shapes() {
        for (s, a) in [
            ("ping", Action::Ping),
            ("health", Action::Health),
            ("describe", Action::Describe),
            ("shutdown", Action::Shutdown),
        ] {
            let c = Control::parse(format!(r#"{{"action":"{s}","auth_token":"t"}}"#).as_bytes())
                .unwrap();
            assert_eq!(c.action, a);
            assert_eq!(c.auth_token.as_deref(), Some("t"));
            assert_eq!(
                Control::parse(c.to_json().to_string().as_bytes()).unwrap(),
                c
            );
        }
        assert!(Control::parse(br#"{"action":"reboot"}"#).is_err());
        assert!(Control::parse(br#"{"action":"ping","auth_token":5}"#).is_err());
        assert!(Control::parse(b"").is_err());
    }

    #[test]
    fn answers_and_every_error_code() {
        let ok = ok_response(json!({"a": 1}));
        assert_eq!(
            Answer::parse(ok.to_string().as_bytes()).unwrap(),
            Answer::Ok(json!({"a": 1}))
        );
        let ok = ok_control(json!("pong"));
        assert_eq!(
            Answer::parse(ok.to_string().as_bytes()).unwrap(),
            Answer::Ok(json!("pong"))
        );
        for (code, s) in [
            (Code::Malformed, "request.malformed"),
            (Code::InvalidInput, "input.invalid"),
            (Code::UnknownMethod, "operation.unknown"),
            (Code::NotFound, "item.unknown"),
            (Code::DeadlineExceeded, "deadline.exceeded"),
            (Code::PermissionDenied, "auth.denied"),
            (Code::Busy, "server.busy"),
            (Code::TooLarge, "output.too_large"),
        ] {
            let body = error_body(code, "why");
            assert_eq!(body["error"]["code"], s);
            let a = Answer::parse(body.to_string().as_bytes()).unwrap();
            assert_eq!(
                a,
                Answer::Err {
                    code: s.into(),
                    message: "why".into()
                }
            );
            assert_eq!(Code::from_pcr1(s).map(Code::pcr1), Some(s));
            assert_eq!(a.status().unwrap().code.pcr1(), s);
        }
        assert!(Answer::parse(br#"{"ok":false}"#).is_err());
        assert!(Answer::parse(br#"{"output":1}"#).is_err());
    }
}
