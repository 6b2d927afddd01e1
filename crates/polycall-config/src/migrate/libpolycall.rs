//! From libpolycall's configuration files (`Polycallfile` / `config.Polycallfile`,
//! `Polycallrc`, `Polycallrc.<language>`, `.polycallrc`) to `polycall.toml` version 1
//! (the `libpolycall` cargo feature).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::load::parse_size;
use crate::schema::{self, CURRENT_VERSION, SECTIONS};
use crate::{Diagnostic, Origin, Value};

/// The part a libpolycall file plays in its layering (later wins: project → global →
/// language).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `.polycallrc`: legacy fallback, read only where there is no `Polycallrc`.
    Legacy,
    /// `Polycallfile` (or its older name `config.Polycallfile`).
    Project,
    /// `Polycallrc`.
    Global,
    /// `Polycallrc.<language>`.
    Language(String),
}

/// A libpolycall configuration file and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// Its role.
    pub role: Role,
}

/// The role a file name gives, if it is a libpolycall configuration file.
pub fn role_of(path: &Path) -> Option<Role> {
    let name = path.file_name()?.to_str()?;
    match name {
        "Polycallfile" | "config.Polycallfile" => Some(Role::Project),
        "Polycallrc" => Some(Role::Global),
        ".polycallrc" => Some(Role::Legacy),
        _ => name
            .strip_prefix("Polycallrc.")
            .filter(|l| !l.is_empty())
            .map(|l| Role::Language(l.to_owned())),
    }
}

/// The libpolycall files in `paths` (files as given, directories searched), in layering
/// order. Warnings say which files were passed over and why.
pub fn discover(paths: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let whole = |p: &Path| Origin::File {
        path: p.to_owned(),
        line: 0,
        column: 0,
    };
    for p in paths {
        if p.is_dir() {
            let Ok(rd) = std::fs::read_dir(p) else {
                errors.push(Diagnostic::error(whole(p), "cannot read the directory"));
                continue;
            };
            let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            for f in names {
                if f.is_file()
                    && let Some(role) = role_of(&f)
                {
                    files.push(SourceFile { path: f, role });
                }
            }
        } else if p.is_file() {
            match role_of(p) {
                Some(role) => files.push(SourceFile {
                    path: p.clone(),
                    role,
                }),
                None => errors.push(Diagnostic::error(
                    whole(p),
                    "not a libpolycall configuration file (Polycallfile, config.Polycallfile, Polycallrc, Polycallrc.<language>, .polycallrc) nor a polycall.toml (*.toml)",
                )),
            }
        } else {
            errors.push(Diagnostic::error(whole(p), "no such file or directory"));
        }
    }
    // Both names of the project file: the current one wins.
    let has_new_project = files.iter().any(|f| {
        f.role == Role::Project && f.path.file_name().is_some_and(|n| n == "Polycallfile")
    });
    let has_global = files.iter().any(|f| f.role == Role::Global);
    files.retain(|f| {
        if has_new_project
            && f.role == Role::Project
            && f.path.file_name().is_some_and(|n| n == "config.Polycallfile")
        {
            warnings.push(Diagnostic::warning(
                whole(&f.path),
                "not migrated: `Polycallfile` is beside it and wins over this older name (merge its keys into Polycallfile first if they matter)",
            ));
            return false;
        }
        if f.role == Role::Legacy && has_global {
            warnings.push(Diagnostic::warning(
                whole(&f.path),
                "not migrated: `.polycallrc` is a legacy fallback and `Polycallrc` is present (merge its keys into Polycallrc first if they matter)",
            ));
            return false;
        }
        if f.role == Role::Legacy {
            warnings.push(Diagnostic::warning(
                whole(&f.path),
                "`.polycallrc` is libpolycall's legacy fallback: read in place of Polycallrc; this migration replaces it",
            ));
        }
        true
    });
    files.sort_by(|a, b| a.role.cmp(&b.role).then(a.path.cmp(&b.path)));
    if files.is_empty() && errors.is_empty() {
        errors.push(Diagnostic::error(
            Origin::Default,
            "no libpolycall configuration file found (Polycallfile, config.Polycallfile, Polycallrc, Polycallrc.<language>, .polycallrc)",
        ));
    }
    if errors.is_empty() {
        Ok((files, warnings))
    } else {
        errors.extend(warnings);
        Err(errors)
    }
}

/// A key carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The libpolycall key.
    pub from: String,
    /// Where it was written.
    pub origin: Origin,
    /// The `polycall.toml` key (`section.key`).
    pub to: String,
    /// The value written.
    pub value: Value,
}

