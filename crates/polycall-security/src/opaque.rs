//! OPAQUE zero-knowledge password login ([opaque-ke] 4, RFC 9807).
//!
//! The password never leaves the client, not even hashed: the server keeps only a
//! *registration record* per user (the OPAQUE "password file"), and a login is three
//! opaque byte messages that any transport can carry (polycall carries them in AUTH
//! frames):
//!
//! 1. client → server: [`ClientLogin::start`] (user name + credential request),
//! 2. server → client: [`ServerLogin::start`] (credential response; an unknown user gets
//!    an indistinguishable answer built from a dummy record),
//! 3. client → server: [`ClientLogin::finish`] (credential finalization), checked by
//!    [`ServerLogin::finish`].
//!
//! Both sides end with the same session key. A wrong password fails at the client
//! ([`OpaqueError::WrongPassword`]); a finalization that does not prove knowledge of the
//! password (forged, replayed, or for an unknown user) fails at the server with the one
//! error [`OpaqueError::LoginFailed`].
//!
//! The server's long-term secret is a [`ServerSetup`] (a file with mode 0600); the
//! records live in a [`UserStore`] (a JSON file with mode 0600). Records are only valid
//! with the setup that made them.
//!
//! # Messages
//!
//! Every message starts with a version byte ([`MESSAGE_VERSION`]) and a kind byte
//! (1 start, 2 response, 3 finish). The start message then carries the user name as
//! `u16` little-endian length + UTF-8 bytes. The rest is the opaque-ke serialization of
//! the step's message, with its exact length. Every parse is bounds-checked; anything
//! else is [`OpaqueError::Malformed`].
//!
//! # Example
//!
//! A whole registration and login in memory:
//!
//! ```
//! use polycall_security::opaque::{ClientLogin, OpaqueError, ServerLogin, ServerSetup, UserStore};
//!
//! # fn main() -> Result<(), OpaqueError> {
//! # let dir = std::env::temp_dir().join(format!("polycall-opaque-doc-{}", std::process::id()));
//! // Server, once: its secret and its users file (only written by `save`).
//! let setup = ServerSetup::generate();
//! let mut users = UserStore::open(&dir.join("users.json"))?;
//! users.add(&setup, "alice", b"correct horse battery staple")?;
//!
//! // A login: three messages.
//! let (client, m1) = ClientLogin::start("alice", b"correct horse battery staple")?;
//! let (server, m2) = ServerLogin::start(&setup, &users, &m1)?;
//! let (m3, client_key) = client.finish(&m2)?;
//! let (name, server_key) = server.finish_with_key(&m3)?;
//! assert_eq!(name, "alice");
//! assert_eq!(client_key, server_key);
//!
//! // The wrong password fails at the client.
//! let (client, m1) = ClientLogin::start("alice", b"wrong")?;
//! let (_server, m2) = ServerLogin::start(&setup, &users, &m1)?;
//! assert!(matches!(client.finish(&m2), Err(OpaqueError::WrongPassword)));
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! [opaque-ke]: https://docs.rs/opaque-ke/4.0.1

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use opaque_ke::errors::{InternalError, ProtocolError};
use opaque_ke::generic_array::typenum::Unsigned;
use opaque_ke::{
    ClientLoginFinishParameters, ClientRegistrationFinishParameters, CredentialFinalization,
    CredentialFinalizationLen, CredentialRequest, CredentialRequestLen, CredentialResponse,
    CredentialResponseLen, Identifiers, ServerLoginParameters, ServerRegistration,
    ServerRegistrationLen,
};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

/// The cipher suite: Ristretto255 OPRF, `TripleDh<Ristretto255, Sha512>` key exchange,
/// Argon2id (default parameters: 19 MiB, 2 passes) as the key stretching function.
#[derive(Debug, Clone, Copy)]
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// The version byte every login message starts with.
pub const MESSAGE_VERSION: u8 = 1;
/// The longest user name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

