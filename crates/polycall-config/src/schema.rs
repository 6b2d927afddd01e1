//! The schema of `polycall.toml`, version 1: every section and key, its type, range,
//! default, whether a running runtime can apply a change to it without a restart, and
//! what it means. `docs/config.md` documents the same table.

/// The schema version this build reads and writes.
pub const CURRENT_VERSION: u64 = 1;

/// Largest frame body the protocol carries.
pub const MAX_FRAME_LIMIT: u64 = 16 * 1024 * 1024;

/// The type of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number within `min..=max`.
    Int {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// A size in bytes: a whole number, or a string with a binary suffix
    /// (`"256K"`, `"16M"`, `"1G"`, also `KiB`/`MiB`/`GiB`), within `min..=max`.
    Size {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// `true` or `false`.
    Bool,
    /// A path (a non-empty string).
    Path,
    /// `HOST:PORT` (port 0: any free port) or `unix:PATH`.
    Endpoint,
    /// One of the listed words.
    Enum(&'static [&'static str]),
    /// A non-empty string (a label, a variable name).
    Text,
}

impl Kind {
    /// The type's name in messages and in the documentation.
    pub fn describe(&self) -> String {
        match self {
            Kind::Int { min, max } => format!("an integer {min}..={max}"),
            Kind::Size { min, max } => format!("a size in bytes {min}..={max} (or \"16M\")"),
            Kind::Bool => "a boolean".into(),
            Kind::Path => "a path (string)".into(),
            Kind::Endpoint => "an endpoint (HOST:PORT or unix:PATH)".into(),
            Kind::Enum(w) => format!("one of {}", w.join("|")),
            Kind::Text => "a string".into(),
        }
    }
}

/// A default value (`None`: unset, the feature is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// Unset.
    None,
    /// A number.
    Int(u64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'static str),
}

/// One key of the schema.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// Its section (`runtime`, `limits`, …).
    pub section: &'static str,
    /// Its name within the section.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its default.
    pub default: DefaultValue,
    /// Whether a running runtime can apply a change without restarting.
    pub reloadable: bool,
    /// What it means.
    pub doc: &'static str,
}

