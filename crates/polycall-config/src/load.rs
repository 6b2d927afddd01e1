//! Reading `polycall.toml`, the environment and `--set` into effective values.

use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::schema::{self, CURRENT_VERSION, DefaultValue, KEYS, KeyDef, Kind, SECTIONS};
use super::suggest;
use super::{
    AdminSection, AuthSection, ClientAuth, ClusterSection, CompatSection, Config, Diagnostic,
    DiscoverySection, Entry, GatewaySection, LimitsSection, LoadedConfig, LogFormat, LogSection,
    ObserveSection, Origin, QosSection, RuntimeSection, StateSection, TlsSection, Value,
};

/// Environment variables read: `POLYCALL_SECTION__KEY`.
pub(crate) const ENV_PREFIX: &str = "POLYCALL_";

/// Line and column (from 1; columns in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

pub(crate) fn at(path: &Path, text: &str, offset: usize) -> Origin {
    let (line, column) = line_col(text, offset);
    Origin::File {
        path: path.to_owned(),
        line,
        column,
    }
}

pub(crate) fn load(
    path: Option<&Path>,
    env: &[(String, String)],
    sets: &[String],
) -> Result<LoadedConfig, Vec<Diagnostic>> {
    match path {
        None => load_text(None, env, sets),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => load_text(Some((&text, p)), env, sets),
            Err(e) => Err(vec![Diagnostic::error(
                Origin::File {
                    path: p.to_owned(),
                    line: 0,
                    column: 0,
                },
                format!("cannot read the configuration file: {e}"),
            )]),
        },
    }
}

struct Loader {
    values: Vec<(&'static KeyDef, Entry)>,
    diags: Vec<Diagnostic>,
    /// Keys with a mistake (left at their default): checks across keys skip them.
    bad: Vec<String>,
}

impl Loader {
    fn set(&mut self, def: &'static KeyDef, value: Value, origin: Origin) {
        if let Some((_, e)) = self
            .values
            .iter_mut()
            .find(|(d, _)| d.section == def.section && d.name == def.name)
        {
            *e = Entry {
                value: Some(value),
                origin,
            };
        }
    }
}

/// Checks a value against its kind's range.
fn check(def: &KeyDef, v: Value) -> Result<Value, String> {
    match (def.kind, &v) {
        (Kind::Int { min, max } | Kind::Size { min, max }, Value::Int(n)) => {
            if *n < min {
                Err(format!("`{}` = {n} is below the minimum {min}", def.path()))
            } else if *n > max {
                Err(format!("`{}` = {n} is above the maximum {max}", def.path()))
            } else {
                Ok(v)
            }
        }
        (Kind::Enum(words), Value::Str(s)) => {
            if words.contains(&s.as_str()) {
                Ok(v)
            } else {
                Err(format!(
                    "`{}` = \"{s}\" is not one of {}{}",
                    def.path(),
                    words.join(", "),
                    suggest::hint(s, words.iter().copied())
                ))
            }
        }
        (Kind::Path, Value::Str(s)) if s.is_empty() => {
            Err(format!("`{}` is an empty path", def.path()))
        }
        (Kind::Text, Value::Str(s)) if s.is_empty() => {
            Err(format!("`{}` is an empty string", def.path()))
        }
        (Kind::Endpoint, Value::Str(s)) => match s.parse::<polycall_core::Endpoint>() {
            Ok(_) => Ok(v),
            Err(e) => Err(format!("`{}`: {e}", def.path())),
        },
        _ => Ok(v),
    }
}

/// Parses a size: a number of bytes with an optional binary suffix.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.replace('_', "").parse().ok()?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A TOML value as the key's kind.
fn from_toml(def: &KeyDef, v: &DeValue<'_>) -> Result<Value, String> {
    let want = || {
        format!(
            "`{}` must be {}, not a {}",
            def.path(),
            def.kind.describe(),
            v.type_str()
        )
    };
    let v = match (def.kind, v) {
        (Kind::Int { .. } | Kind::Size { .. }, DeValue::Integer(i)) => {
            match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n < 0 => {
                    return Err(format!("`{}` = {n} must not be negative", def.path()));
                }
                Ok(n) => Value::Int(u64::try_from(n).unwrap_or(u64::MAX)),
                Err(_) => return Err(want()),
            }
        }
        (Kind::Size { .. }, DeValue::String(s)) => match parse_size(s) {
            Some(n) => Value::Int(n),
            None => {
                return Err(format!(
                    "`{}` = \"{s}\" is not a size (write bytes, or a number with K, M or G)",
                    def.path()
                ));
            }
        },
        (Kind::Bool, DeValue::Boolean(b)) => Value::Bool(*b),
        (Kind::Path | Kind::Endpoint | Kind::Enum(_) | Kind::Text, DeValue::String(s)) => {
            Value::Str(s.to_string())
        }
        _ => return Err(want()),
    };
    check(def, v)
}