const KIND_START: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_FINISH: u8 = 3;
/// Bound into every login's transcript, so messages of another protocol never verify.
const CONTEXT: &[u8] = b"polycall OPAQUE login v1";
/// What `ServerSetup::to_bytes` starts with: magic + format version.
const SETUP_MAGIC: &[u8] = b"PCOS\x01";
/// The users file's `format` field.
const USERS_FORMAT: &str = "polycall-opaque-users";
const USERS_VERSION: u32 = 1;
const SUITE_NAME: &str = "ristretto255-tripledh-sha512-argon2id";

/// What can go wrong registering users, logging in, or keeping the files.
///
/// Login failures are deliberately uninformative: the server answers a wrong password,
/// an unknown user and a replay with the same [`OpaqueError::LoginFailed`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpaqueError {
    /// A login message (or serialized setup) that does not parse: truncated, garbage,
    /// another version, or a message of the wrong step.
    #[error("malformed OPAQUE message: {0}")]
    Malformed(String),
    /// The server refused the login (wrong password, unknown user, replayed or forged
    /// message: deliberately the same error for all).
    #[error("login failed")]
    LoginFailed,
    /// The client could not open the server's answer: the password is wrong, or the
    /// user is not registered on this server (the client cannot tell which).
    #[error("login failed: wrong password, or the user is not registered on this server")]
    WrongPassword,
    /// `add` of a name that is already registered.
    #[error("user {0:?} already exists; use replace (or remove it first) to set a new password")]
    UserExists(String),
    /// A user name that is empty, too long, or contains whitespace or control characters.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Registration with an empty password.
    #[error("refusing to register an empty password")]
    EmptyPassword,
    /// Standard input ended before a password line was read.
    #[error(
        "no password: standard input ended before a line was read; pipe the password in, or run on a terminal"
    )]
    NoPassword,
    /// A file or terminal could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file (or `/dev/tty`, `stdin`).
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A secret file readable or writable by group or others.
    #[error(
        "{path} has mode {mode:03o}, so group or others can read or write it; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A setup or users file that exists but does not parse.
    #[error("{path} is not a valid polycall OPAQUE file: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong (never its content).
        reason: String,
    },
    /// opaque-ke failed for a reason other than a wrong password (for example the key
    /// stretching function could not allocate its memory).
    #[error("OPAQUE internal error: {0}")]
    Protocol(String),
}

fn io_err(path: &Path, e: std::io::Error) -> OpaqueError {
    OpaqueError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn internal(e: ProtocolError) -> OpaqueError {
    OpaqueError::Protocol(format!("{e:?}"))
}

/// Overwrites a secret buffer with zeros (best effort: no crate, no unsafe).
fn wipe(b: &mut [u8]) {
    b.fill(0);
    std::hint::black_box(&b);
}

/// A password held between the two client steps, wiped on drop.
struct SecretBytes(Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

fn identifiers(name: &str) -> Identifiers<'_> {
    Identifiers {
        client: Some(name.as_bytes()),
        server: None,
    }
}

/// Checks a user name: 1 to [`MAX_NAME_LEN`] bytes, no whitespace, no control characters.
pub fn validate_name(name: &str) -> Result<(), OpaqueError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 255 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(OpaqueError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        }),
    }
}

// ---------------------------------------------------------------------------------
// framing

fn frame(kind: u8, name: Option<&str>, body: &[u8]) -> Vec<u8> {
    let name_len = name.map_or(0, |n| 2 + n.len());
    let mut out = Vec::with_capacity(2 + name_len + body.len());
    out.push(MESSAGE_VERSION);
    out.push(kind);
    if let Some(n) = name {
        // Names are validated to at most 255 bytes, so this never truncates.
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_START => "login start",
        KIND_RESPONSE => "login response",
        KIND_FINISH => "login finish",
        _ => "unknown",
    }
}

/// Checks version and kind; returns what follows them.
fn unframe(msg: &[u8], kind: u8) -> Result<&[u8], OpaqueError> {
    let [version, got, rest @ ..] = msg else {
        return Err(OpaqueError::Malformed(format!(
            "{} message of {} bytes is too short",
            kind_name(kind),
            msg.len()
        )));
    };
    if *version != MESSAGE_VERSION {
        return Err(OpaqueError::Malformed(format!(
            "message version {version}, this build speaks version {MESSAGE_VERSION}"
        )));
    }
    if *got != kind {
        return Err(OpaqueError::Malformed(format!(
            "expected a {} message, got kind {got} ({})",
            kind_name(kind),
            kind_name(*got)
        )));
    }
    Ok(rest)
}

