//! # polycall-config
//!
//! `polycall.toml`: the runtime's configuration file, apart from the runtime that
//! runs it (the runtime turns a [`LoadedConfig`] into its settings).
//!
//! A typed, versioned schema ([`schema::KEYS`], `version = 1`), loaded in layers —
//! defaults < file < environment (`POLYCALL_SECTION__KEY`) < `--set section.key=value` —
//! where every effective value remembers its [`Origin`]. Loading reports every mistake at
//! once, each with `file:line:column` and, for a misspelt key, a suggestion.
//! [`migrate`] turns libpolycall's configuration files (and older `polycall.toml`
//! versions) into a version-1 file.
//!
//! ```
//! use polycall_config::Config;
//! let dir = std::env::temp_dir().join(format!("polycall-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("polycall.toml");
//! std::fs::write(&path, "version = 1\n[qos]\nmax_concurrency = 64\n").unwrap();
//! let env = [("POLYCALL_QOS__MAX_CONCURRENCY".to_string(), "8".to_string())];
//! let loaded = Config::load(Some(&path), &env, &["runtime.endpoint=127.0.0.1:0".into()]).unwrap();
//! assert_eq!(loaded.config.qos.max_concurrency, Some(8));
//! assert_eq!(loaded.entry("qos.max_concurrency").unwrap().origin.to_string(),
//!            "env POLYCALL_QOS__MAX_CONCURRENCY");
//! assert_eq!(loaded.config.runtime.endpoint, "127.0.0.1:0");
//! ```

pub mod auth_file;
mod load;
pub mod migrate;
pub mod schema;
mod suggest;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::{CURRENT_VERSION, KeyDef, Kind};

/// One effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A whole number (sizes in bytes, durations in milliseconds).
    Int(u64),
    /// A boolean.
    Bool(bool),
    /// A string (paths, endpoints, words).
    Str(String),
}

impl fmt::Display for Value {
    /// TOML syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(&toml_string(s)),
        }
    }
}

impl Value {
    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(n) => (*n).into(),
            Value::Bool(b) => (*b).into(),
            Value::Str(s) => s.clone().into(),
        }
    }
}

/// A basic TOML string literal.
pub(crate) fn toml_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Where a value (or a mistake) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The schema's default.
    Default,
    /// A file; `line` 0 means the whole file. Lines and columns count from 1.
    File {
        /// The file.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Column (in characters).
        column: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        name: String,
    },
    /// A `--set section.key=value` argument.
    Set {
        /// The argument as given.
        arg: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line: 0, .. } => write!(f, "{}", path.display()),
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Origin::Env { name } => write!(f, "env {name}"),
            Origin::Set { arg } => write!(f, "--set {arg}"),
        }
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// Worth knowing; the configuration is usable.
    Warning,
}

/// A mistake (or a warning) found while loading, validating or migrating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where: `file:line:column`, an environment variable, or a `--set` argument.
    pub origin: Origin,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn error(origin: Origin, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            origin,
            message: message.into(),
        }
    }

    pub(crate) fn warning(origin: Origin, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            origin,
            message: message.into(),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The diagnostic as JSON: `{"severity", "location", "line", "column", "message"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (line, column) = match &self.origin {
            Origin::File { line, column, .. } if *line > 0 => (Some(*line), Some(*column)),
            _ => (None, None),
        };
        serde_json::json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Warning => "warning" },
            "location": self.origin.to_string(),
            "line": line,
            "column": column,
            "message": self.message,
        })
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.origin, self.message)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line, with the call's `trace_id` and `span_id`.
    Json,
    /// libpolycall's telemetry line shape.
    Telemetry,
}

/// Whether TLS clients present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    Off,
    /// Asked for, not required.
    Optional,
    /// Required.
    Required,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeSection {
    /// `endpoint`.
    pub endpoint: String,
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// `max_connections`.
    pub max_connections: usize,
    /// `worker_threads` (0: one per core).
    pub worker_threads: usize,
    /// `drain_timeout_ms`.
    pub drain_timeout_ms: u64,
    /// `debug_methods`.
    pub debug_methods: bool,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitsSection {
    /// `max_frame`, bytes.
    pub max_frame: u32,
    /// `max_message`, bytes.
    pub max_message: u32,
    /// `max_in_flight`.
    pub max_in_flight: u32,
    /// `initial_window`, bytes.
    pub initial_window: u32,
    /// `handshake_timeout_ms`.
    pub handshake_timeout_ms: u64,
    /// `frame_timeout_ms`.
    pub frame_timeout_ms: u64,
    /// `write_stall_timeout_ms`.
    pub write_stall_timeout_ms: u64,
    /// `max_concurrent_handlers`.
    pub max_concurrent_handlers: usize,
}

/// `[qos]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QosSection {
    /// `rate_limit_per_second` (unset: no rate limit).
    pub rate_limit_per_second: Option<u32>,
    /// `rate_limit_burst` (unset: the rate).
    pub rate_limit_burst: Option<u32>,
    /// `max_concurrency` (unset: no limit).
    pub max_concurrency: Option<usize>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSection {
    /// `level`: error, warn, info, debug or trace.
    pub level: String,
    /// `format`.
    pub format: LogFormat,
}

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminSection {
    /// `listen` (unset: no admin listener).
    pub listen: Option<String>,
}

/// `[gateway]`: the HTTP/JSON gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewaySection {
    /// `listen` (unset: no gateway).
    pub listen: Option<String>,
    /// `max_body`, in bytes.
    pub max_body: u64,
    /// `timeout_ms`.
    pub timeout_ms: u64,
    /// `routes`: the routes file (routes, API versions, API keys; docs/gateway.md).
    pub routes: Option<std::path::PathBuf>,
}

/// `[observe]`: metrics and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObserveSection {
    /// `metrics`.
    pub metrics: bool,
    /// `otlp_endpoint`.
    pub otlp_endpoint: Option<String>,
    /// `trace_sample_percent`.
    pub trace_sample_percent: u64,
    /// `service_name`.
    pub service_name: String,
}

