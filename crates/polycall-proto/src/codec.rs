//! Payload codecs: turning typed values into [`Payload`]s and back, by content type.
//!
//! ```
//! use polycall_core::ContentType;
//! use polycall_proto::codec;
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Item { id: String, quantity: u32 }
//!
//! let item = Item { id: "widget-a".into(), quantity: 42 };
//! for ct in [ContentType::Json, ContentType::Postcard] {
//!     let p = codec::encode(&item, ct)?;
//!     assert_eq!(codec::decode::<Item>(&p)?, item);
//! }
//! # Ok::<(), codec::CodecError>(())
//! ```

use polycall_core::{ContentType, Payload, Status};

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// JSON failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// postcard failed.
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// Raw payloads carry bytes, not typed values.
    #[error("a raw payload has no typed encoding; use JSON or postcard")]
    Raw,
}

impl From<CodecError> for Status {
    fn from(e: CodecError) -> Status {
        Status::invalid_input(e.to_string())
    }
}

/// Encodes `value` as `content_type`.
pub fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
    content_type: ContentType,
) -> Result<Payload, CodecError> {
    let bytes = match content_type {
        ContentType::Json => serde_json::to_vec(value)?,
        ContentType::Postcard => postcard::to_stdvec(value)?,
        ContentType::Raw => return Err(CodecError::Raw),
    };
    Ok(Payload::new(bytes, content_type))
}

/// Decodes a payload by its content type.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &Payload) -> Result<T, CodecError> {
    match payload.content_type {
        ContentType::Json => Ok(serde_json::from_slice(&payload.bytes)?),
        ContentType::Postcard => Ok(postcard::from_bytes(&payload.bytes)?),
        ContentType::Raw => Err(CodecError::Raw),
    }
}