fn exact_len(what: &str, body: &[u8], want: usize) -> Result<(), OpaqueError> {
    if body.len() == want {
        Ok(())
    } else {
        Err(OpaqueError::Malformed(format!(
            "{what} has {} bytes, expected {want}",
            body.len()
        )))
    }
}

fn parse_start(msg: &[u8]) -> Result<(String, CredentialRequest<Suite>), OpaqueError> {
    let rest = unframe(msg, KIND_START)?;
    let [l0, l1, rest @ ..] = rest else {
        return Err(OpaqueError::Malformed(
            "login start message ends before the user name length".into(),
        ));
    };
    let name_len = usize::from(u16::from_le_bytes([*l0, *l1]));
    if name_len > MAX_NAME_LEN || name_len > rest.len() {
        return Err(OpaqueError::Malformed(format!(
            "user name length {name_len} exceeds the message or the limit of {MAX_NAME_LEN}"
        )));
    }
    let (name, body) = rest.split_at(name_len);
    let name = std::str::from_utf8(name)
        .map_err(|_| OpaqueError::Malformed("user name is not UTF-8".into()))?;
    validate_name(name).map_err(|e| OpaqueError::Malformed(e.to_string()))?;
    exact_len(
        "credential request",
        body,
        CredentialRequestLen::<Suite>::USIZE,
    )?;
    let request = CredentialRequest::<Suite>::deserialize(body)
        .map_err(|e| OpaqueError::Malformed(format!("credential request: {e:?}")))?;
    Ok((name.to_owned(), request))
}

fn parse_response(msg: &[u8]) -> Result<CredentialResponse<Suite>, OpaqueError> {
    let body = unframe(msg, KIND_RESPONSE)?;
    exact_len(
        "credential response",
        body,
        CredentialResponseLen::<Suite>::USIZE,
    )?;
    CredentialResponse::<Suite>::deserialize(body)
        .map_err(|e| OpaqueError::Malformed(format!("credential response: {e:?}")))
}

fn parse_finish(msg: &[u8]) -> Result<CredentialFinalization<Suite>, OpaqueError> {
    let body = unframe(msg, KIND_FINISH)?;
    exact_len(
        "credential finalization",
        body,
        CredentialFinalizationLen::<Suite>::USIZE,
    )?;
    CredentialFinalization::<Suite>::deserialize(body)
        .map_err(|e| OpaqueError::Malformed(format!("credential finalization: {e:?}")))
}

// ---------------------------------------------------------------------------------
// files

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), OpaqueError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(OpaqueError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), OpaqueError> {
    Ok(())
}

/// Opens an existing private file: a regular file, not accessible by group or others.
/// `Ok(None)` when it does not exist.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, OpaqueError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    if !meta.is_file() {
        return Err(OpaqueError::Io {
            path: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    check_private(path, &meta)?;
    fs::read(path).map(Some).map_err(|e| io_err(path, e))
}

/// Creates the parent directory (mode 0700) if it is missing.
fn create_parent(path: &Path) -> Result<(), OpaqueError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.exists() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(parent).map_err(|e| io_err(parent, e))
}

/// Writes `contents` to a fresh private temporary file beside `path`
/// ([`crate::private_file`]).
fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, OpaqueError> {
    let tmp = crate::private_file::temporary_beside(path).map_err(|e| io_err(path, e))?;
    crate::private_file::create_new(&tmp, contents).map_err(|e| io_err(&tmp, e))?;
    Ok(tmp)
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// Replaces `path` atomically with a private file ([`crate::private_file::replace`]).
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), OpaqueError> {
    create_parent(path)?;
    crate::private_file::replace(path, contents).map_err(|e| io_err(path, e))
}

fn hex_encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

// ---------------------------------------------------------------------------------
// server setup

