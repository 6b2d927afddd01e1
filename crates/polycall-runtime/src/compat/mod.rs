//! libpolycall compatibility: PCR1 and first-generation clients on the runtime's own
//! listener, their calls routed exactly as native calls are (the same QoS stack over
//! the same [`Route`]).
//!
//! The server tells the dialect on a connection's first bytes
//! ([`polycall_net::LegacyServe`]); this module serves the two legacy ones:
//!
//! - **PCR1**: requests `{"service", "operation", "deadline_ms", "input"}` become
//!   calls of `service.operation` with the input as a JSON payload and the deadline as
//!   the call's deadline; answers are `{"ok": true, "output"}` or `{"ok": false,
//!   "error": {"code", "message"}}` with libpolycall's code strings. Control messages:
//!   `ping`, `health` (`sys.health`), `describe` (every operation, with summary, schema
//!   hints and `idempotent`) and `shutdown` (needs the runtime's token as `auth_token`).
//!   Several requests may follow each other (pipelined or not) on one connection.
//! - **First generation**: handshake → auth (checked against
//!   [`CompatConfig::credentials`]) → commands `{"command": "service.operation",
//!   "data"}` answered by a response (4) or an error (5), heartbeats echoed; every
//!   checksum verified.
//!
//! Every read is bounded by [`CompatConfig::read_timeout`]: a message must be complete
//! within it of the moment the server starts waiting for it, so a peer that trickles
//! bytes costs one timeout, then its connection closes.
//!
//! Serving the dialects needs the `compat` cargo feature (on by default). Without it
//! [`CompatConfig`] stays (configuration files keep their `[compat]` section), nothing
//! is served, and a runtime asked to serve a dialect says at start that this build
//! cannot.

use std::time::Duration;

#[cfg(feature = "compat")]
mod serve;
#[cfg(feature = "compat")]
pub(crate) use serve::{Compat, LegacyPolicy};

/// The largest message either dialect carries: libpolycall's own limit, 1 MiB.
pub const MAX_LEGACY_MESSAGE: u32 = 1 << 20;

/// libpolycall compatibility settings of a runtime.
///
/// ```
/// use polycall_runtime::CompatConfig;
/// let c = CompatConfig::default();
/// assert!(c.pcr1 && c.legacy_v1 && !c.fixtures && !c.when_secured);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CompatConfig {
    /// Serve libpolycall PCR1 clients (default on).
    pub pcr1: bool,
    /// Serve libpolycall first-generation clients (default on). Their AUTH step is
    /// checked against the runtime's own sources: `[auth]` tokens (user = the token's
    /// name, password = the token) and OPAQUE users (their password).
    pub legacy_v1: bool,
    /// Serve libpolycall's conformance fixture `inventory.get` (default off).
    pub fixtures: bool,
    /// Serve the legacy dialects also when the runtime requires authentication or
    /// listens beyond loopback (default off: then they are answered `unsupported`).
    /// When on and authentication is required, every PCR1 message must carry a valid
    /// `auth_token` and every first-generation session must log in; anything else is
    /// answered with the dialect's `auth.denied` and reaches no handler.
    pub when_secured: bool,
    /// The largest message either dialect carries, in bytes (default and most: 1 MiB).
    pub max_message: u32,
    /// Time allowed for each message to arrive, and for each answer to be written.
    pub read_timeout: Duration,
    /// The deadline of calls that state none (first-generation commands, PCR1
    /// requests without `deadline_ms` or with 0).
    pub default_deadline: Duration,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            pcr1: true,
            legacy_v1: true,
            fixtures: false,
            when_secured: false,
            max_message: MAX_LEGACY_MESSAGE,
            read_timeout: Duration::from_secs(10),
            default_deadline: Duration::from_secs(30),
        }
    }
}

impl CompatConfig {
    /// Whether any legacy dialect is served.
    pub(crate) fn any(&self) -> bool {
        self.pcr1 || self.legacy_v1
    }

    /// Sets whether libpolycall PCR1 clients are served.
    pub fn pcr1(mut self, pcr1: bool) -> Self {
        self.pcr1 = pcr1;
        self
    }

    /// Sets whether libpolycall first-generation clients are served.
    pub fn legacy_v1(mut self, legacy_v1: bool) -> Self {
        self.legacy_v1 = legacy_v1;
        self
    }

    /// Sets whether libpolycall's conformance fixture `inventory.get` is served.
    pub fn fixtures(mut self, fixtures: bool) -> Self {
        self.fixtures = fixtures;
        self
    }

    /// Sets whether the legacy dialects are served also when the runtime requires
    /// authentication or listens beyond loopback.
    pub fn when_secured(mut self, when_secured: bool) -> Self {
        self.when_secured = when_secured;
        self
    }

    /// Sets the largest message either dialect carries, in bytes (at most 1 MiB).
    pub fn max_message(mut self, max_message: u32) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets the time allowed for each message to arrive, and for each answer to be written.
    pub fn read_timeout(mut self, read_timeout: Duration) -> Self {
        self.read_timeout = read_timeout;
        self
    }

    /// Sets the deadline of calls that state none.
    pub fn default_deadline(mut self, default_deadline: Duration) -> Self {
        self.default_deadline = default_deadline;
        self
    }
}
