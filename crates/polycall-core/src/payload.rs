//! Payloads: bytes plus the content type that says how to read them.

use bytes::Bytes;

/// How a payload's bytes are encoded. The numeric values are the wire ids.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ContentType {
    /// Opaque bytes.
    #[default]
    Raw = 0,
    /// UTF-8 JSON.
    Json = 1,
    /// postcard, serde's compact binary format.
    Postcard = 2,
}

impl ContentType {
    /// Every content type, in wire-id order.
    pub const ALL: [ContentType; 3] = [ContentType::Raw, ContentType::Json, ContentType::Postcard];

    /// The wire id.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The content type of a wire id, if known.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::Raw),
            1 => Some(Self::Json),
            2 => Some(Self::Postcard),
            _ => None,
        }
    }

    /// A short lowercase name (`raw`, `json`, `postcard`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Json => "json",
            Self::Postcard => "postcard",
        }
    }
}

/// A payload: shared, cheaply cloned bytes and their [`ContentType`].
///
/// ```
/// use polycall_core::{ContentType, Payload};
/// let p = Payload::json(&serde_json::json!({"ms": 5})).unwrap();
/// assert_eq!(p.content_type, ContentType::Json);
/// let v: serde_json::Value = p.to_json().unwrap();
/// assert_eq!(v["ms"], 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    /// The bytes.
    pub bytes: Bytes,
    /// How to read them.
    pub content_type: ContentType,
}

impl Payload {
    /// A payload of the given bytes and content type.
    pub fn new(bytes: impl Into<Bytes>, content_type: ContentType) -> Self {
        Self {
            bytes: bytes.into(),
            content_type,
        }
    }

    /// Opaque bytes.
    pub fn raw(bytes: impl Into<Bytes>) -> Self {
        Self::new(bytes, ContentType::Raw)
    }

    /// An empty raw payload.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Serializes `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::new(serde_json::to_vec(value)?, ContentType::Json))
    }

    /// Parses the bytes as JSON (whatever the declared content type).
    pub fn to_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