/// The server's long-term OPAQUE secret (OPRF seed and key-exchange key pair).
///
/// Create it once ([`ServerSetup::load_or_create`]) and keep it: every registration
/// record is bound to it, and losing it means every user registers again.
pub struct ServerSetup {
    inner: opaque_ke::ServerSetup<Suite>,
}

impl std::fmt::Debug for ServerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSetup")
            .field("public_key", &hex_encode(&self.public_key()))
            .finish_non_exhaustive()
    }
}

impl ServerSetup {
    /// A new random setup (from the operating system's random numbers).
    pub fn generate() -> Self {
        Self {
            inner: opaque_ke::ServerSetup::<Suite>::new(&mut OsRng),
        }
    }

    /// Loads the setup at `path`, or creates it (parent directory mode 0700 if it is
    /// created, file mode 0600). An existing file that group or others can access is
    /// refused with [`OpaqueError::Permissions`]. Two processes racing to create it end
    /// up with the same setup.
    pub fn load_or_create(path: &Path) -> Result<Self, OpaqueError> {
        if let Some(bytes) = read_private(path)? {
            return Self::from_file_bytes(path, bytes);
        }
        create_parent(path)?;
        let setup = Self::generate();
        let mut bytes = setup.to_bytes();
        let tmp = write_temp(path, &bytes);
        wipe(&mut bytes);
        let tmp = tmp?;
        // A hard link never replaces an existing file: whoever links first wins.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_parent(path);
                Ok(setup)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = read_private(path)?.ok_or_else(|| OpaqueError::Io {
                    path: path.display().to_string(),
                    reason: "vanished while it was being created".into(),
                })?;
                Self::from_file_bytes(path, bytes)
            }
            Err(e) => Err(io_err(path, e)),
        }
    }

    fn from_file_bytes(path: &Path, mut bytes: Vec<u8>) -> Result<Self, OpaqueError> {
        let setup = Self::from_bytes(&bytes).map_err(|e| OpaqueError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        });
        wipe(&mut bytes);
        setup
    }

    /// The serialized setup (secret: store it with mode 0600).
    pub fn to_bytes(&self) -> Vec<u8> {
        let inner = self.inner.serialize();
        let mut out = Vec::with_capacity(SETUP_MAGIC.len() + inner.len());
        out.extend_from_slice(SETUP_MAGIC);
        out.extend_from_slice(&inner);
        out
    }

    /// Parses [`ServerSetup::to_bytes`]; anything else is [`OpaqueError::Malformed`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, OpaqueError> {
        let body = b.strip_prefix(SETUP_MAGIC).ok_or_else(|| {
            OpaqueError::Malformed("not a polycall OPAQUE server setup (version 1)".into())
        })?;
        let want = Self::generate().inner.serialize().len();
        exact_len("server setup", body, want)?;
        let inner = opaque_ke::ServerSetup::<Suite>::deserialize(body)
            .map_err(|e| OpaqueError::Malformed(format!("server setup: {e:?}")))?;
        Ok(Self { inner })
    }

    /// The server's public key (32 bytes). Clients may pin it: it is the same for every
    /// login against this setup.
    pub fn public_key(&self) -> Vec<u8> {
        self.inner.keypair().public().serialize().to_vec()
    }
}

// ---------------------------------------------------------------------------------
// user store

#[derive(Serialize, Deserialize)]
struct UsersFile {
    format: String,
    version: u32,
    suite: String,
    /// name → hex of the serialized registration record.
    users: BTreeMap<String, String>,
}

/// The users file: user name → OPAQUE registration record. It never holds a password or
/// a hash of one; a record alone cannot log in.
///
/// Changes are in memory until [`UserStore::save`], which replaces the file atomically.
pub struct UserStore {
    path: PathBuf,
    users: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore")
            .field("path", &self.path)
            .field("users", &self.names())
            .finish()
    }
}

fn check_record(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() != ServerRegistrationLen::<Suite>::USIZE {
        return Err(format!(
            "record has {} bytes, expected {}",
            bytes.len(),
            ServerRegistrationLen::<Suite>::USIZE
        ));
    }
    ServerRegistration::<Suite>::deserialize(bytes)
        .map(|_| ())
        .map_err(|e| format!("record does not parse: {e:?}"))
}

