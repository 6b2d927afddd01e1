//! The handshake: what each side offers in `HELLO`, and what is agreed in `WELCOME`.
//!
//! ```
//! use polycall_proto::{negotiate, Settings};
//!
//! let client = Settings::default().min_version(1).max_version(3);
//! let server = Settings::default().min_version(2).max_version(2);
//! let welcome = negotiate(&server, &client.hello()).unwrap();
//! assert_eq!(welcome.version, 2);
//!
//! let server = server.min_version(4).max_version(5);
//! let refused = negotiate(&server, &client.hello()).unwrap_err();
//! assert_eq!(refused.supported_versions, Some((4, 5)));
//! assert!(refused.message.contains("1..=3") && refused.message.contains("4..=5"));
//! ```

use bytes::{BufMut, BytesMut};
use polycall_core::{Code, ContentType, Status};

use crate::compress::Algorithm;
use crate::error::{ConfigError, FrameError};
use crate::frame::{ErrorFrame, Hello, Welcome};
use crate::wire::Reader;

/// The protocol versions this implementation speaks.
pub const SUPPORTED_VERSIONS: (u16, u16) = (1, 1);

/// Body limit of `HELLO`, `WELCOME` and errors before the handshake completes.
pub const HANDSHAKE_MAX_FRAME: u32 = 16 * 1024;

/// Smallest `max_frame` a peer may advertise.
pub const MIN_MAX_FRAME: u32 = 1024;

/// Feature bits negotiated in the handshake. A bit is on only when both sides offer it;
/// bits this version does not know are ignored.
pub mod features {
    /// Every frame after the handshake carries a CRC32C trailer. Offered on
    /// transports that do not authenticate their bytes already (plain TCP, Unix
    /// sockets); off under TLS and QUIC.
    pub const CRC32C: u64 = 1 << 0;
    /// Streaming calls (`STREAM` flag, `DATA` with `FIRST`, `END`).
    pub const STREAMING: u64 = 1 << 1;
    /// Per-method trained zstd dictionaries: either side may send `DICTIONARY`
    /// frames and messages compressed with them (`zstd-dict`). Needs zstd agreed;
    /// offered by builds with zstd.
    pub const ZSTD_DICTIONARIES: u64 = 1 << 2;
    /// Packed stream messages: a `DATA` frame may carry several small messages of a
    /// stream (`PACKED`). Needs [`STREAMING`].
    pub const PACKED: u64 = 1 << 3;
    /// Every bit this version knows.
    pub const KNOWN: u64 = CRC32C | STREAMING | ZSTD_DICTIONARIES | PACKED;
}

/// Authentication methods (wire ids). The exchange itself is a series of `AUTH`
/// frames between `WELCOME` and the first call (see [`crate::Connection`]); what the
/// bytes mean is up to the method's implementation (polycall-net and
/// polycall-security).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AuthMethod {
    /// No authentication at the protocol level (e.g. mutual TLS already did it, or a
    /// trusted loopback).
    None = 0,
    /// A bearer token.
    Token = 1,
    /// OPAQUE zero-knowledge password authentication.
    Opaque = 2,
    /// The transport's client certificate.
    Certificate = 3,
}

impl AuthMethod {
    /// The method of a wire id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Token),
            2 => Some(Self::Opaque),
            3 => Some(Self::Certificate),
            _ => None,
        }
    }
}

/// What one side accepts: advertised in the handshake, enforced on every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame body accepted, in bytes.
    pub max_frame: u32,
    /// Largest message (after reassembly and decompression) accepted, in bytes.
    pub max_message: u32,
    /// Most calls the peer may have open towards this side at once.
    pub max_in_flight: u32,
    /// Flow-control credit granted at the start, in payload bytes.
    pub initial_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 256 * 1024,
            max_message: 64 * 1024 * 1024,
            max_in_flight: 16 * 1024,
            initial_window: 8 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Sets the largest frame body accepted, in bytes.
    pub fn max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Sets the largest message accepted (after reassembly and decompression), in bytes.
    pub fn max_message(mut self, max_message: u32) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets the most calls the peer may have open towards this side at once.
    pub fn max_in_flight(mut self, max_in_flight: u32) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets the flow-control credit granted at the start, in payload bytes.
    pub fn initial_window(mut self, initial_window: u32) -> Self {
        self.initial_window = initial_window;
        self
    }
}