impl KeyDef {
    /// `section.name`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

const U32: u64 = u32::MAX as u64;
const HOUR_MS: u64 = 3_600_000;

macro_rules! key {
    ($s:literal, $n:literal, $k:expr, $d:expr, $r:literal, $doc:literal) => {
        KeyDef {
            section: $s,
            name: $n,
            kind: $k,
            default: $d,
            reloadable: $r,
            doc: $doc,
        }
    };
}

/// The sections, in the order files and documentation list them.
pub const SECTIONS: &[&str] = &[
    "runtime",
    "limits",
    "qos",
    "log",
    "compat",
    "state",
    "tls",
    "auth",
    "admin",
    "gateway",
    "observe",
    "cluster",
    "discovery",
];

/// Every key of version 1.
pub static KEYS: &[KeyDef] = &[
    key!(
        "runtime",
        "endpoint",
        Kind::Endpoint,
        DefaultValue::Str("127.0.0.1:7464"),
        false,
        "Where the runtime listens: HOST:PORT (port 0: any free port) or unix:PATH."
    ),
    key!(
        "runtime",
        "state_dir",
        Kind::Path,
        DefaultValue::Str(".polycall"),
        false,
        "Where the runtime keeps runtime.json and runtime.token (relative to the working directory)."
    ),
    key!(
        "runtime",
        "worker_threads",
        Kind::Int { min: 0, max: 1024 },
        DefaultValue::Int(1),
        false,
        "Threads that run connections: 1 (one event loop, as linkerd2-proxy defaults to: a routed call never crosses threads), N, or 0 for one per core."
    ),
    key!(
        "runtime",
        "max_connections",
        Kind::Int {
            min: 1,
            max: 1_000_000
        },
        DefaultValue::Int(10_000),
        true,
        "Most connections at once; more are told `busy` and closed."
    ),
    key!(
        "runtime",
        "drain_timeout_ms",
        Kind::Int {
            min: 0,
            max: HOUR_MS
        },
        DefaultValue::Int(10_000),
        true,
        "Time given to calls in flight at shutdown, in milliseconds."
    ),
    key!(
        "runtime",
        "debug_methods",
        Kind::Bool,
        DefaultValue::Bool(false),
        false,
        "Serve debug.echo and debug.sleep (test aids; off in production). compat.fixtures turns them on too."
    ),
    key!(
        "limits",
        "max_frame",
        Kind::Size {
            min: 1024,
            max: MAX_FRAME_LIMIT
        },
        DefaultValue::Int(256 * 1024),
        true,
        "Largest frame body accepted, in bytes (advertised in the handshake). Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "max_message",
        Kind::Size {
            min: 1024,
            max: U32
        },
        DefaultValue::Int(64 * 1024 * 1024),
        true,
        "Largest message (after reassembly and decompression) accepted, in bytes; at least max_frame. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "max_in_flight",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::Int(16 * 1024),
        true,
        "Most calls a peer may have open towards the runtime at once, per connection. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "initial_window",
        Kind::Size {
            min: 1024,
            max: U32
        },
        DefaultValue::Int(8 * 1024 * 1024),
        true,
        "Flow-control credit granted at the start of a connection, in payload bytes; at least max_frame. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "handshake_timeout_ms",
        Kind::Int {
            min: 1,
            max: HOUR_MS
        },
        DefaultValue::Int(5_000),
        true,
        "Time allowed for the preface and handshake, in milliseconds. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "frame_timeout_ms",
        Kind::Int {
            min: 1,
            max: HOUR_MS
        },
        DefaultValue::Int(30_000),
        true,
        "Time allowed to complete a frame once its first byte arrived, in milliseconds. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "write_stall_timeout_ms",
        Kind::Int {
            min: 1,
            max: HOUR_MS
        },
        DefaultValue::Int(30_000),
        true,
        "Time a peer may leave the runtime's writes blocked before it is dropped, in milliseconds. Reloads for connections opened afterwards."
    ),
    key!(
        "limits",
        "max_concurrent_handlers",
        Kind::Int {
            min: 1,
            max: 1_000_000
        },
        DefaultValue::Int(4096),
        true,
        "Most handlers running at once for one connection's incoming calls. Reloads for connections opened afterwards."
    ),
    key!(
        "qos",
        "rate_limit_per_second",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::None,
        true,
        "Calls per second each client may make; over it, `busy`. Unset: no rate limit."
    ),
    key!(
        "qos",
        "rate_limit_burst",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::None,
        true,
        "Calls a client may make at once after a quiet period. Unset: rate_limit_per_second."
    ),
    key!(
        "qos",
        "max_concurrency",
        Kind::Int {
            min: 1,
            max: 1_000_000
        },
        DefaultValue::None,
        true,
        "Calls the runtime serves at once; over it, `busy`, low priorities shed first. Unset: no limit."
    ),
    key!(
        "log",
        "level",
        Kind::Enum(&["error", "warn", "info", "debug", "trace"]),
        DefaultValue::Str("info"),
        true,
        "Least severe log events printed (POLYCALL_LOG, an env-filter, wins over it)."
    ),
    key!(
        "log",
        "format",
        Kind::Enum(&["text", "json", "telemetry"]),
        DefaultValue::Str("text"),
        false,
        "Log lines for people (text), one JSON object a line carrying the call's trace_id and span_id (json), or libpolycall's telemetry line shape (telemetry)."
    ),
    key!(
        "compat",
        "pcr1",
        Kind::Bool,
        DefaultValue::Bool(true),
        false,
        "Serve libpolycall PCR1 clients on the runtime's endpoint."
    ),
    key!(
        "compat",
        "legacy_v1",
        Kind::Bool,
        DefaultValue::Bool(true),
        false,
        "Serve libpolycall first-generation (16-byte header) clients on the runtime's endpoint."
    ),
    key!(
        "compat",
        "fixtures",
        Kind::Bool,
        DefaultValue::Bool(false),
        false,
        "Serve libpolycall's conformance fixture method `inventory.get`."
    ),
    key!(
        "compat",
        "when_secured",
        Kind::Bool,
        DefaultValue::Bool(false),
        false,
        "Serve the libpolycall dialects also when [auth] requires authentication or the endpoint is not loopback; PCR1 messages must then carry a valid auth_token and first-generation sessions log in with [auth] credentials."
    ),
    key!(
        "state",
        "machine_dir",
        Kind::Path,
        DefaultValue::None,
        false,
        "Directory of state machine definitions (*.toml, docs/state.md); unset: no state machines."
    ),
    key!(
        "state",
        "database",
        Kind::Path,
        DefaultValue::None,
        false,
        "The state database file (redb); unset: state.redb in the state directory."
    ),
    key!(
        "state",
        "batch_window_ms",
        Kind::Int {
            min: 1,
            max: 60_000
        },
        DefaultValue::Int(50),
        false,
        "For machines with durability = \"batched\": the longest an acknowledged event waits for its fsync (the loss window)."
    ),
    key!(
        "state",
        "keep_snapshots",
        Kind::Int {
            min: 1,
            max: 1_000_000
        },
        DefaultValue::Int(16),
        false,
        "Snapshots kept per instance; the log behind the oldest is compacted (the point-in-time recovery window)."
    ),
    key!(
        "state",
        "backup_every_s",
        Kind::Int {
            min: 1,
            max: 31_536_000
        },
        DefaultValue::None,
        false,
        "Take an online backup of the state database this often (seconds); unset: no scheduled backups."
    ),
    key!(
        "state",
        "backup_keep",
        Kind::Int {
            min: 1,
            max: 100_000
        },
        DefaultValue::Int(7),
        false,
        "Scheduled backups kept; older ones are deleted."
    ),
    key!(
        "state",
        "backup_dir",
        Kind::Path,
        DefaultValue::None,
        false,
        "Where scheduled backups go; unset: backups/ in the state directory."
    ),
    key!(
        "tls",
        "enabled",
        Kind::Bool,
        DefaultValue::Bool(false),
        false,
        "Serve TLS 1.3 only (aws-lc-rs); certificates reload on SIGHUP or a configuration change."
    ),
    key!(
        "tls",
        "cert_file",
        Kind::Path,
        DefaultValue::None,
        true,
        "PEM certificate chain (relative to the configuration file's directory)."
    ),
    key!(
        "tls",
        "key_file",
        Kind::Path,
        DefaultValue::None,
        true,
        "PEM private key of cert_file (relative to the configuration file's directory)."
    ),
    key!(
        "tls",
        "ca_file",
        Kind::Path,
        DefaultValue::None,
        true,
        "PEM CA certificates that client certificates must chain to; required when client_auth is not off."
    ),
    key!(
        "tls",
        "client_auth",
        Kind::Enum(&["off", "optional", "required"]),
        DefaultValue::Str("off"),
        false,
        "Whether clients present a certificate."
    ),
    key!(
        "tls",
        "crl_file",
        Kind::Path,
        DefaultValue::None,
        true,
        "PEM certificate revocation lists checked against client certificates."
    ),
    key!(
        "tls",
        "hsm_module",
        Kind::Path,
        DefaultValue::None,
        true,
        "PKCS#11 module holding the private key instead of key_file (e.g. /usr/lib/softhsm/libsofthsm2.so)."
    ),
    key!(
        "tls",
        "hsm_token",
        Kind::Text,
        DefaultValue::None,
        true,
        "Label of the PKCS#11 token holding the key."
    ),
    key!(
        "tls",
        "hsm_key",
        Kind::Text,
        DefaultValue::None,
        true,
        "Label (CKA_LABEL) of the private key in the token."
    ),
    key!(
        "tls",
        "hsm_pin_env",
        Kind::Text,
        DefaultValue::Str("POLYCALL_HSM_PIN"),
        true,
        "Environment variable holding the token's user PIN (the PIN itself is never configured)."
    ),
    key!(
        "auth",
        "anonymous",
        Kind::Bool,
        DefaultValue::Bool(true),
        false,
        "Admit clients that prove nothing (their calls run as anonymous:PEER). Must be false on a non-loopback endpoint."
    ),
    key!(
        "auth",
        "certificate",
        Kind::Bool,
        DefaultValue::Bool(false),
        false,
        "Accept the TLS client certificate as proof; its SPIFFE URI (else DNS name) is the principal."
    ),
    key!(
        "auth",
        "file",
        Kind::Path,
        DefaultValue::None,
        true,
        "TOML file with [tokens] (NAME = \"env:VAR\" or \"file:PATH\"), [roles] and [[rules]] (see docs/security.md)."
    ),
    key!(
        "auth",
        "users_file",
        Kind::Path,
        DefaultValue::None,
        false,
        "OPAQUE password users (`polycall users add NAME`); the server's OPAQUE secret is kept beside it in opaque-setup."
    ),
    key!(
        "admin",
        "listen",
        Kind::Endpoint,
        DefaultValue::None,
        false,
        "Serve /metrics, /healthz, /readyz and /dashboard on this HOST:PORT (an IP address; loopback unless runtime.insecure_remote). Unset: no admin listener."
    ),
    key!(
        "gateway",
        "listen",
        Kind::Endpoint,
        DefaultValue::None,
        false,
        "Serve every method over HTTP/JSON (POST /v1/{service}/{method}, /openapi.json, /docs) on this HOST:PORT (an IP address; loopback or TLS unless runtime.insecure_remote). Unset: no gateway."
    ),
    key!(
        "gateway",
        "max_body",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::Int(4_194_304),
        false,
        "The largest HTTP request body, in bytes; larger ones are answered 413."
    ),
    key!(
        "gateway",
        "timeout_ms",
        Kind::Int {
            min: 1,
            max: HOUR_MS
        },
        DefaultValue::Int(30_000),
        false,
        "A call's deadline when the request states none (header Polycall-Timeout-Ms), in milliseconds."
    ),
    key!(
        "gateway",
        "routes",
        Kind::Path,
        DefaultValue::None,
        false,
        "TOML file of routes (path templates and HTTP methods mapped onto calls, with transformation and status mapping), API versions (deprecation, sunset) and API keys with rate limits and quotas (see docs/gateway.md)."
    ),
    key!(
        "observe",
        "metrics",
        Kind::Bool,
        DefaultValue::Bool(true),
        false,
        "Count, time and trace every call (per-method metrics, anomaly detection, outlier ejection)."
    ),
    key!(
        "observe",
        "otlp_endpoint",
        Kind::Text,
        DefaultValue::None,
        false,
        "Send call spans to this OTLP/gRPC collector (http://HOST:4317). Unset: spans are not recorded (trace context still propagates)."
    ),
    key!(
        "observe",
        "trace_sample_percent",
        Kind::Int { min: 0, max: 100 },
        DefaultValue::Int(1),
        false,
        "Percent of the traces the runtime starts itself that are recorded; callers' sampled traces always are."
    ),
    key!(
        "observe",
        "service_name",
        Kind::Text,
        DefaultValue::Str("polycall-runtime"),
        false,
        "The OpenTelemetry service.name of the runtime's spans."
    ),
    key!(
        "cluster",
        "node_id",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::None,
        false,
        "This runtime's node id in a raft cluster (with `cluster.members`). Unset: a single node."
    ),
    key!(
        "cluster",
        "members",
        Kind::Text,
        DefaultValue::None,
        false,
        "The voters the cluster forms with: \"1=HOST:PORT,2=HOST:PORT,3=HOST:PORT\" (each node's call endpoint, this one included)."
    ),
    key!(
        "cluster",
        "data_file",
        Kind::Path,
        DefaultValue::None,
        false,
        "The raft log and replicated state (default: <state dir>/cluster.redb)."
    ),
    key!(
        "cluster",
        "heartbeat_ms",
        Kind::Int {
            min: 10,
            max: 60_000
        },
        DefaultValue::Int(100),
        false,
        "How often the leader heartbeats its followers."
    ),
    key!(
        "cluster",
        "election_timeout_ms",
        Kind::Int {
            min: 50,
            max: 600_000
        },
        DefaultValue::Int(500),
        false,
        "A follower that hears no leader for between this and twice this stands for election; keep it several heartbeats long."
    ),
    key!(
        "cluster",
        "snapshot_every",
        Kind::Int { min: 1, max: U32 },
        DefaultValue::Int(5000),
        false,
        "Snapshot the replicated state after this many log entries; a node further behind than the kept log catches up from the snapshot."
    ),
    key!(
        "cluster",
        "peer_identities",
        Kind::Text,
        DefaultValue::None,
        false,
        "Who may call the raft methods: comma-separated principal patterns of the nodes' certificates (spiffe://DOMAIN/PATH or dns:NAME, `*` globs). Required off loopback."
    ),
    key!(
        "discovery",
        "registry",
        Kind::Text,
        DefaultValue::None,
        false,
        "Find other runtimes and forward calls for methods served elsewhere: static:HOST:PORT,HOST:PORT (seed runtimes), etcd:http://HOST:PORT,... (registered under a lease) or dns:SRV-NAME[@IP:PORT] (the targets of an SRV record). Unset: alone."
    ),
    key!(
        "discovery",
        "name",
        Kind::Text,
        DefaultValue::None,
        false,
        "This runtime's name in the registry (default: its advertised endpoint)."
    ),
    key!(
        "discovery",
        "advertise",
        Kind::Endpoint,
        DefaultValue::None,
        false,
        "The endpoint other runtimes dial (default: the endpoint this runtime listens on)."
    ),
    key!(
        "discovery",
        "prefix",
        Kind::Text,
        DefaultValue::Str("/polycall"),
        false,
        "etcd key prefix: entries live under PREFIX/runtimes/NAME."
    ),
    key!(
        "discovery",
        "ttl_s",
        Kind::Int { min: 2, max: 3600 },
        DefaultValue::Int(10),
        false,
        "How long an etcd registration outlives a runtime that stopped renewing it, in seconds."
    ),
    key!(
        "discovery",
        "refresh_ms",
        Kind::Int {
            min: 100,
            max: HOUR_MS
        },
        DefaultValue::Int(1000),
        false,
        "How often the registry is read and every known runtime checked, in milliseconds."
    ),
];

/// The definition of `section.name`.
pub fn key(section: &str, name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The definition of `section.name` written as one string.
pub fn key_path(path: &str) -> Option<&'static KeyDef> {
    let (s, n) = path.split_once('.')?;
    key(s, n)
}
