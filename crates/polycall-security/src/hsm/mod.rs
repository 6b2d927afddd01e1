//! TLS private keys held in a PKCS#11 token (an HSM, a smart card, SoftHSM2).
//!
//! The private key never leaves the token: [`HsmKey::load`] opens a session, logs in
//! with the PIN read from an environment variable, finds the key by its label and
//! returns an [`HsmSigningKey`], a [`rustls::sign::SigningKey`] whose signatures are
//! made by `C_Sign` inside the token. [`HsmSigningKey::protection`] reads back the
//! key's `CKA_EXTRACTABLE` / `CKA_SENSITIVE` attributes, so an operator (or a test)
//! can show that the key cannot be exported.
//!
//! Supported keys: ECDSA P-256 and P-384 (TLS schemes `ecdsa_secp256r1_sha256`,
//! `ecdsa_secp384r1_sha384`) and RSA (RSA-PSS with SHA-256/384/512, the only RSA
//! signatures TLS 1.3 allows).
//!
//! ```toml
//! [tls.hsm]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "polycall"
//! key = "node"
//! pin_env = "POLYCALL_HSM_PIN"
//! ```
//!
//! Notes on PKCS#11 itself:
//! - A module is initialized once per process (`C_Initialize`) and never finalized
//!   here; every key loaded from it shares that initialization.
//! - Logging in is per token and per process: once one key of a token is loaded,
//!   other sessions of the same process are logged in too (the token answers
//!   `CKR_USER_ALREADY_LOGGED_IN`, which this module accepts).
//! - A session is not thread-safe: each loaded key keeps one session behind a mutex
//!   (a TLS handshake signs once, so this is not a bottleneck). Loading the same
//!   [`HsmKey`] again while an earlier [`HsmSigningKey`] is alive returns that key,
//!   sharing its session and its [`HsmSigningKey::sign_count`].
//!
//! Talking to a token needs polycall's `hsm` cargo feature (the `cryptoki` crate).
//! Without it the configuration types stay (a config file with `[tls.hsm]` still
//! parses), and using a token-held key answers [`HsmError::NotBuilt`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "hsm")]
mod pkcs11;
#[cfg(feature = "hsm")]
pub use pkcs11::HsmSigningKey;

/// Where a TLS private key lives in a PKCS#11 token. Holds no secret: the PIN is read
/// from the environment variable `pin_env` when the key is loaded.
///
/// In configuration (`[tls.hsm]`) the fields are `module`, `token`, `key` and
/// `pin_env`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HsmKey {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token that holds the key.
    #[serde(rename = "token", alias = "token_label")]
    pub token_label: String,
    /// The label (`CKA_LABEL`) of the private key object.
    #[serde(rename = "key", alias = "key_label")]
    pub key_label: String,
    /// The environment variable that holds the user PIN.
    pub pin_env: String,
}

impl HsmKey {
    /// The key labelled `key_label` in the token labelled `token_label` of the PKCS#11
    /// `module`, logged into with the PIN in the environment variable `pin_env`. There
    /// is no default: every part names something only the deployment knows.
    ///
    /// ```
    /// use polycall_security::hsm::HsmKey;
    /// let key = HsmKey::new(
    ///     "/usr/lib/softhsm/libsofthsm2.so",
    ///     "polycall",
    ///     "node",
    ///     "POLYCALL_HSM_PIN",
    /// );
    /// assert_eq!(key.token_label, "polycall");
    /// ```
    pub fn new(
        module: impl Into<PathBuf>,
        token_label: impl Into<String>,
        key_label: impl Into<String>,
        pin_env: impl Into<String>,
    ) -> Self {
        Self {
            module: module.into(),
            token_label: token_label.into(),
            key_label: key_label.into(),
            pin_env: pin_env.into(),
        }
    }

    /// Sets the PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub fn module(mut self, module: impl Into<PathBuf>) -> Self {
        self.module = module.into();
        self
    }

    /// Sets the label of the token that holds the key.
    pub fn token_label(mut self, token_label: impl Into<String>) -> Self {
        self.token_label = token_label.into();
        self
    }

    /// Sets the label (`CKA_LABEL`) of the private key object.
    pub fn key_label(mut self, key_label: impl Into<String>) -> Self {
        self.key_label = key_label.into();
        self
    }

    /// Sets the environment variable that holds the user PIN.
    pub fn pin_env(mut self, pin_env: impl Into<String>) -> Self {
        self.pin_env = pin_env.into();
        self
    }
}

