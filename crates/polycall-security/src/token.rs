//! Bearer tokens: named secrets a client presents once per connection.
//!
//! The server keeps each token's SHA-512 digest, never the token; a presented token is
//! hashed and compared with every known digest in constant time (no early exit, the
//! same work whichever token matches or none), so neither timing nor a memory dump of
//! the server reveals a token.
//!
//! ```
//! use polycall_security::token::Tokens;
//! let mut tokens = Tokens::default();
//! tokens.insert("ci", b"s3cret-token-value").unwrap();
//! assert_eq!(tokens.verify(b"s3cret-token-value"), Some("ci"));
//! assert_eq!(tokens.verify(b"guess"), None);
//! ```

use sha2::{Digest, Sha512};

use crate::{Error, SecretRef};

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens a server accepts, each under a name (the principal becomes `token:NAME`).
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, [u8; 64])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests are not secrets, but nothing about a token is printed.
        f.debug_struct("Tokens")
            .field("names", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 64] {
    Sha512::digest(token).into()
}

/// Compares two digests in constant time.
fn same(a: &[u8; 64], b: &[u8; 64]) -> bool {
    constant_time_eq(a, b)
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (the
/// `subtle` crate): the one comparison of secrets polycall uses.
///
/// ```
/// use polycall_security::token::constant_time_eq;
/// assert!(constant_time_eq(b"s3cret", b"s3cret"));
/// assert!(!constant_time_eq(b"s3cret", b"s3creT"));
/// assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// A new random token: 32 bytes from the operating system's CSPRNG, hex-encoded.
///
/// ```
/// let t = polycall_security::token::generate();
/// assert_eq!(t.len(), 64);
/// assert_ne!(t, polycall_security::token::generate());
/// ```
pub fn generate() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `name` is a usable token name: ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Tokens {
    /// Adds a token under `name`. Refuses bad names, duplicates and short tokens.
    pub fn insert(&mut self, name: &str, token: &[u8]) -> Result<(), Error> {
        if !valid_name(name) {
            return Err(Error::Config(format!(
                "token name {name:?}: use letters, digits, '-', '_' or '.' (at most 64)"
            )));
        }
        if self.entries.iter().any(|(n, _)| n == name) {
            return Err(Error::Config(format!("token {name:?} is configured twice")));
        }
        let token = trim_newline(token);
        if token.len() < MIN_TOKEN_LEN {
            return Err(Error::Config(format!(
                "token {name:?} is shorter than {MIN_TOKEN_LEN} bytes; generate one with \
                 `head -c 32 /dev/urandom | base64`"
            )));
        }
        self.entries.push((name.to_owned(), digest(token)));
        Ok(())
    }

    /// Adds a token read from a secret reference (`env:NAME` or `file:PATH`).
    pub fn insert_ref(&mut self, name: &str, reference: &SecretRef) -> Result<(), Error> {
        let bytes = reference.read()?;
        self.insert(name, &bytes)
    }

    /// The name of the token `presented` matches, if any. Takes the same time whether
    /// it matches the first token, the last or none.
    pub fn verify(&self, presented: &[u8]) -> Option<&str> {
        let d = digest(trim_newline(presented));
        let mut found = None;
        for (name, known) in &self.entries {
            if same(&d, known) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The configured names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Files and variables often end with a newline; it is never part of a token.
fn trim_newline(t: &[u8]) -> &[u8] {
    let t = t.strip_suffix(b"\n").unwrap_or(t);
    t.strip_suffix(b"\r").unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let mut t = Tokens::default();
        t.insert("a", b"aaaaaaaaaaaaaaaaaaaa").unwrap();
        t.insert("b", b"bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(t.verify(b"aaaaaaaaaaaaaaaaaaaa"), Some("a"));
        assert_eq!(t.verify(b"bbbbbbbbbbbbbbbbbbbb"), Some("b"));
        assert_eq!(t.verify(b"aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(t.verify(b"aaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(t.verify(b""), None);
    }

    #[test]
    fn short_tokens_bad_names_and_duplicates_are_refused() {
        let mut t = Tokens::default();
        assert!(t.insert("a", b"short").is_err());
        assert!(t.insert("bad name", b"aaaaaaaaaaaaaaaaaaaa").is_err());
        t.insert("a", b"aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(t.insert("a", b"cccccccccccccccccccc").is_err());
    }

    #[test]
    fn debug_shows_names_only() {
        let mut t = Tokens::default();
        t.insert("ci", b"do-not-print-this-token").unwrap();
        let shown = format!("{t:?}");
        assert!(shown.contains("ci") && !shown.contains("do-not-print"));
    }
}