/// A line or key with no equivalent in `polycall.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// Where it was written (`file:line`).
    pub origin: Origin,
    /// The key (or `server`, `network`, `peer` for structural lines).
    pub key: String,
    /// The rest of the line.
    pub value: String,
    /// Why it has no equivalent.
    pub reason: String,
}

/// The outcome of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The files read, in layering order.
    pub sources: Vec<PathBuf>,
    /// The `polycall.toml` text (version 1).
    pub toml: String,
    /// Keys carried over (the effective ones; overridden ones are in `warnings`).
    pub mapped: Vec<Mapped>,
    /// Everything that could not be carried over.
    pub unmapped: Vec<Unmapped>,
    /// Worth knowing: legacy files, unknown keys, overridden values.
    pub warnings: Vec<Diagnostic>,
}

/// Keys of libpolycall's files, documented in its reference: those with a `polycall.toml`
/// equivalent are mapped, the others are reported with the reason below.
const UNMAPPABLE: &[(&[&str], &str)] = &[
    (
        &[
            "log_directory",
            "workspace_root",
            "workspace",
            "daemon_log_file",
        ],
        "polycall logs to stderr and has no workspace: redirect stderr where the logs should go",
    ),
    (
        &["auto_discover", "discovery_interval"],
        "no service-folder discovery: programs connect to the runtime and register their methods",
    ),
    (
        &[
            "max_memory_per_service",
            "max_cpu_per_service",
            "max_memory",
        ],
        "no resource limits per service: use the container's or the service manager's limits",
    ),
    (
        &["enable_metrics", "metrics_port"],
        "metrics arrive with polycall-observe",
    ),
    (
        &[
            "auth_token_env",
            "auth_required",
            "require_auth",
            "auth_method",
            "token_expiry",
        ],
        "authentication arrives with the security work",
    ),
    (
        &["peer_node_id", "peer_endpoint", "peer_inbox_capacity"],
        "peers arrive with replication",
    ),
    (
        &["port", "server_type"],
        "no per-language ports: programs in every language connect to runtime.endpoint and register",
    ),
    (
        &["timeout"],
        "callers give each call its deadline (`polycall call --timeout-ms`, Metadata deadline)",
    ),
    (
        &["allow_remote"],
        "choose runtime.endpoint explicitly (loopback by default; 0.0.0.0:PORT to accept remote peers)",
    ),
    (
        &["retry_interval", "reconnect_attempts"],
        "retries are a client setting (`polycall call --retries`, the retry layer)",
    ),
    (
        &["heartbeat_interval", "health_check_interval"],
        "no heartbeat setting: connections use handshake, frame and write-stall timeouts ([limits])",
    ),
    (
        &[
            "circuit_breaker_enabled",
            "failure_threshold",
            "circuit_reset_timeout",
        ],
        "the circuit breaker is a client layer (polycall-net breaker), not runtime configuration",
    ),
    (&["min_tls_version"], "polycall speaks TLS 1.3 only"),
];

const MAPPED_KEYS: &[&str] = &[
    "network_timeout",
    "max_connections",
    "daemon_endpoint",
    "daemon_state_dir",
    "daemon_max_connections",
    "daemon_drain_timeout_ms",
    "daemon_io_timeout_ms",
    "max_message_size",
    "rate_limit_requests",
    "tls_enabled",
    "cert_file",
    "key_file",
    "ca_file",
    "mutual_tls",
    "log_level",
    "log_format",
];

const BOOL_KEYS: &[&str] = &[
    "tls_enabled",
    "mutual_tls",
    "auto_discover",
    "enable_metrics",
    "allow_remote",
    "require_auth",
    "auth_required",
    "circuit_breaker_enabled",
];

fn unmappable_reason(key: &str) -> Option<&'static str> {
    UNMAPPABLE
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, r)| *r)
}

fn is_documented(key: &str) -> bool {
    MAPPED_KEYS.contains(&key) || unmappable_reason(key).is_some()
}

fn documented_keys() -> impl Iterator<Item = &'static str> {
    MAPPED_KEYS
        .iter()
        .copied()
        .chain(UNMAPPABLE.iter().flat_map(|(k, _)| k.iter().copied()))
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p >= 1)
}