/// `[cluster]`: membership of a raft cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterSection {
    /// `node_id` (unset: a single node).
    pub node_id: Option<u64>,
    /// `members`: `1=HOST:PORT,2=HOST:PORT,…`.
    pub members: Option<String>,
    /// `data_file`.
    pub data_file: Option<PathBuf>,
    /// `heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `election_timeout_ms`.
    pub election_timeout_ms: u64,
    /// `snapshot_every`.
    pub snapshot_every: u64,
    /// `peer_identities`, split at commas.
    pub peer_identities: Vec<String>,
}

/// Where runtimes find each other (`discovery.registry`, `polycall run --discover`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryRegistry {
    /// These runtime endpoints (`HOST:PORT`), asked directly.
    Seeds(Vec<String>),
    /// An etcd cluster: its members' `http://HOST:PORT`, comma-separated, and the key
    /// prefix.
    Etcd {
        /// `http://HOST:PORT,…`.
        endpoints: String,
        /// Keys live under `{prefix}/runtimes/`.
        prefix: String,
    },
    /// The targets of a DNS SRV record.
    DnsSrv {
        /// The SRV name, `_polycall._tcp.example.org`.
        name: String,
        /// The DNS server to ask, `IP:PORT` (default: the system's first).
        server: Option<String>,
    },
}

impl DiscoveryRegistry {
    /// Parses `static:HOST:PORT,HOST:PORT`, `etcd:http://HOST:PORT,…` or
    /// `dns:_polycall._tcp.example.org[@IP:PORT]`.
    ///
    /// ```
    /// use polycall_config::DiscoveryRegistry;
    /// assert_eq!(
    ///     DiscoveryRegistry::parse("static:127.0.0.1:7001,127.0.0.1:7002").unwrap(),
    ///     DiscoveryRegistry::Seeds(vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()])
    /// );
    /// assert!(DiscoveryRegistry::parse("etcd:http://127.0.0.1:2379").is_ok());
    /// assert!(DiscoveryRegistry::parse("etcd:127.0.0.1:2379").is_err());
    /// assert!(DiscoveryRegistry::parse("dns:_polycall._tcp.example.org@127.0.0.1:53").is_ok());
    /// assert!(DiscoveryRegistry::parse("dns:_polycall._tcp.example.org@nowhere").is_err());
    /// assert!(DiscoveryRegistry::parse("zookeeper:x").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        Self::parse_inner(text).map_err(RegistryError)
    }

    fn parse_inner(text: &str) -> Result<Self, String> {
        let list = |t: &str| -> Vec<String> {
            t.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        match text.split_once(':') {
            Some(("static", seeds)) => {
                let seeds = list(seeds);
                for s in &seeds {
                    s.parse::<polycall_core::Endpoint>()
                        .map_err(|e| format!("seed {s:?}: {e}"))?;
                }
                if seeds.is_empty() {
                    return Err("`static:` lists no seed: static:HOST:PORT,HOST:PORT".into());
                }
                Ok(Self::Seeds(seeds))
            }
            Some(("etcd", endpoints)) => {
                let all = list(endpoints);
                if all.is_empty() || all.iter().any(|e| !e.starts_with("http://")) {
                    return Err(
                        "etcd members are http://HOST:PORT URLs, comma-separated: etcd:http://127.0.0.1:2379"
                            .into(),
                    );
                }
                Ok(Self::Etcd {
                    endpoints: all.join(","),
                    prefix: "/polycall".into(),
                })
            }
            Some(("dns", srv)) => {
                let (name, server) = match srv.split_once('@') {
                    Some((n, s)) => {
                        s.parse::<std::net::SocketAddr>().map_err(|e| {
                            format!("the DNS server {s:?}: {e} (an IP:PORT, 127.0.0.1:53)")
                        })?;
                        (n.trim(), Some(s.to_owned()))
                    }
                    None => (srv.trim(), None),
                };
                if name.is_empty() || name.split('.').any(str::is_empty) {
                    return Err(format!(
                        "{name:?} is not an SRV name (dns:_polycall._tcp.example.org)"
                    ));
                }
                Ok(Self::DnsSrv {
                    name: name.to_owned(),
                    server,
                })
            }
            _ => Err(format!(
                "registry {text:?} is not static:HOST:PORT,…, etcd:http://HOST:PORT,… or dns:SRV-NAME[@IP:PORT]"
            )),
        }
    }
}