impl Limits {
    pub(crate) fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.max_frame);
        b.put_u32_le(self.max_message);
        b.put_u32_le(self.max_in_flight);
        b.put_u32_le(self.initial_window);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, FrameError> {
        Ok(Self {
            max_frame: r.u32("limits are cut short")?,
            max_message: r.u32("limits are cut short")?,
            max_in_flight: r.u32("limits are cut short")?,
            initial_window: r.u32("limits are cut short")?,
        })
    }

    /// Checks the limits are usable: a frame of at least 1 KiB, a window of at least one
    /// frame, at least one call in flight.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame < MIN_MAX_FRAME {
            return Err(ConfigError::BelowMinimum {
                field: "max_frame",
                value: self.max_frame.into(),
                min: MIN_MAX_FRAME.into(),
            });
        }
        if self.max_message == 0 {
            return Err(ConfigError::Zero {
                field: "max_message",
            });
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::Zero {
                field: "max_in_flight",
            });
        }
        if self.initial_window < MIN_MAX_FRAME {
            return Err(ConfigError::BelowMinimum {
                field: "initial_window",
                value: self.initial_window.into(),
                min: MIN_MAX_FRAME.into(),
            });
        }
        Ok(())
    }
}

/// One side's protocol settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Lowest protocol version spoken.
    pub min_version: u16,
    /// Highest protocol version spoken.
    pub max_version: u16,
    /// Feature bits offered ([`features`]).
    pub features: u64,
    /// This side's receive limits.
    pub limits: Limits,
    /// Payload codecs this side reads, preferred first.
    pub codecs: Vec<ContentType>,
    /// Compression algorithms this side reads, preferred first.
    pub compressions: Vec<Algorithm>,
    /// Authentication methods, preferred first.
    pub auth_methods: Vec<AuthMethod>,
    /// Implementation name sent to the peer.
    pub agent: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_version: SUPPORTED_VERSIONS.0,
            max_version: SUPPORTED_VERSIONS.1,
            features: features::CRC32C
                | features::STREAMING
                | features::PACKED
                | if cfg!(feature = "zstd") {
                    features::ZSTD_DICTIONARIES
                } else {
                    0
                },
            limits: Limits::default(),
            codecs: vec![ContentType::Postcard, ContentType::Json, ContentType::Raw],
            compressions: Algorithm::built(),
            auth_methods: vec![AuthMethod::None],
            agent: concat!("polycall-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl Settings {
    /// Sets the lowest protocol version spoken.
    pub fn min_version(mut self, min_version: u16) -> Self {
        self.min_version = min_version;
        self
    }

    /// Sets the highest protocol version spoken.
    pub fn max_version(mut self, max_version: u16) -> Self {
        self.max_version = max_version;
        self
    }

    /// Sets the feature bits offered ([`features`]).
    pub fn features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// Sets this side's receive limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the payload codecs this side reads, preferred first.
    pub fn codecs(mut self, codecs: impl IntoIterator<Item = ContentType>) -> Self {
        self.codecs = codecs.into_iter().collect();
        self
    }

    /// Sets the compression algorithms this side reads, preferred first.
    pub fn compressions(mut self, compressions: impl IntoIterator<Item = Algorithm>) -> Self {
        self.compressions = compressions.into_iter().collect();
        self
    }

    /// Sets the authentication methods, preferred first.
    pub fn auth_methods(mut self, auth_methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        self.auth_methods = auth_methods.into_iter().collect();
        self
    }

    /// Sets the implementation name sent to the peer.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = agent.into();
        self
    }
}