/// What a libpolycall key becomes: `(polycall.toml key, value)` pairs, or why not.
fn map_key(key: &str, value: &str) -> Result<Vec<(&'static str, Value)>, String> {
    let int = |what: &str| {
        value
            .parse::<u64>()
            .map_err(|_| format!("`{key}` must be a whole number ({what}), not `{value}`"))
    };
    let b = || value == "true";
    let s = || Value::Str(value.to_owned());
    Ok(match key {
        "network_timeout" => vec![("limits.handshake_timeout_ms", Value::Int(int("ms")?))],
        "max_connections" | "daemon_max_connections" => {
            vec![("runtime.max_connections", Value::Int(int("connections")?))]
        }
        "daemon_endpoint" => vec![("runtime.endpoint", s())],
        "daemon_state_dir" => vec![("runtime.state_dir", s())],
        "daemon_drain_timeout_ms" => vec![("runtime.drain_timeout_ms", Value::Int(int("ms")?))],
        "daemon_io_timeout_ms" => {
            let n = int("ms")?;
            vec![
                ("limits.frame_timeout_ms", Value::Int(n)),
                ("limits.write_stall_timeout_ms", Value::Int(n)),
            ]
        }
        "max_message_size" => match parse_size(value) {
            Some(n) => vec![("limits.max_message", Value::Int(n))],
            None => return Err(format!("`{key}` = `{value}` is not a size (like 16M)")),
        },
        "rate_limit_requests" => {
            let (n, unit) = value.split_once('/').unwrap_or((value, "s"));
            let n: u64 = n
                .trim()
                .parse()
                .map_err(|_| format!("`{key}` = `{value}` is not a rate (like 100/s)"))?;
            let per_second = match unit.trim() {
                "s" | "sec" | "second" => n,
                "m" | "min" | "minute" => n.div_ceil(60),
                "h" | "hour" => n.div_ceil(3600),
                _ => {
                    return Err(format!(
                        "`{key}` = `{value}`: the unit must be /s, /m or /h"
                    ));
                }
            };
            vec![("qos.rate_limit_per_second", Value::Int(per_second.max(1)))]
        }
        "tls_enabled" => vec![("tls.enabled", Value::Bool(b()))],
        "cert_file" => vec![("tls.cert_file", s())],
        "key_file" => vec![("tls.key_file", s())],
        "ca_file" => vec![("tls.ca_file", s())],
        "mutual_tls" => vec![(
            "tls.client_auth",
            Value::Str(if b() { "required" } else { "off" }.into()),
        )],
        "log_level" => {
            let l = match value.to_ascii_lowercase().as_str() {
                "trace" => "trace",
                "debug" => "debug",
                "info" => "info",
                "warn" | "warning" => "warn",
                "error" | "fatal" | "critical" => "error",
                _ => {
                    return Err(format!(
                        "`log_level` = `{value}` is not a level polycall knows"
                    ));
                }
            };
            vec![("log.level", Value::Str(l.into()))]
        }
        "log_format" => match value.to_ascii_lowercase().as_str() {
            "text" | "plain" => vec![("log.format", Value::Str("text".into()))],
            "json" => vec![("log.format", Value::Str("json".into()))],
            _ => {
                return Err(format!(
                    "`log_format` = `{value}`: polycall writes text or json"
                ));
            }
        },
        _ => return Err(String::new()),
    })
}