impl std::str::FromStr for DiscoveryRegistry {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, RegistryError> {
        Self::parse(s)
    }
}

/// Why a discovery registry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(String);

/// `[discovery]`: runtimes that find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoverySection {
    /// `registry` (unset: no discovery).
    pub registry: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `advertise`.
    pub advertise: Option<String>,
    /// `prefix` (etcd keys).
    pub prefix: String,
    /// `ttl_s`.
    pub ttl_s: u64,
    /// `refresh_ms`.
    pub refresh_ms: u64,
}

/// Parses a cluster's members, `1=HOST:PORT,2=HOST:PORT,…` (ids from 1, each once).
///
/// ```
/// let m = polycall_config::cluster_members("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
/// assert_eq!(m[&2], "127.0.0.1:7002");
/// assert!(polycall_config::cluster_members("1=a:1,1=b:2").is_err());
/// assert!(polycall_config::cluster_members("0=a:1").is_err());
/// ```
pub fn cluster_members(
    text: &str,
) -> Result<std::collections::BTreeMap<u64, String>, MembersError> {
    cluster_members_inner(text).map_err(MembersError)
}

/// Why a cluster's members (`1=HOST:PORT,…`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersError(String);

impl std::fmt::Display for MembersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MembersError {}

fn cluster_members_inner(text: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut members = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: a member is ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the node id is a number"))?;
        if id == 0 {
            return Err(format!("`{part}`: node ids start at 1"));
        }
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!("`{part}`: the address is HOST:PORT"));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no members: give ID=HOST:PORT,…".into());
    }
    Ok(members)
}

/// `[compat]`: libpolycall compatibility.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompatSection {
    /// `pcr1`.
    pub pcr1: bool,
    /// `legacy_v1`.
    pub legacy_v1: bool,
    /// `fixtures`.
    pub fixtures: bool,
    /// `when_secured`.
    pub when_secured: bool,
}

/// `[state]`: state machines.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateSection {
    /// `machine_dir`.
    pub machine_dir: Option<PathBuf>,
    /// `database`.
    pub database: Option<PathBuf>,
    /// `batch_window_ms`.
    pub batch_window_ms: u64,
    /// `keep_snapshots`.
    pub keep_snapshots: u64,
    /// `backup_every_s`.
    pub backup_every_s: Option<u64>,
    /// `backup_keep`.
    pub backup_keep: u64,
    /// `backup_dir`.
    pub backup_dir: Option<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSection {
    /// `enabled`.
    pub enabled: bool,
    /// `cert_file`, resolved against the configuration file's directory.
    pub cert_file: Option<PathBuf>,
    /// `key_file`, resolved likewise.
    pub key_file: Option<PathBuf>,
    /// `ca_file`, resolved likewise.
    pub ca_file: Option<PathBuf>,
    /// `client_auth`.
    pub client_auth: ClientAuth,
    /// `crl_file`, resolved likewise.
    pub crl_file: Option<PathBuf>,
    /// `hsm_module`: the private key lives in this PKCS#11 module's token.
    pub hsm_module: Option<PathBuf>,
    /// `hsm_token`.
    pub hsm_token: Option<String>,
    /// `hsm_key`.
    pub hsm_key: Option<String>,
    /// `hsm_pin_env`.
    pub hsm_pin_env: String,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthSection {
    /// `anonymous`.
    pub anonymous: bool,
    /// `certificate`.
    pub certificate: bool,
    /// `file`: tokens, roles and rules.
    pub file: Option<PathBuf>,
    /// `users_file`: OPAQUE users.
    pub users_file: Option<PathBuf>,
}

/// A validated `polycall.toml` (version 1), every value filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// `version`: always [`CURRENT_VERSION`] once loaded.
    pub version: u64,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[qos]`.
    pub qos: QosSection,
    /// `[log]`.
    pub log: LogSection,
    /// `[admin]`.
    pub admin: AdminSection,
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[discovery]`.
    pub discovery: DiscoverySection,
    /// `[observe]`.
    pub observe: ObserveSection,
    /// `[compat]`.
    pub compat: CompatSection,
    /// `[state]`.
    pub state: StateSection,
    /// `[tls]`.
    pub tls: TlsSection,
    /// `[auth]`.
    pub auth: AuthSection,
}

