//! Errors: they name the reference or file involved, never a secret's content.

/// What can go wrong loading secrets, building TLS configurations or issuing
/// certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference string that is not `file:PATH`, `env:NAME` or a path.
    #[error("invalid secret reference {reference:?}: {reason}")]
    BadReference {
        /// The reference as written.
        reference: String,
        /// Why it is not accepted.
        reason: &'static str,
    },
    /// A secret could not be read (missing file, unset variable, …).
    #[error("cannot read {reference}: {reason}")]
    Read {
        /// The reference (`file:…` or `env:…`).
        reference: String,
        /// Why (an I/O error or "not set").
        reason: String,
    },
    /// The secret was read but is not the PEM that was expected.
    #[error("{reference}: {reason}")]
    Pem {
        /// The reference (`file:…` or `env:…`).
        reference: String,
        /// What was expected and is missing or malformed (no content is quoted).
        reason: String,
    },
    /// The pieces do not make a valid TLS configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate authority directory problem.
    #[error("certificate authority {dir}: {reason}")]
    Ca {
        /// The CA's directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// Certificate or CRL generation failed.
    #[cfg(feature = "ca")]
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A key held in a PKCS#11 token could not be loaded or used.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
}