impl UserStore {
    /// Opens the users file at `path`; a missing file is an empty store (created by
    /// [`UserStore::save`]). A file that group or others can access is refused.
    pub fn open(path: &Path) -> Result<Self, OpaqueError> {
        let mut store = Self {
            path: path.to_path_buf(),
            users: BTreeMap::new(),
        };
        let Some(bytes) = read_private(path)? else {
            return Ok(store);
        };
        let corrupt = |reason: String| OpaqueError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let file: UsersFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("JSON: {e}")))?;
        if file.format != USERS_FORMAT || file.version != USERS_VERSION {
            return Err(corrupt(format!(
                "format {:?} version {}, expected {USERS_FORMAT:?} version {USERS_VERSION}",
                file.format, file.version
            )));
        }
        if file.suite != SUITE_NAME {
            return Err(corrupt(format!(
                "cipher suite {:?}, this build uses {SUITE_NAME:?}",
                file.suite
            )));
        }
        for (name, hex) in file.users {
            validate_name(&name).map_err(|e| corrupt(e.to_string()))?;
            let record = hex_decode(&hex)
                .ok_or_else(|| corrupt(format!("user {name:?}: record is not hex")))?;
            check_record(&record).map_err(|e| corrupt(format!("user {name:?}: {e}")))?;
            store.users.insert(name, record);
        }
        Ok(store)
    }

    /// The file this store reads and saves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers `name` with `password` (both halves of OPAQUE registration run here).
    /// Refuses a name that exists ([`OpaqueError::UserExists`]; see
    /// [`UserStore::replace`]), an invalid name and an empty password. Not saved until
    /// [`UserStore::save`].
    pub fn add(
        &mut self,
        setup: &ServerSetup,
        name: &str,
        password: &[u8],
    ) -> Result<(), OpaqueError> {
        validate_name(name)?;
        if self.users.contains_key(name) {
            return Err(OpaqueError::UserExists(name.to_owned()));
        }
        let record = register(setup, name, password)?;
        self.users.insert(name.to_owned(), record);
        Ok(())
    }

    /// Registers `name` with `password`, replacing its record if it exists.
    pub fn replace(
        &mut self,
        setup: &ServerSetup,
        name: &str,
        password: &[u8],
    ) -> Result<(), OpaqueError> {
        validate_name(name)?;
        let record = register(setup, name, password)?;
        self.users.insert(name.to_owned(), record);
        Ok(())
    }

    /// Removes `name`; `Ok(false)` if it was not registered.
    pub fn remove(&mut self, name: &str) -> Result<bool, OpaqueError> {
        Ok(self.users.remove(name).is_some())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// How many users are registered.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is registered.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The serialized registration record (opaque-ke `ServerRegistration`) of `name`.
    pub fn record(&self, name: &str) -> Option<&[u8]> {
        self.users.get(name).map(Vec::as_slice)
    }

    /// Writes the store to its file: JSON, atomically (temporary file + rename), mode
    /// 0600, creating the parent directory (mode 0700) if needed.
    pub fn save(&self) -> Result<(), OpaqueError> {
        let file = UsersFile {
            format: USERS_FORMAT.into(),
            version: USERS_VERSION,
            suite: SUITE_NAME.into(),
            users: self
                .users
                .iter()
                .map(|(n, r)| (n.clone(), hex_encode(r)))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| OpaqueError::Protocol(format!("encoding the users file: {e}")))?;
        json.push(b'\n');
        write_atomic(&self.path, &json)
    }
}