impl Settings {
    /// Settings for a transport that already authenticates its bytes (TLS, QUIC): the
    /// CRC32C trailer is not offered.
    pub fn authenticated_transport() -> Self {
        let mut s = Self::default();
        s.features &= !features::CRC32C;
        s
    }

    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_version > self.max_version {
            return Err(ConfigError::Versions {
                min: self.min_version,
                max: self.max_version,
            });
        }
        self.limits.validate()?;
        if self.auth_methods.is_empty() {
            return Err(ConfigError::NoAuthMethod);
        }
        if let Some(&algorithm) = self.compressions.iter().find(|a| !a.is_built()) {
            return Err(ConfigError::CompressionNotBuilt { algorithm });
        }
        if self.compressions.contains(&Algorithm::ZstdDict) {
            return Err(ConfigError::DictionaryListed);
        }
        Ok(())
    }

    /// The client's `HELLO` for these settings.
    pub fn hello(&self) -> Hello {
        Hello {
            min_version: self.min_version,
            max_version: self.max_version,
            features: self.features,
            limits: self.limits,
            codecs: self.codecs.iter().map(|c| c.id()).collect(),
            compressions: self.compressions.iter().map(|c| c.id()).collect(),
            auth_methods: self.auth_methods.iter().map(|m| *m as u8).collect(),
            agent: self.agent.clone(),
        }
    }
}

fn range(lo: u16, hi: u16) -> String {
    format!("{lo}..={hi}")
}

/// The server's side of the handshake: the `WELCOME` for a client's `HELLO`, or the
/// `ERROR` frame (call id 0) that ends the connection.
///
/// - version: the highest both speak; disjoint ranges fail with
///   [`Code::VersionMismatch`] naming both ranges;
/// - features: the bits both offer and this version knows;
/// - codecs and compression: those both read, in the server's order; raw payloads and
///   no compression are always available, so these never fail;
/// - auth: the server's first method the client offers; none in common fails with
///   [`Code::Unauthenticated`];
/// - limits: the server's are sent; each side sends within the other's.
pub fn negotiate(server: &Settings, hello: &Hello) -> Result<Welcome, ErrorFrame> {
    let fail = |code: Code, msg: String| ErrorFrame::from_status(0, &Status::new(code, msg));
    if hello.min_version > hello.max_version {
        return Err(fail(
            Code::Malformed,
            format!(
                "client offers the empty version range {}",
                range(hello.min_version, hello.max_version)
            ),
        ));
    }
    let lo = hello.min_version.max(server.min_version);
    let hi = hello.max_version.min(server.max_version);
    if lo > hi {
        let mut e = fail(
            Code::VersionMismatch,
            format!(
                "no common protocol version: client offers {}, server supports {}",
                range(hello.min_version, hello.max_version),
                range(server.min_version, server.max_version)
            ),
        );
        e.supported_versions = Some((server.min_version, server.max_version));
        return Err(e);
    }
    if let Err(why) = hello.limits.validate() {
        return Err(fail(
            Code::InvalidInput,
            format!("client limits refused: {why}"),
        ));
    }
    let auth_method = server
        .auth_methods
        .iter()
        .find(|m| hello.auth_methods.contains(&(**m as u8)))
        .ok_or_else(|| {
            fail(
                Code::Unauthenticated,
                format!(
                    "no common authentication method: client offers {:?}, server accepts {:?}",
                    hello.auth_methods,
                    server
                        .auth_methods
                        .iter()
                        .map(|m| *m as u8)
                        .collect::<Vec<_>>()
                ),
            )
        })?;
    let mut codecs: Vec<u8> = server
        .codecs
        .iter()
        .map(|c| c.id())
        .filter(|id| hello.codecs.contains(id))
        .collect();
    if !codecs.contains(&ContentType::Raw.id()) {
        codecs.push(ContentType::Raw.id());
    }
    let mut compressions: Vec<u8> = server
        .compressions
        .iter()
        .map(|c| c.id())
        .filter(|id| hello.compressions.contains(id))
        .collect();
    if !compressions.contains(&Algorithm::None.id()) {
        compressions.push(Algorithm::None.id());
    }
    Ok(Welcome {
        version: hi,
        features: hello.features & server.features & features::KNOWN,
        limits: server.limits,
        codecs,
        compressions,
        auth_method: *auth_method as u8,
        agent: server.agent.clone(),
    })
}

