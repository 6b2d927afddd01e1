//! References to secrets and files: `file:PATH`, `env:NAME`, or a bare path.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;

/// Where a secret (a private key, a certificate, a CA bundle, a CRL) is found.
///
/// Configuration never holds a secret inline: it names a file (`file:PATH`, or a bare
/// path) or an environment variable holding the PEM text (`env:NAME`). Errors show the
/// reference, never what it holds.
///
/// ```
/// use polycall_security::SecretRef;
/// let r: SecretRef = "env:POLYCALL_KEY".parse().unwrap();
/// assert_eq!(r, SecretRef::Env("POLYCALL_KEY".into()));
/// let f: SecretRef = "/etc/polycall/tls.key".parse().unwrap();
/// assert_eq!(f.to_string(), "file:/etc/polycall/tls.key");
/// assert!("-----BEGIN PRIVATE KEY-----".parse::<SecretRef>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// A file's contents.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

impl SecretRef {
    /// A reference to a file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }

    /// Reads what the reference points at.
    pub fn read(&self) -> Result<Vec<u8>, Error> {
        match self {
            Self::File(p) => std::fs::read(p).map_err(|e| Error::Read {
                reference: self.to_string(),
                reason: e.to_string(),
            }),
            Self::Env(name) => match std::env::var_os(name) {
                Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
                Some(_) => Err(Error::Read {
                    reference: self.to_string(),
                    reason: "the variable is empty".into(),
                }),
                None => Err(Error::Read {
                    reference: self.to_string(),
                    reason: "the variable is not set".into(),
                }),
            },
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Env(n) => write!(f, "env:{n}"),
        }
    }
}

impl FromStr for SecretRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // Never echo something that looks like inline secret material.
        let bad = |reason| Error::BadReference {
            reference: if s.contains("-----BEGIN") || s.contains('\n') {
                "<inline content, not shown>".into()
            } else {
                s.to_owned()
            },
            reason,
        };
        if s.contains("-----BEGIN") || s.contains('\n') {
            return Err(bad(
                "secrets are not written inline: use file:PATH or env:NAME",
            ));
        }
        if let Some(name) = s.strip_prefix("env:") {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(bad("an environment variable name is letters, digits and _"));
            }
            return Ok(Self::Env(name.to_owned()));
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() {
            return Err(bad("the path is empty"));
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            "file:/a/b.pem".parse::<SecretRef>().unwrap(),
            SecretRef::file("/a/b.pem")
        );
        assert_eq!(
            "rel/c.pem".parse::<SecretRef>().unwrap(),
            SecretRef::file("rel/c.pem")
        );
        assert_eq!(
            "env:TLS_KEY_1".parse::<SecretRef>().unwrap(),
            SecretRef::Env("TLS_KEY_1".into())
        );
        for bad in ["", "file:", "env:", "env:1X", "env:A-B"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn inline_secret_is_refused_and_not_echoed() {
        let text = "-----BEGIN PRIVATE KEY-----\nMIIsecretstuff\n-----END PRIVATE KEY-----";
        let e = text.parse::<SecretRef>().unwrap_err().to_string();
        assert!(!e.contains("MIIsecretstuff"), "{e}");
        assert!(e.contains("inline"), "{e}");
    }

    #[test]
    fn read_errors_name_the_reference() {
        let r = SecretRef::file("/nonexistent/polycall/x.key");
        let e = r.read().unwrap_err().to_string();
        assert!(e.contains("file:/nonexistent/polycall/x.key"), "{e}");
        let r = SecretRef::Env("POLYCALL_TEST_SURELY_UNSET_VAR".into());
        let e = r.read().unwrap_err().to_string();
        assert!(e.contains("env:POLYCALL_TEST_SURELY_UNSET_VAR"), "{e}");
        assert!(e.contains("not set"), "{e}");
    }
}