/// What can go wrong with a token-held key. Every error names the module, token or
/// key involved; none ever contains a PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The module file does not exist.
    #[error(
        "PKCS#11 module {module} does not exist; install the token's module (for SoftHSM2: apt-get install softhsm2) or fix the module path"
    )]
    ModuleMissing {
        /// The module path as configured.
        module: PathBuf,
    },
    /// The module exists but could not be loaded or initialized.
    #[error(
        "PKCS#11 module {module} could not be {stage}: {reason} (for SoftHSM2, check that SOFTHSM2_CONF names a readable configuration whose tokendir exists)"
    )]
    Module {
        /// The module path.
        module: PathBuf,
        /// `loaded` or `initialized`.
        stage: &'static str,
        /// What the loader or the module said.
        reason: String,
    },
    /// No token with this label is present.
    #[error(
        "no PKCS#11 token labelled {token:?} in {module} (tokens present: {available:?}); initialize it (softhsm2-util --init-token --free --label {token}) or fix the token label"
    )]
    TokenNotFound {
        /// The module path.
        module: PathBuf,
        /// The token label that was looked for.
        token: String,
        /// The labels of the tokens that are present.
        available: Vec<String>,
    },
    /// The PIN variable is not set.
    #[error(
        "the PIN of token {token:?} is read from the environment variable {var}, which is not set"
    )]
    PinEnvUnset {
        /// The variable's name.
        var: String,
        /// The token label.
        token: String,
    },
    /// The PIN variable is set but unusable.
    #[error("the environment variable {var} (PIN of token {token:?}) {reason}")]
    PinEnvInvalid {
        /// The variable's name.
        var: String,
        /// The token label.
        token: String,
        /// Why: empty, or not UTF-8.
        reason: &'static str,
    },
    /// The token refused the PIN.
    #[error(
        "token {token:?} in {module} refused the PIN from {var}: wrong PIN (check the variable; repeated failures may lock the token)"
    )]
    WrongPin {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// The variable the PIN came from.
        var: String,
    },
    /// The token's user PIN is locked after too many failures.
    #[error(
        "the user PIN of token {token:?} in {module} is locked; the security officer must reset it"
    )]
    PinLocked {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
    },
    /// No private key with this label is in the token.
    #[error(
        "token {token:?} holds no private key labelled {key:?}; generate or import it, or fix the key label"
    )]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
    },
    /// Several private keys carry the label.
    #[error("token {token:?} holds {count} private keys labelled {key:?}; labels must be unique")]
    KeyAmbiguous {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// How many were found.
        count: usize,
    },
    /// A key with this label already exists (when generating).
    #[error("token {token:?} already holds a key labelled {key:?}; not replacing it")]
    KeyExists {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
    },
    /// The key's public half could not be found or read.
    #[error(
        "the public key of {key:?} in token {token:?} cannot be read: {reason} (store the public key object with the same label or CKA_ID)"
    )]
    PublicKey {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// What is missing or malformed.
        reason: String,
    },
    /// The key is of a type or curve this module cannot use for TLS.
    #[error("key {key:?} in token {token:?} is not usable for TLS: {reason}")]
    UnsupportedKey {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// What it is, and what is supported.
        reason: String,
    },
    /// This program was built without PKCS#11 support.
    #[error(
        "key {key:?} in token {token:?} cannot be used: this program was built without HSM support (enable polycall's `hsm` cargo feature)"
    )]
    NotBuilt {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
    },
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {operation} on token {token:?} ({module}) failed: {reason}")]
    Pkcs11 {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// What was being done (e.g. `C_OpenSession`).
        operation: &'static str,
        /// The module's answer.
        reason: String,
    },
}

/// Key types a token key can be generated as ([`HsmKey::generate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HsmAlgorithm {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// RSA with a modulus of this many bits (at least 2048), used with RSA-PSS.
    Rsa(u32),
}

/// A token key's protection attributes, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_EXTRACTABLE`: whether the key may be exported (wrapped) at all.
    pub extractable: bool,
    /// `CKA_SENSITIVE`: whether the key's secret attributes are withheld.
    pub sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has always been sensitive.
    pub always_sensitive: bool,
    /// Whether the token hands out `CKA_VALUE` (EC) or `CKA_PRIVATE_EXPONENT` (RSA).
    pub value_readable: bool,
}

impl KeyProtection {
    /// True when the key cannot leave the token: not extractable, sensitive, and
    /// its private value is not readable.
    pub fn is_non_extractable(&self) -> bool {
        !self.extractable && self.sensitive && !self.value_readable
    }
}

// ---------------------------------------------------------------------------------
// Modules, tokens, sessions.

impl HsmKey {
    /// The error a build without the `hsm` feature answers for this key.
    pub fn not_built(&self) -> HsmError {
        HsmError::NotBuilt {
            token: self.token_label.clone(),
            key: self.key_label.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_and_debug_hold_no_pin() {
        let k: HsmKey = serde_json::from_str(
            r#"{"module":"/m.so","token":"polycall","key":"node","pin_env":"POLYCALL_HSM_PIN"}"#,
        )
        .unwrap();
        assert_eq!(k.token_label, "polycall");
        assert_eq!(k.key_label, "node");
        assert!(format!("{k:?}").contains("POLYCALL_HSM_PIN"));
    }
}