/// A string (environment variable or `--set`) as the key's kind.
pub(crate) fn from_str(def: &KeyDef, s: &str) -> Result<Value, String> {
    let s = s.trim();
    let unquoted = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    let v = match def.kind {
        Kind::Int { .. } => match unquoted.replace('_', "").parse::<u64>() {
            Ok(n) => Value::Int(n),
            Err(_) => {
                return Err(format!(
                    "`{}` must be {}, not `{s}`",
                    def.path(),
                    def.kind.describe()
                ));
            }
        },
        Kind::Size { .. } => match parse_size(unquoted) {
            Some(n) => Value::Int(n),
            None => return Err(format!("`{}` = `{s}` is not a size", def.path())),
        },
        Kind::Bool => match unquoted {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(format!(
                    "`{}` must be exactly true or false, not `{s}`",
                    def.path()
                ));
            }
        },
        Kind::Path | Kind::Endpoint | Kind::Enum(_) | Kind::Text => Value::Str(unquoted.to_owned()),
    };
    check(def, v)
}

fn all_key_paths() -> impl Iterator<Item = String> {
    KEYS.iter().map(KeyDef::path)
}

/// "did you mean" for a key name found in `section` (or at the top when `None`).
fn key_hint(section: Option<&str>, name: &str) -> String {
    if let Some(s) = section {
        let same: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.section == s)
            .map(|k| k.name)
            .collect();
        if let Some(c) = suggest::closest(name, same.iter().copied()) {
            return format!("; did you mean `{c}`?");
        }
    }
    // The right key in the wrong place?
    if let Some(k) = KEYS.iter().find(|k| k.name == name) {
        return format!("; did you mean `{}` (in [{}])?", k.path(), k.section);
    }
    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    if let Some(c) = suggest::closest(name, names.iter().copied())
        && let Some(k) = KEYS.iter().find(|k| k.name == c)
    {
        return format!("; did you mean `{}` (in [{}])?", k.path(), k.section);
    }
    String::new()
}