/// Runs a whole OPAQUE registration in-process; returns the serialized record.
fn register(setup: &ServerSetup, name: &str, password: &[u8]) -> Result<Vec<u8>, OpaqueError> {
    if password.is_empty() {
        return Err(OpaqueError::EmptyPassword);
    }
    let mut rng = OsRng;
    let start =
        opaque_ke::ClientRegistration::<Suite>::start(&mut rng, password).map_err(internal)?;
    let response = ServerRegistration::<Suite>::start(&setup.inner, start.message, name.as_bytes())
        .map_err(internal)?;
    let finish = start
        .state
        .finish(
            &mut rng,
            password,
            response.message,
            ClientRegistrationFinishParameters::new(identifiers(name), None),
        )
        .map_err(internal)?;
    Ok(ServerRegistration::<Suite>::finish(finish.message)
        .serialize()
        .to_vec())
}

// ---------------------------------------------------------------------------------
// login

/// The client side of a login, between its first and its last message.
pub struct ClientLogin {
    state: opaque_ke::ClientLogin<Suite>,
    name: String,
    password: SecretBytes,
}

impl std::fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLogin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClientLogin {
    /// Starts a login as `name`: returns the state to keep and the first message (user
    /// name + credential request) to send. The password stays here (wiped on drop).
    pub fn start(name: &str, password: &[u8]) -> Result<(Self, Vec<u8>), OpaqueError> {
        validate_name(name)?;
        let start =
            opaque_ke::ClientLogin::<Suite>::start(&mut OsRng, password).map_err(internal)?;
        let msg = frame(KIND_START, Some(name), &start.message.serialize());
        Ok((
            Self {
                state: start.state,
                name: name.to_owned(),
                password: SecretBytes(password.to_vec()),
            },
            msg,
        ))
    }

    /// The name this login is for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens the server's response: returns the finalization message to send and the
    /// session key (64 bytes). A wrong password (or a user the server does not know)
    /// fails here with [`OpaqueError::WrongPassword`]; the server, which never gets a
    /// valid finalization, fails too.
    pub fn finish(self, server_message: &[u8]) -> Result<(Vec<u8>, Vec<u8>), OpaqueError> {
        let response = parse_response(server_message)?;
        let Self {
            state,
            name,
            password,
        } = self;
        let params = ClientLoginFinishParameters::new(Some(CONTEXT), identifiers(&name), None);
        match state.finish(&mut OsRng, &password.0, response, params) {
            Ok(done) => Ok((
                frame(KIND_FINISH, None, &done.message.serialize()),
                done.session_key.to_vec(),
            )),
            Err(ProtocolError::InvalidLoginError) => Err(OpaqueError::WrongPassword),
            Err(ProtocolError::ReflectedValueError) => Err(OpaqueError::Malformed(
                "the server reflected the client's blinded element".into(),
            )),
            Err(e @ ProtocolError::LibraryError(InternalError::KsfError)) => Err(internal(e)),
            // Points that decode but do not fit together: a tampered response.
            Err(e) => Err(OpaqueError::Malformed(format!(
                "credential response: {e:?}"
            ))),
        }
    }
}

/// The server side of a login, between its response and the client's finalization.
pub struct ServerLogin {
    state: opaque_ke::ServerLogin<Suite>,
    name: String,
    known: bool,
}

impl std::fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLogin")
            .field("claimed_name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ServerLogin {
    /// Parses the client's first message and answers it. A user not in `users` gets a
    /// well-formed answer built from a dummy record (so names cannot be probed); that
    /// login then fails at [`ServerLogin::finish`]. Each call uses fresh nonces, so the
    /// same first message never gets the same answer twice.
    pub fn start(
        setup: &ServerSetup,
        users: &UserStore,
        first_message: &[u8],
    ) -> Result<(Self, Vec<u8>), OpaqueError> {
        let (name, request) = parse_start(first_message)?;
        // Records are checked when the store is opened; one that still fails to parse
        // is treated like an unknown user.
        let record = users
            .record(&name)
            .and_then(|r| ServerRegistration::<Suite>::deserialize(r).ok());
        let known = record.is_some();
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&name),
        };
        let started = opaque_ke::ServerLogin::<Suite>::start(
            &mut OsRng,
            &setup.inner,
            record,
            request,
            name.as_bytes(),
            params,
        )
        .map_err(|e| OpaqueError::Malformed(format!("credential request: {e:?}")))?;
        let msg = frame(KIND_RESPONSE, None, &started.message.serialize());
        Ok((
            Self {
                state: started.state,
                name,
                known,
            },
            msg,
        ))
    }

    /// The user name the client claimed (not yet proven).
    pub fn claimed_name(&self) -> &str {
        &self.name
    }

    /// Checks the client's finalization: `Ok(name)` only if the client proved knowledge
    /// of the registered password in this session. Otherwise
    /// [`OpaqueError::LoginFailed`] (or [`OpaqueError::Malformed`] for a message that
    /// does not parse).
    pub fn finish(self, final_message: &[u8]) -> Result<String, OpaqueError> {
        self.finish_with_key(final_message).map(|(name, _)| name)
    }

    /// Like [`ServerLogin::finish`], also returning the session key (64 bytes, equal to
    /// the client's).
    pub fn finish_with_key(self, final_message: &[u8]) -> Result<(String, Vec<u8>), OpaqueError> {
        let finalization = parse_finish(final_message)?;
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&self.name),
        };
        match self.state.finish(finalization, params) {
            Ok(done) if self.known => Ok((self.name, done.session_key.to_vec())),
            _ => Err(OpaqueError::LoginFailed),
        }
    }
}

