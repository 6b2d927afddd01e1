//! Typed payloads: [`Json<T>`] and [`Postcard<T>`] turn a call's bytes into a Rust value
//! and a value back into a reply, so a handler works with its own types.
//!
//! [`handler`] builds a [`Handler`](crate::Handler) from an async function whose
//! argument implements [`FromCall`] and whose result implements [`IntoReply`]; the
//! typed code `polycall bindgen --lang rust` generates is built on it.
//!
//! ```
//! use polycall_core::typed::{self, Json};
//! use polycall_core::{Call, MethodInfo, Payload, Router, Status};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//! #[derive(Serialize)]
//! struct Sum { sum: i64 }
//!
//! let router = Router::new().route(
//!     "calc.add",
//!     MethodInfo::new("adds"),
//!     typed::handler(|Json(add): Json<Add>| async move { Ok(Json(Sum { sum: add.a + add.b })) }),
//! )?;
//! # let _ = router;
//! let payload = Json(Sum { sum: 3 }).into_payload()?;
//! assert_eq!(&payload.bytes[..], br#"{"sum":3}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Call, ContentType, Payload, Reply, Status, handler_fn};

/// A value carried as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

/// A value carried as postcard, serde's compact binary format (Rust to Rust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Postcard<T>(pub T);

impl<T: Serialize> Json<T> {
    /// The value as a JSON payload.
    pub fn into_payload(self) -> Result<Payload, Status> {
        Payload::json(&self.0)
            .map_err(|e| Status::internal(format!("the value does not encode as JSON: {e}")))
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// Reads a JSON payload (a raw payload is read as JSON too: clients of other
    /// languages may not label it). An `invalid_input` status says what does not fit.
    pub fn from_payload(payload: &Payload) -> Result<Self, Status> {
        if payload.content_type == ContentType::Postcard {
            return Err(Status::invalid_input(
                "expected a JSON payload, got postcard",
            ));
        }
        serde_json::from_slice(&payload.bytes)
            .map(Json)
            .map_err(|e| Status::invalid_input(format!("the JSON payload does not fit: {e}")))
    }
}

impl<T: Serialize> Postcard<T> {
    /// The value as a postcard payload.
    pub fn into_payload(self) -> Result<Payload, Status> {
        postcard::to_stdvec(&self.0)
            .map(|bytes| Payload::new(bytes, ContentType::Postcard))
            .map_err(|e| Status::internal(format!("the value does not encode as postcard: {e}")))
    }
}

impl<T: DeserializeOwned> Postcard<T> {
    /// Reads a postcard payload; an `invalid_input` status says what does not fit.
    pub fn from_payload(payload: &Payload) -> Result<Self, Status> {
        if payload.content_type == ContentType::Json {
            return Err(Status::invalid_input(
                "expected a postcard payload, got JSON",
            ));
        }
        postcard::from_bytes(&payload.bytes)
            .map(Postcard)
            .map_err(|e| Status::invalid_input(format!("the postcard payload does not fit: {e}")))
    }
}

/// Any JSON value (a schema's `any`).
pub use serde_json::Value as JsonValue;

/// Bytes inside a JSON message (a schema's `bytes` field): standard base64 with
/// padding on the wire, as every polycall binding writes it.
///
/// ```
/// use polycall_core::typed::Base64;
/// let b = Base64(b"hi!".to_vec());
/// assert_eq!(serde_json::to_string(&b).unwrap(), r#""aGkh""#);
/// assert_eq!(serde_json::from_str::<Base64>(r#""aGkh""#).unwrap(), b);
/// assert!(serde_json::from_str::<Base64>(r#""a*==""#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Base64(pub Vec<u8>);

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Serialize for Base64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len().div_ceil(3) * 4);
        for chunk in self.0.chunks(3) {
            let n = chunk.len();
            let v = u32::from(chunk[0]) << 16
                | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= n {
                    out.push(BASE64[(v >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        serializer.serialize_str(&out)
    }
}

impl<'de> serde::Deserialize<'de> for Base64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode_base64(&text)
            .map(Base64)
            .ok_or_else(|| serde::de::Error::custom("not standard base64"))
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut v = 0u32;
        for &b in &quad[..4 - pad] {
            let digit = BASE64.iter().position(|&a| a == b)? as u32;
            v = v << 6 | digit;
        }
        v <<= 6 * pad as u32;
        let decoded = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

/// What a handler can take as its argument.
pub trait FromCall: Sized {
    /// Reads the argument from the call; an error status answers the call.
    fn from_call(call: Call) -> Result<Self, Status>;
}

/// What a handler can answer with.
pub trait IntoReply {
    /// The reply.
    fn into_reply(self) -> Result<Reply, Status>;
}

impl FromCall for Call {
    fn from_call(call: Call) -> Result<Self, Status> {
        Ok(call)
    }
}

impl FromCall for Payload {
    fn from_call(call: Call) -> Result<Self, Status> {
        Ok(call.payload)
    }
}

impl<T: DeserializeOwned> FromCall for Json<T> {
    fn from_call(call: Call) -> Result<Self, Status> {
        Json::from_payload(&call.payload)
    }
}

impl<T: DeserializeOwned> FromCall for Postcard<T> {
    fn from_call(call: Call) -> Result<Self, Status> {
        Postcard::from_payload(&call.payload)
    }
}

impl IntoReply for Reply {
    fn into_reply(self) -> Result<Reply, Status> {
        Ok(self)
    }
}

impl IntoReply for Payload {
    fn into_reply(self) -> Result<Reply, Status> {
        Ok(Reply::new(self))
    }
}

impl<T: Serialize> IntoReply for Json<T> {
    fn into_reply(self) -> Result<Reply, Status> {
        self.into_payload().map(Reply::new)
    }
}

impl<T: Serialize> IntoReply for Postcard<T> {
    fn into_reply(self) -> Result<Reply, Status> {
        self.into_payload().map(Reply::new)
    }
}

/// A handler from an async function of a typed argument to a typed answer.
pub fn handler<F, A, R, Fut>(f: F) -> impl crate::Handler
where
    F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
    A: FromCall + Send + 'static,
    R: IntoReply + Send + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
{
    handler_fn(move |call: Call| {
        let f = f.clone();
        async move {
            let argument = A::from_call(call)?;
            f(argument).await?.into_reply()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[test]
    fn json_and_postcard_round_trip_and_refuse_the_other() {
        let p = Json(Point { x: 1, y: -2 }).into_payload().unwrap();
        assert_eq!(p.content_type, ContentType::Json);
        assert_eq!(
            Json::<Point>::from_payload(&p).unwrap().0,
            Point { x: 1, y: -2 }
        );
        assert!(Postcard::<Point>::from_payload(&p).is_err());

        let q = Postcard(Point { x: 3, y: 4 }).into_payload().unwrap();
        assert_eq!(q.content_type, ContentType::Postcard);
        assert_eq!(
            Postcard::<Point>::from_payload(&q).unwrap().0,
            Point { x: 3, y: 4 }
        );
        assert!(Json::<Point>::from_payload(&q).is_err());
    }

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..20usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = serde_json::to_string(&Base64(data.clone())).unwrap();
            assert_eq!(text.len() - 2, len.div_ceil(3) * 4);
            assert_eq!(serde_json::from_str::<Base64>(&text).unwrap().0, data);
        }
        for bad in [r#""abc""#, r#""ab=c""#, r#""a===""#, r#""YQ==YQ==""#] {
            assert!(serde_json::from_str::<Base64>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_payload_that_does_not_fit_is_invalid_input() {
        let bad = Payload::raw(r#"{"x": "one"}"#);
        let err = Json::<Point>::from_payload(&bad).unwrap_err();
        assert_eq!(err.code, crate::Code::InvalidInput);
        assert!(err.message.contains("does not fit"), "{err}");
    }
}

#[cfg(test)]
mod base64_vectors {
    use super::Base64;

    /// Python's `base64.b64encode(bytes((i * 37 + 11) % 256 for i in range(5)))`.
    #[test]
    fn matches_pythons_encoding() {
        let data: Vec<u8> = (0..5u32).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        assert_eq!(
            serde_json::to_string(&Base64(data)).unwrap(),
            r#""CzBVep8=""#
        );
    }
}

/// A stream of typed messages, or the error that ended it: what generated stubs hand
/// out for a streaming method's replies (and a handler's requests) and take as a
/// handler's replies.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Encodes each value of `values` as a JSON message (a typed request stream).
pub fn json_messages<T, S>(values: S) -> crate::MessageStream
where
    T: Serialize,
    S: futures_core::Stream<Item = T> + Send + 'static,
{
    Box::pin(crate::stream::map(Box::pin(values), |v| {
        Json(v).into_payload()
    }))
}

/// Encodes each `Ok` value of `results` as a JSON message; an `Err` ends the stream
/// with that status (a typed handler's replies).
pub fn json_results<T: Serialize + 'static>(results: BoxStream<T>) -> crate::MessageStream {
    Box::pin(crate::stream::map(results, |r| {
        r.and_then(|v| Json(v).into_payload())
    }))
}

/// Raw payloads as a message stream.
pub fn raw_messages<S>(values: S) -> crate::MessageStream
where
    S: futures_core::Stream<Item = Payload> + Send + 'static,
{
    Box::pin(crate::stream::map(Box::pin(values), Ok))
}

/// Decodes each message of `messages` from JSON; one that does not decode is an
/// `invalid_input` item (which, as every error in a stream, ends it for its reader).
pub fn from_json_messages<T: DeserializeOwned + 'static>(
    messages: crate::MessageStream,
) -> BoxStream<T> {
    Box::pin(crate::stream::map(messages, |m| {
        m.and_then(|p| Json::<T>::from_payload(&p).map(|j| j.0))
    }))
}