pub(crate) fn load_text(
    file: Option<(&str, &Path)>,
    env: &[(String, String)],
    sets: &[String],
) -> Result<LoadedConfig, Vec<Diagnostic>> {
    let mut l = Loader {
        values: KEYS
            .iter()
            .map(|d| {
                let value = match d.default {
                    DefaultValue::None => None,
                    DefaultValue::Int(n) => Some(Value::Int(n)),
                    DefaultValue::Bool(b) => Some(Value::Bool(b)),
                    DefaultValue::Str(s) => Some(Value::Str(s.to_owned())),
                };
                (
                    d,
                    Entry {
                        value,
                        origin: Origin::Default,
                    },
                )
            })
            .collect(),
        diags: Vec::new(),
        bad: Vec::new(),
    };
    if let Some((text, path)) = file {
        read_file(&mut l, text, path);
    }
    read_env(&mut l, env);
    read_sets(&mut l, sets);
    let stop = l.diags.iter().any(|d| {
        d.is_error() && (d.message.starts_with("no `version`") || d.message.starts_with("version "))
    });
    if stop {
        return Err(sorted(l.diags));
    }
    let base = file
        .and_then(|(_, p)| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config = typed(&l.values, &base);
    for (keys, d) in super::validate::cross_check(&config, &l.values) {
        if !keys.iter().any(|k| l.bad.iter().any(|b| b == k)) {
            l.diags.push(d);
        }
    }
    let diags = sorted(l.diags);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok(LoadedConfig {
        config,
        path: file.map(|(_, p)| p.to_owned()),
        warnings: diags,
        entries: l.values,
    })
}

/// File diagnostics by position first, then environment, then `--set`.
fn sorted(mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    fn rank(o: &Origin) -> (u8, usize, usize) {
        match o {
            Origin::File { line, column, .. } => (0, *line, *column),
            Origin::Env { .. } => (1, 0, 0),
            Origin::Set { .. } => (2, 0, 0),
            Origin::Default => (3, 0, 0),
        }
    }
    d.sort_by_key(|x| rank(&x.origin));
    d
}

fn read_file(l: &mut Loader, text: &str, path: &Path) {
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let origin = match e.span() {
            Some(s) => at(path, text, s.start),
            None => at(path, text, 0),
        };
        let msg = e.message().trim().to_owned();
        l.diags
            .push(Diagnostic::error(origin, format!("TOML syntax: {msg}")));
    }
    let doc = doc.into_inner();
    // The version first: the rest means something only in a version this build reads.
    match doc.get("version") {
        None => {
            l.diags.push(Diagnostic::error(
                at(path, text, 0),
                format!(
                    "no `version`: add `version = {CURRENT_VERSION}` at the top (a file without one is a version-0 file: `polycall config migrate {}` updates it)",
                    path.display()
                ),
            ));
            return;
        }
        Some(v) => {
            let o = at(path, text, v.span().start);
            let n = match v.get_ref() {
                DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
                _ => None,
            };
            match n {
                Some(n) if n == i128::from(CURRENT_VERSION) => {}
                Some(n) if (0..i128::from(CURRENT_VERSION)).contains(&n) => {
                    l.diags.push(Diagnostic::error(
                        o,
                        format!(
                            "version {n} is older than this build reads ({CURRENT_VERSION}): `polycall config migrate {}` updates it",
                            path.display()
                        ),
                    ));
                    return;
                }
                Some(n) => {
                    l.diags.push(Diagnostic::error(
                        o,
                        format!(
                            "version {n} is not one this build reads (it reads {CURRENT_VERSION}); is the file meant for a newer polycall?"
                        ),
                    ));
                    return;
                }
                None => {
                    l.diags.push(Diagnostic::error(
                        o,
                        format!("`version` must be the integer {CURRENT_VERSION}"),
                    ));
                    return;
                }
            }
        }
    }
    for (k, v) in doc.iter() {
        let name: &str = k.get_ref();
        if name == "version" {
            continue;
        }
        let ko = at(path, text, k.span().start);
        if !SECTIONS.contains(&name) {
            let mut hint = suggest::hint(name, SECTIONS.iter().copied());
            if hint.is_empty() {
                hint = key_hint(None, name);
            }
            l.diags.push(Diagnostic::error(
                ko,
                format!(
                    "unknown {} `{name}`{hint}",
                    if v.get_ref().is_table() {
                        "section"
                    } else {
                        "key"
                    }
                ),
            ));
            continue;
        }
        let DeValue::Table(t) = v.get_ref() else {
            l.diags.push(Diagnostic::error(
                ko,
                format!(
                    "`{name}` must be a table (`[{name}]`), not a {}",
                    v.get_ref().type_str()
                ),
            ));
            continue;
        };
        read_section(l, text, path, name, t);
    }
}

fn read_section(l: &mut Loader, text: &str, path: &Path, section: &str, t: &DeTable<'_>) {
    for (k, v) in t.iter() {
        let name: &str = k.get_ref();
        let ko = at(path, text, k.span().start);
        let Some(def) = schema::key(section, name) else {
            l.diags.push(Diagnostic::error(
                ko,
                format!(
                    "unknown key `{name}` in [{section}]{}",
                    key_hint(Some(section), name)
                ),
            ));
            continue;
        };
        match value_of(def, v) {
            Ok(value) => l.set(def, value, ko),
            Err(m) => {
                l.bad.push(def.path());
                l.diags
                    .push(Diagnostic::error(at(path, text, v.span().start), m));
            }
        }
    }
}