// ---------------------------------------------------------------------------------
// password input

/// Reads a password: from the terminal without echo when standard input is a terminal
/// (prompting on `/dev/tty`), else one line from standard input. Never from argv.
pub fn read_password(prompt: &str) -> Result<Vec<u8>, OpaqueError> {
    if std::io::stdin().is_terminal() {
        read_password_tty(prompt)
    } else {
        read_password_line(&mut std::io::stdin().lock())
    }
}

/// Reads one line as a password, without its line ending (`\n` or `\r\n`). An input
/// that ends before any byte is [`OpaqueError::NoPassword`].
pub fn read_password_line(reader: &mut impl BufRead) -> Result<Vec<u8>, OpaqueError> {
    let mut buf = Vec::with_capacity(1024);
    let n = match reader.read_until(b'\n', &mut buf) {
        Ok(n) => n,
        Err(e) => {
            wipe(&mut buf);
            return Err(io_err(Path::new("stdin"), e));
        }
    };
    if n == 0 {
        return Err(OpaqueError::NoPassword);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(buf)
}

/// Restores the terminal's settings (saved with `stty -g`) when dropped.
struct EchoGuard {
    tty: fs::File,
    saved: String,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        if let Ok(tty) = self.tty.try_clone() {
            let arg = if self.saved.is_empty() {
                "echo"
            } else {
                self.saved.as_str()
            };
            let _ = Command::new("stty")
                .arg(arg)
                .stdin(tty)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.tty.write_all(b"\n");
    }
}

fn stty(tty: &fs::File, arg: &str) -> Result<std::process::Output, OpaqueError> {
    let tty_path = Path::new("/dev/tty");
    let input = tty.try_clone().map_err(|e| io_err(tty_path, e))?;
    let out = Command::new("stty")
        .arg(arg)
        .stdin(input)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| OpaqueError::Io {
            path: "stty".into(),
            reason: format!("cannot run stty {arg}: {e}"),
        })?;
    if !out.status.success() {
        return Err(OpaqueError::Io {
            path: "/dev/tty".into(),
            reason: format!("stty {arg} failed ({})", out.status),
        });
    }
    Ok(out)
}

fn read_password_tty(prompt: &str) -> Result<Vec<u8>, OpaqueError> {
    let tty_path = Path::new("/dev/tty");
    let mut tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tty_path)
        .map_err(|e| io_err(tty_path, e))?;
    let saved = stty(&tty, "-g")?;
    let saved = String::from_utf8_lossy(&saved.stdout).trim().to_owned();
    tty.write_all(prompt.as_bytes())
        .and_then(|()| tty.flush())
        .map_err(|e| io_err(tty_path, e))?;
    let guard = EchoGuard {
        tty: tty.try_clone().map_err(|e| io_err(tty_path, e))?,
        saved,
    };
    stty(&tty, "-echo")?;
    let result = read_password_line(&mut BufReader::new(&tty));
    drop(guard);
    result
}