/// Reads libpolycall files in layering order and writes the equivalent `polycall.toml`.
/// Errors (a boolean not exactly true/false, a port out of 1–65535, a duplicate server
/// language or peer id, `tls_enabled=true` without `cert_file` and `key_file`, a
/// `server_type` that is not the file's language, a line that is not `key=value`) stop
/// the migration, all reported together.
pub fn migrate_libpolycall(files: &[SourceFile]) -> Result<Migration, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut unmapped = Vec::new();
    // polycall.toml key → (value, from key, origin)
    let mut effective: BTreeMap<&'static str, Mapped> = BTreeMap::new();
    // libpolycall key → (value, origin), for the cross-key checks.
    let mut raw: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    let mut servers: BTreeMap<String, Origin> = BTreeMap::new();
    let mut peers: BTreeMap<String, Origin> = BTreeMap::new();
    for f in files {
        let text = match std::fs::read_to_string(&f.path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(Diagnostic::error(
                    Origin::File {
                        path: f.path.clone(),
                        line: 0,
                        column: 0,
                    },
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let mut seen_keys = Vec::new();
        for (i, raw_line) in text.lines().enumerate() {
            let line = raw_line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let indent = raw_line.len() - raw_line.trim_start().len();
            let o = Origin::File {
                path: f.path.clone(),
                line: i + 1,
                column: indent + 1,
            };
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            let rest: Vec<&str> = words.collect();
            if !line.contains('=') && matches!(first, "server" | "network" | "peer") {
                structural(
                    first,
                    &rest,
                    &o,
                    &mut servers,
                    &mut peers,
                    &mut errors,
                    &mut unmapped,
                );
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                errors.push(Diagnostic::error(
                    o,
                    format!(
                        "`{line}` is neither `key=value` nor a `server`, `network` or `peer` line"
                    ),
                ));
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            seen_keys.push(k.to_owned());
            if BOOL_KEYS.contains(&k) && v != "true" && v != "false" {
                errors.push(Diagnostic::error(
                    o,
                    format!("`{k}` must be exactly `true` or `false`, not `{v}`"),
                ));
                continue;
            }
            if k == "metrics_port" && parse_port(v).is_none() {
                errors.push(Diagnostic::error(
                    o,
                    format!("`metrics_port` = `{v}` is not a port from 1 to 65535"),
                ));
                continue;
            }
            if k == "port" {
                let ok = v
                    .split_once(':')
                    .is_some_and(|(h, t)| parse_port(h).is_some() && parse_port(t).is_some());
                if !ok {
                    errors.push(Diagnostic::error(
                        o,
                        format!(
                            "`port` = `{v}` must be HOST_PORT:TARGET_PORT, each from 1 to 65535"
                        ),
                    ));
                    continue;
                }
            }
            if k == "server_type"
                && let Role::Language(lang) = &f.role
                && v != lang
            {
                errors.push(Diagnostic::error(
                    o,
                    format!("`server_type` = `{v}` does not match the file's language `{lang}`"),
                ));
                continue;
            }
            raw.insert(k.to_owned(), (v.to_owned(), o.clone()));
            if !is_documented(k) {
                let hint = crate::suggest::hint(k, documented_keys());
                warnings.push(Diagnostic::warning(
                    o.clone(),
                    format!("unknown libpolycall key `{k}`{hint}"),
                ));
                unmapped.push(Unmapped {
                    origin: o,
                    key: k.to_owned(),
                    value: v.to_owned(),
                    reason: format!("not a libpolycall key polycall knows{hint}"),
                });
                continue;
            }
            if let Some(reason) = unmappable_reason(k) {
                unmapped.push(Unmapped {
                    origin: o,
                    key: k.to_owned(),
                    value: v.to_owned(),
                    reason: reason.to_owned(),
                });
                continue;
            }
            match map_key(k, v) {
                Ok(pairs) => {
                    for (to, value) in pairs {
                        if let Err(m) = schema::key_path(to).map_or(Ok(value.clone()), |d| {
                            crate::load::from_str(d, &plain(&value))
                        }) {
                            errors
                                .push(Diagnostic::error(o.clone(), format!("`{k}` = `{v}` → {m}")));
                            continue;
                        }
                        // TLS files: relative to the libpolycall file, made absolute.
                        let value = match (&value, to.starts_with("tls.") && to.ends_with("_file"))
                        {
                            (Value::Str(p), true) if Path::new(p).is_relative() => {
                                f.path.parent().map_or(value.clone(), |d| {
                                    Value::Str(d.join(p).display().to_string())
                                })
                            }
                            _ => value,
                        };
                        let m = Mapped {
                            from: k.to_owned(),
                            origin: o.clone(),
                            to: to.to_owned(),
                            value,
                        };
                        if let Some(old) = effective.insert(to, m) {
                            warnings.push(Diagnostic::warning(
                                old.origin.clone(),
                                format!(
                                    "`{}` = {} is overridden by {} (`{to}` takes the later value)",
                                    old.from, old.value, o
                                ),
                            ));
                        }
                    }
                }
                Err(m) => errors.push(Diagnostic::error(o, m)),
            }
        }
        if f.role == Role::Project {
            for req in ["log_directory", "workspace_root"] {
                if !seen_keys.iter().any(|k| k == req) {
                    warnings.push(Diagnostic::warning(
                        Origin::File {
                            path: f.path.clone(),
                            line: 0,
                            column: 0,
                        },
                        format!("libpolycall requires `{req}` in the project file; it is missing (polycall does not need it)"),
                    ));
                }
            }
        }
    }
    if raw.get("tls_enabled").is_some_and(|(v, _)| v == "true") {
        for need in ["cert_file", "key_file"] {
            if !raw.contains_key(need) {
                errors.push(Diagnostic::error(
                    raw["tls_enabled"].1.clone(),
                    format!("`tls_enabled=true` requires `{need}`"),
                ));
            }
        }
    }
    if !errors.is_empty() {
        errors.extend(warnings);
        return Err(errors);
    }
    let sources: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let mut mapped: Vec<Mapped> = effective.into_values().collect();
    mapped.sort_by_key(|m| schema::KEYS.iter().position(|k| k.path() == m.to));
    let toml = render(&sources, &mapped, &unmapped);
    Ok(Migration {
        sources,
        toml,
        mapped,
        unmapped,
        warnings,
    })
}

/// A value as `--set`/environment text.
fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn structural(
    word: &str,
    rest: &[&str],
    o: &Origin,
    servers: &mut BTreeMap<String, Origin>,
    peers: &mut BTreeMap<String, Origin>,
    errors: &mut Vec<Diagnostic>,
    unmapped: &mut Vec<Unmapped>,
) {
    let reason = match word {
        "server" => {
            let ok = rest.len() == 2
                && rest[1]
                    .split_once(':')
                    .is_some_and(|(h, t)| parse_port(h).is_some() && parse_port(t).is_some());
            if !ok {
                errors.push(Diagnostic::error(
                    o.clone(),
                    "expected `server <language> <host_port>:<target_port>`, ports from 1 to 65535",
                ));
                return;
            }
            if let Some(first) = servers.insert(rest[0].to_owned(), o.clone()) {
                errors.push(Diagnostic::error(
                    o.clone(),
                    format!("duplicate server language `{}` (first at {first})", rest[0]),
                ));
                return;
            }
            "no per-language servers: programs in every language connect to runtime.endpoint and register their methods"
        }
        "network" => {
            if rest != ["start"] && rest != ["stop"] {
                errors.push(Diagnostic::error(
                    o.clone(),
                    "expected `network start` or `network stop`",
                ));
                return;
            }
            "the runtime's network starts with `polycall run` and stops with `polycall stop`"
        }
        _ => {
            let ok = rest.len() == 2
                && rest[1]
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && parse_port(p).is_some());
            if !ok {
                errors.push(Diagnostic::error(
                    o.clone(),
                    "expected `peer <id> <host:port>`, port from 1 to 65535",
                ));
                return;
            }
            if let Some(first) = peers.insert(rest[0].to_owned(), o.clone()) {
                errors.push(Diagnostic::error(
                    o.clone(),
                    format!("duplicate peer id `{}` (first at {first})", rest[0]),
                ));
                return;
            }
            "peers arrive with replication"
        }
    };
    unmapped.push(Unmapped {
        origin: o.clone(),
        key: word.to_owned(),
        value: rest.join(" "),
        reason: reason.to_owned(),
    });
}

fn origin_short(o: &Origin) -> String {
    match o {
        Origin::File { path, line, .. } => format!(
            "{}:{line}",
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        ),
        other => other.to_string(),
    }
}

fn render(sources: &[PathBuf], mapped: &[Mapped], unmapped: &[Unmapped]) -> String {
    let mut o = String::new();
    o.push_str(
        "# polycall.toml, written by `polycall config migrate` from libpolycall's configuration:\n",
    );
    for s in sources {
        o.push_str(&format!("#   {}\n", s.display()));
    }
    o.push_str("# Each value names the line it came from; what could not be carried over is listed at the end.\n");
    o.push_str("# Reference: docs/config.md.\n\n");
    o.push_str(&format!("version = {CURRENT_VERSION}\n"));
    for section in SECTIONS {
        let in_section: Vec<&Mapped> = mapped
            .iter()
            .filter(|m| m.to.split_once('.').is_some_and(|(s, _)| s == *section))
            .collect();
        if in_section.is_empty() {
            continue;
        }
        o.push_str(&format!("\n[{section}]\n"));
        for m in in_section {
            let key = m.to.split_once('.').map_or(m.to.as_str(), |(_, k)| k);
            o.push_str(&format!(
                "{key} = {}  # {} ({})\n",
                m.value,
                m.from,
                origin_short(&m.origin)
            ));
        }
    }
    if !unmapped.is_empty() {
        o.push_str("\n# Not migrated (no polycall equivalent):\n");
        for u in unmapped {
            let line = if u.key == "server" || u.key == "network" || u.key == "peer" {
                format!("{} {}", u.key, u.value)
            } else {
                format!("{}={}", u.key, u.value)
            };
            o.push_str(&format!(
                "#   {}: {line} — {}\n",
                origin_short(&u.origin),
                u.reason
            ));
        }
    }
    o
}