/// An effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value (`None`: unset, the feature is off).
    pub value: Option<Value>,
    /// Its origin.
    pub origin: Origin,
}

/// The result of [`Config::load`]: the typed configuration, each key's effective value
/// with its origin, and the warnings.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The typed configuration.
    pub config: Config,
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// Warnings (the configuration is usable).
    pub warnings: Vec<Diagnostic>,
    /// One entry per key of [`schema::KEYS`], in that order.
    entries: Vec<(&'static KeyDef, Entry)>,
}

/// One key whose effective value differs between two loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// `section.key`.
    pub key: String,
    /// The value before (`None`: unset).
    pub old: Option<Value>,
    /// The value after.
    pub new: Option<Value>,
    /// Where the new value comes from.
    pub origin: Origin,
}

/// What changed between two loads, split by whether a running runtime can apply it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Changes a running runtime can apply (keys marked reloadable in the schema).
    pub reloadable: Vec<KeyChange>,
    /// Changes that take effect only after a restart.
    pub restart_required: Vec<KeyChange>,
}

impl ConfigDiff {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.reloadable.is_empty() && self.restart_required.is_empty()
    }
}

impl Config {
    /// Loads `path` (or only defaults when `None`) with the environment `env` (only
    /// `POLYCALL_SECTION__KEY` variables are read; pass `std::env::vars()` collected, or
    /// [`Config::process_env`]) and `--set section.key=value` arguments, in that order of
    /// precedence (later wins). All mistakes are reported together; the `Err` also holds
    /// the warnings.
    pub fn load(
        path: Option<&Path>,
        env: &[(String, String)],
        sets: &[String],
    ) -> Result<LoadedConfig, Vec<Diagnostic>> {
        load::load(path, env, sets)
    }

    /// Like [`Config::load`], from text already read; `path` names it in messages and
    /// anchors relative TLS paths.
    pub fn load_str(
        text: &str,
        path: &Path,
        env: &[(String, String)],
        sets: &[String],
    ) -> Result<LoadedConfig, Vec<Diagnostic>> {
        load::load_text(Some((text, path)), env, sets)
    }

    /// The process's `POLYCALL_*__*` environment variables.
    pub fn process_env() -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(load::ENV_PREFIX) && k.contains("__"))
            .collect()
    }
}

impl LoadedConfig {
    /// Every key with its effective value and origin, in schema order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static KeyDef, &Entry)> {
        self.entries.iter().map(|(d, e)| (*d, e))
    }

    /// The effective value of `section.key`.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|(d, _)| d.path() == key)
            .map(|(_, e)| e)
    }

    /// What differs from `self` (before) to `new` (after), split into changes a running
    /// runtime can apply and changes that need a restart.
    pub fn diff(&self, new: &LoadedConfig) -> ConfigDiff {
        let mut d = ConfigDiff::default();
        for ((def, a), (_, b)) in self.entries.iter().zip(new.entries.iter()) {
            if a.value != b.value {
                let c = KeyChange {
                    key: def.path(),
                    old: a.value.clone(),
                    new: b.value.clone(),
                    origin: b.origin.clone(),
                };
                if def.reloadable {
                    d.reloadable.push(c);
                } else {
                    d.restart_required.push(c);
                }
            }
        }
        d
    }

    /// `[log] level`, as an env-filter directive.
    pub fn log_level(&self) -> &str {
        &self.config.log.level
    }

    /// `[log] format`.
    pub fn log_format(&self) -> LogFormat {
        self.config.log.format
    }
}
