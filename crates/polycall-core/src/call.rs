//! Calls and replies.

use std::fmt;

use crate::{Metadata, MethodName, NameError, Payload, ServiceName, split_full_name};

/// Identifies a call on one connection. Calls opened by the connecting side have odd
/// ids, calls opened by the accepting side even ids; 0 means the connection itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CallId(pub u32);

impl CallId {
    /// The connection-level id (not a call).
    pub const CONNECTION: CallId = CallId(0);

    /// The raw number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A call: `service.method(payload)` with its metadata.
///
/// ```
/// use polycall_core::{Call, Payload};
/// let call = Call::new("debug.echo", Payload::raw("hi"))?;
/// assert_eq!(call.full_name(), "debug.echo");
/// # Ok::<(), polycall_core::NameError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Call {
    /// The service called.
    pub service: ServiceName,
    /// The method called.
    pub method: MethodName,
    /// The request payload.
    pub payload: Payload,
    /// Deadline, priority, trace context and the rest.
    pub metadata: Metadata,
}

impl Call {
    /// A call of the full name `SERVICE.METHOD` with default metadata.
    pub fn new(full_name: &str, payload: Payload) -> Result<Self, NameError> {
        let (service, method) = split_full_name(full_name)?;
        Ok(Self::with_names(service, method, payload))
    }

    /// A call of already validated names with default metadata.
    pub fn with_names(service: ServiceName, method: MethodName, payload: Payload) -> Self {
        Self {
            service,
            method,
            payload,
            metadata: Metadata::default(),
        }
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// `service.method`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The reply payload.
    pub payload: Payload,
}

impl Reply {
    /// A reply carrying `payload`.
    pub fn new(payload: Payload) -> Self {
        Self { payload }
    }
}