/// What both sides agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version.
    pub version: u16,
    /// Feature bits on.
    pub features: u64,
    /// Limits this side enforces on what it receives.
    pub local_limits: Limits,
    /// Limits the peer enforces: this side sends within them.
    pub peer_limits: Limits,
    /// Payload codecs both read.
    pub codecs: Vec<ContentType>,
    /// Compression algorithms both read (always includes [`Algorithm::None`]).
    pub compressions: Vec<Algorithm>,
    /// The authentication method in force.
    pub auth_method: AuthMethod,
    /// The peer's implementation name.
    pub peer_agent: String,
}

impl Negotiated {
    /// Whether a feature bit is on.
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// The server's record of a handshake it answered.
    pub fn for_server(server: &Settings, hello: &Hello, welcome: &Welcome) -> Self {
        Self::build(welcome, server.limits, hello.limits, hello.agent.clone())
    }

    /// The client's check of a server's `WELCOME` against its own offer: the server
    /// must pick within what was offered.
    pub fn for_client(client: &Settings, welcome: &Welcome) -> Result<Self, Status> {
        let bad = |what: String| {
            Status::malformed(format!(
                "server's WELCOME is not within the client's offer: {what}"
            ))
        };
        if welcome.version < client.min_version || welcome.version > client.max_version {
            return Err(bad(format!(
                "version {} outside {}",
                welcome.version,
                range(client.min_version, client.max_version)
            )));
        }
        if welcome.features & !client.features != 0 {
            return Err(bad(format!(
                "features 0x{:x} not offered",
                welcome.features & !client.features
            )));
        }
        if let Some(id) = welcome.compressions.iter().find(|&&id| {
            id != Algorithm::None.id() && !client.compressions.iter().any(|a| a.id() == id)
        }) {
            return Err(bad(format!("compression {id} not offered")));
        }
        let offered_auth = client
            .auth_methods
            .iter()
            .any(|m| *m as u8 == welcome.auth_method);
        if !offered_auth {
            return Err(bad(format!(
                "auth method {} not offered",
                welcome.auth_method
            )));
        }
        if let Err(why) = welcome.limits.validate() {
            return Err(Status::invalid_input(format!(
                "server limits refused: {why}"
            )));
        }
        Ok(Self::build(
            welcome,
            client.limits,
            welcome.limits,
            welcome.agent.clone(),
        ))
    }

    fn build(
        welcome: &Welcome,
        local_limits: Limits,
        peer_limits: Limits,
        peer_agent: String,
    ) -> Self {
        let mut compressions: Vec<Algorithm> = welcome
            .compressions
            .iter()
            .filter_map(|&id| Algorithm::from_id(id))
            // `zstd-dict` is agreed by a feature bit, never by the list.
            .filter(|a| a.is_built() && *a != Algorithm::ZstdDict)
            .collect();
        if !compressions.contains(&Algorithm::None) {
            compressions.push(Algorithm::None);
        }
        let mut codecs: Vec<ContentType> = welcome
            .codecs
            .iter()
            .filter_map(|&id| ContentType::from_id(id))
            .collect();
        if !codecs.contains(&ContentType::Raw) {
            codecs.push(ContentType::Raw);
        }
        Self {
            version: welcome.version,
            features: welcome.features,
            local_limits,
            peer_limits,
            codecs,
            compressions,
            auth_method: AuthMethod::from_id(welcome.auth_method).unwrap_or(AuthMethod::None),
            peer_agent,
        }
    }
}