fn value_of(def: &KeyDef, v: &Spanned<DeValue<'_>>) -> Result<Value, String> {
    from_toml(def, v.get_ref())
}

fn read_env(l: &mut Loader, env: &[(String, String)]) {
    let mut env: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    env.sort();
    for (name, value) in env {
        let origin = Origin::Env { name: name.clone() };
        let rest = &name[ENV_PREFIX.len()..];
        let Some((s, k)) = rest.split_once("__") else {
            continue;
        };
        let (s, k) = (s.to_ascii_lowercase(), k.to_ascii_lowercase());
        let Some(def) = schema::key(&s, &k) else {
            let guess = suggest::closest(&format!("{s}.{k}"), all_paths_static());
            let hint = guess
                .map(|g| {
                    format!(
                        "; did you mean `{ENV_PREFIX}{}`?",
                        g.replace('.', "__").to_ascii_uppercase()
                    )
                })
                .unwrap_or_default();
            l.diags.push(Diagnostic::error(
                origin,
                format!("no configuration key `{s}.{k}`{hint}"),
            ));
            continue;
        };
        match from_str(def, value) {
            Ok(v) => l.set(def, v, origin),
            Err(m) => {
                l.bad.push(def.path());
                l.diags.push(Diagnostic::error(origin, m));
            }
        }
    }
}

fn all_paths_static() -> impl Iterator<Item = &'static str> {
    static PATHS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PATHS
        .get_or_init(|| all_key_paths().collect())
        .iter()
        .map(String::as_str)
}

fn read_sets(l: &mut Loader, sets: &[String]) {
    for arg in sets {
        let origin = Origin::Set { arg: arg.clone() };
        let Some((key, value)) = arg.split_once('=') else {
            l.diags.push(Diagnostic::error(
                origin,
                "expected `section.key=value`".to_owned(),
            ));
            continue;
        };
        let key = key.trim();
        let Some(def) = schema::key_path(key) else {
            let hint = suggest::hint(key, all_paths_static());
            l.diags.push(Diagnostic::error(
                origin,
                format!("no configuration key `{key}`{hint}"),
            ));
            continue;
        };
        match from_str(def, value) {
            Ok(v) => l.set(def, v, origin),
            Err(m) => {
                l.bad.push(def.path());
                l.diags.push(Diagnostic::error(origin, m));
            }
        }
    }
}

