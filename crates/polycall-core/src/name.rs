//! Validated service and method names.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Longest service name, in bytes.
pub const MAX_SERVICE_LEN: usize = 128;
/// Longest method name, in bytes.
pub const MAX_METHOD_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// `service` or `method`.
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} name is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// `service` or `method`.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_-]` (and `.` between service segments), or a
    /// segment not starting with a letter.
    #[error(
        "{kind} name {name:?} is invalid at byte {at}: each segment starts with a letter and continues with letters, digits, '_' or '-'"
    )]
    Invalid {
        /// `service` or `method`.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Byte offset of the first bad character.
        at: usize,
    },
    /// A full name without the `.` that separates service from method.
    #[error("{0:?} is not a full method name: expected SERVICE.METHOD, e.g. \"debug.echo\"")]
    NotFull(String),
}

fn validate(kind: &'static str, s: &str, max: usize, dotted: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    let bad = |at| NameError::Invalid {
        kind,
        name: s.to_owned(),
        at,
    };
    let mut segment_start = true;
    for (at, b) in s.bytes().enumerate() {
        if segment_start {
            if !b.is_ascii_alphabetic() {
                return Err(bad(at));
            }
            segment_start = false;
        } else if b == b'.' && dotted {
            segment_start = true;
        } else if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(bad(at));
        }
    }
    if segment_start {
        // trailing '.'
        return Err(bad(s.len() - 1));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr, $dotted:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `name`.
            pub fn new(name: &str) -> Result<Self, NameError> {
                validate($kind, name, $max, $dotted)?;
                Ok(Self(Arc::from(name)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A service name: dot-separated segments, each starting with an ASCII letter and
    /// continuing with letters, digits, `_` or `-`; at most 128 bytes.
    ///
    /// ```
    /// use polycall_core::ServiceName;
    /// assert!(ServiceName::new("inventory").is_ok());
    /// assert!(ServiceName::new("acme.billing").is_ok());
    /// assert!(ServiceName::new("9lives").is_err());
    /// ```
    ServiceName, "service", MAX_SERVICE_LEN, true
);

name_type!(
    /// A method name: one segment starting with an ASCII letter and continuing with
    /// letters, digits, `_` or `-`; at most 64 bytes.
    ///
    /// ```
    /// use polycall_core::MethodName;
    /// assert!(MethodName::new("get_item").is_ok());
    /// assert!(MethodName::new("get.item").is_err());
    /// ```
    MethodName, "method", MAX_METHOD_LEN, false
);

/// Splits a full name `SERVICE.METHOD` at its last `.` and validates both halves.
///
/// ```
/// use polycall_core::split_full_name;
/// let (service, method) = split_full_name("acme.billing.charge")?;
/// assert_eq!(service.as_str(), "acme.billing");
/// assert_eq!(method.as_str(), "charge");
/// # Ok::<(), polycall_core::NameError>(())
/// ```
pub fn split_full_name(full: &str) -> Result<(ServiceName, MethodName), NameError> {
    let (service, method) = full
        .rsplit_once('.')
        .ok_or_else(|| NameError::NotFull(full.to_owned()))?;
    Ok((ServiceName::new(service)?, MethodName::new(method)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "sys", "Acme-1", "a.b.c", "x_y"] {
            ServiceName::new(ok).unwrap();
        }
        for bad in ["", ".a", "a.", "a..b", "1a", "a b", "a/b", "é"] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?}");
        }
        assert!(MethodName::new("a.b").is_err());
        assert!(matches!(
            ServiceName::new(&"a".repeat(129)),
            Err(NameError::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            split_full_name("nodot"),
            Err(NameError::NotFull(_))
        ));
    }

    #[test]
    fn serde_validates() {
        let n: ServiceName = serde_json::from_str("\"sys\"").unwrap();
        assert_eq!(n.as_str(), "sys");
        assert!(serde_json::from_str::<MethodName>("\"bad name\"").is_err());
    }
}