/// The typed configuration from checked values.
fn typed(values: &[(&'static KeyDef, Entry)], base: &Path) -> Config {
    let get = |p: &str| -> Option<&Value> {
        values
            .iter()
            .find(|(d, _)| d.path() == p)
            .and_then(|(_, e)| e.value.as_ref())
    };
    let int = |p: &str| match get(p) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let u32_ = |p: &str| int(p).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let boolean = |p: &str| matches!(get(p), Some(Value::Bool(true)));
    let string = |p: &str| match get(p) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let file = |p: &str| string(p).map(|s| resolve(base, &s));
    Config {
        version: CURRENT_VERSION,
        runtime: RuntimeSection {
            endpoint: string("runtime.endpoint").unwrap_or_default(),
            state_dir: PathBuf::from(string("runtime.state_dir").unwrap_or_default()),
            max_connections: int("runtime.max_connections").unwrap_or(1) as usize,
            worker_threads: int("runtime.worker_threads").unwrap_or(1) as usize,
            drain_timeout_ms: int("runtime.drain_timeout_ms").unwrap_or(0),
            debug_methods: boolean("runtime.debug_methods"),
        },
        limits: LimitsSection {
            max_frame: u32_("limits.max_frame"),
            max_message: u32_("limits.max_message"),
            max_in_flight: u32_("limits.max_in_flight"),
            initial_window: u32_("limits.initial_window"),
            handshake_timeout_ms: int("limits.handshake_timeout_ms").unwrap_or(1),
            frame_timeout_ms: int("limits.frame_timeout_ms").unwrap_or(1),
            write_stall_timeout_ms: int("limits.write_stall_timeout_ms").unwrap_or(1),
            max_concurrent_handlers: int("limits.max_concurrent_handlers").unwrap_or(1) as usize,
        },
        qos: QosSection {
            rate_limit_per_second: int("qos.rate_limit_per_second")
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            rate_limit_burst: int("qos.rate_limit_burst")
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            max_concurrency: int("qos.max_concurrency").map(|n| n as usize),
        },
        log: LogSection {
            level: string("log.level").unwrap_or_else(|| "info".into()),
            format: match string("log.format").as_deref() {
                Some("json") => LogFormat::Json,
                Some("telemetry") => LogFormat::Telemetry,
                _ => LogFormat::Text,
            },
        },
        admin: AdminSection {
            listen: string("admin.listen"),
        },
        gateway: GatewaySection {
            listen: string("gateway.listen"),
            max_body: int("gateway.max_body").unwrap_or(4 << 20),
            timeout_ms: int("gateway.timeout_ms").unwrap_or(30_000),
            routes: file("gateway.routes"),
        },
        discovery: DiscoverySection {
            registry: string("discovery.registry"),
            name: string("discovery.name"),
            advertise: string("discovery.advertise"),
            prefix: string("discovery.prefix").unwrap_or_else(|| "/polycall".into()),
            ttl_s: int("discovery.ttl_s").unwrap_or(10),
            refresh_ms: int("discovery.refresh_ms").unwrap_or(1000),
        },
        cluster: ClusterSection {
            node_id: int("cluster.node_id"),
            members: string("cluster.members"),
            data_file: file("cluster.data_file"),
            heartbeat_ms: int("cluster.heartbeat_ms").unwrap_or(100),
            election_timeout_ms: int("cluster.election_timeout_ms").unwrap_or(500),
            snapshot_every: int("cluster.snapshot_every").unwrap_or(5000),
            peer_identities: string("cluster.peer_identities")
                .map(|t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        },
        observe: ObserveSection {
            metrics: boolean("observe.metrics"),
            otlp_endpoint: string("observe.otlp_endpoint"),
            trace_sample_percent: int("observe.trace_sample_percent").unwrap_or(1),
            service_name: string("observe.service_name")
                .unwrap_or_else(|| "polycall-runtime".into()),
        },
        compat: CompatSection {
            pcr1: boolean("compat.pcr1"),
            legacy_v1: boolean("compat.legacy_v1"),
            fixtures: boolean("compat.fixtures"),
            when_secured: boolean("compat.when_secured"),
        },
        state: StateSection {
            machine_dir: file("state.machine_dir"),
            database: file("state.database"),
            batch_window_ms: int("state.batch_window_ms").unwrap_or(50),
            keep_snapshots: int("state.keep_snapshots").unwrap_or(16),
            backup_every_s: int("state.backup_every_s"),
            backup_keep: int("state.backup_keep").unwrap_or(7),
            backup_dir: file("state.backup_dir"),
        },
        tls: TlsSection {
            enabled: boolean("tls.enabled"),
            cert_file: file("tls.cert_file"),
            key_file: file("tls.key_file"),
            ca_file: file("tls.ca_file"),
            client_auth: match string("tls.client_auth").as_deref() {
                Some("optional") => ClientAuth::Optional,
                Some("required") => ClientAuth::Required,
                _ => ClientAuth::Off,
            },
            crl_file: file("tls.crl_file"),
            hsm_module: file("tls.hsm_module"),
            hsm_token: string("tls.hsm_token"),
            hsm_key: string("tls.hsm_key"),
            hsm_pin_env: string("tls.hsm_pin_env").unwrap_or_default(),
        },
        auth: AuthSection {
            anonymous: boolean("auth.anonymous"),
            certificate: boolean("auth.certificate"),
            file: file("auth.file"),
            users_file: file("auth.users_file"),
        },
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() || base.as_os_str().is_empty() {
        p
    } else {
        base.join(p)
    }
}
