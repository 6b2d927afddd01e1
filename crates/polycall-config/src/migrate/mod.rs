//! Migration to `polycall.toml` version 1: from libpolycall's configuration files
//! (`Polycallfile` / `config.Polycallfile`, `Polycallrc`, `Polycallrc.<language>`,
//! `.polycallrc`), and from older `polycall.toml` versions through a chain of
//! version → version + 1 steps.
//!
//! A migration reports every key it cannot map, with its `file:line`; it never drops
//! one silently.

//!
//! Reading libpolycall's files needs the `libpolycall` cargo feature (on by default);
//! the version chain is always built.

use std::path::Path;

#[cfg(feature = "libpolycall")]
mod libpolycall;
#[cfg(feature = "libpolycall")]
pub use libpolycall::{
    Mapped, Migration, Role, SourceFile, Unmapped, discover, migrate_libpolycall, role_of,
};

use crate::schema::CURRENT_VERSION;
use crate::{Diagnostic, Origin};

/// One step of the version chain: migrates a document of version `n` to `n + 1` in
/// place, noting what it changed.
pub type Step = fn(&mut toml::Table, &mut Vec<String>) -> Result<(), StepError>;

/// Why a step of the version chain could not migrate a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl From<&str> for StepError {
    fn from(why: &str) -> Self {
        StepError(why.to_owned())
    }
}

/// `STEPS[n]` migrates version `n` to `n + 1`.
pub const STEPS: &[Step] = &[v0_to_v1];

/// The outcome of migrating a `polycall.toml` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMigration {
    /// The version read.
    pub from: u64,
    /// The version written ([`CURRENT_VERSION`]).
    pub to: u64,
    /// The migrated text (comments of the original are not kept).
    pub toml: String,
    /// What each step changed.
    pub notes: Vec<String>,
}

/// Migrates a `polycall.toml` of an older version (no `version` key: version 0) to the
/// current one, step by step.
pub fn migrate_toml(text: &str, path: &Path) -> Result<VersionMigration, Vec<Diagnostic>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let origin = e.span().map_or(
            Origin::File {
                path: path.to_owned(),
                line: 0,
                column: 0,
            },
            |s| crate::load::at(path, text, s.start),
        );
        vec![Diagnostic::error(
            origin,
            format!("TOML syntax: {}", e.message().trim()),
        )]
    })?;
    let whole = Origin::File {
        path: path.to_owned(),
        line: 0,
        column: 0,
    };
    let from = match table.get("version") {
        None => 0,
        Some(toml::Value::Integer(n)) if *n >= 0 => *n as u64,
        Some(_) => {
            return Err(vec![Diagnostic::error(
                whole,
                "`version` must be a whole number",
            )]);
        }
    };
    if from > CURRENT_VERSION {
        return Err(vec![Diagnostic::error(
            whole,
            format!("version {from} is newer than this build ({CURRENT_VERSION})"),
        )]);
    }
    let mut notes = Vec::new();
    for (v, step) in STEPS.iter().enumerate().skip(from as usize) {
        step(&mut table, &mut notes).map_err(|m| {
            vec![Diagnostic::error(
                whole.clone(),
                format!("migrating version {v} to {}: {m}", v + 1),
            )]
        })?;
        table.insert("version".into(), toml::Value::Integer(v as i64 + 1));
    }
    let body = toml::to_string(&table)
        .map_err(|e| vec![Diagnostic::error(whole.clone(), e.to_string())])?;
    let mut out = String::new();
    if from < CURRENT_VERSION {
        out.push_str(&format!(
            "# Migrated from version {from} to {CURRENT_VERSION} by `polycall config migrate` (comments of the original are not kept).\n"
        ));
        for n in &notes {
            out.push_str(&format!("#   {n}\n"));
        }
        out.push('\n');
    }
    // `version` first.
    let mut rest = String::new();
    for line in body.lines() {
        if line.starts_with("version = ") {
            out.push_str(line);
            out.push('\n');
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    out.push_str(&rest);
    Ok(VersionMigration {
        from,
        to: CURRENT_VERSION,
        toml: out,
        notes,
    })
}

/// Version 0 (the previews): `[server] listen, state, max_connections, drain_timeout_s`,
/// `[limits] max_frame_kib`, `[log] verbosity`; no `version` key. Version 1 renamed
/// `[server]` to `[runtime]` (`listen` → `endpoint`, `state` → `state_dir`), counts time
/// in milliseconds and sizes in bytes.
fn v0_to_v1(t: &mut toml::Table, notes: &mut Vec<String>) -> Result<(), StepError> {
    if let Some(server) = t.remove("server") {
        let toml::Value::Table(server) = server else {
            return Err("`server` must be a table".into());
        };
        let mut runtime = match t.remove("runtime") {
            Some(toml::Value::Table(r)) => r,
            _ => toml::Table::new(),
        };
        for (k, v) in server {
            let (nk, nv) = match k.as_str() {
                "listen" => ("endpoint".to_owned(), v),
                "state" => ("state_dir".to_owned(), v),
                "drain_timeout_s" => match v {
                    toml::Value::Integer(n) => (
                        "drain_timeout_ms".to_owned(),
                        toml::Value::Integer(n * 1000),
                    ),
                    _ => return Err("`server.drain_timeout_s` must be a whole number".into()),
                },
                _ => (k.clone(), v),
            };
            notes.push(format!("server.{k} → runtime.{nk}"));
            runtime.insert(nk, nv);
        }
        t.insert("runtime".into(), toml::Value::Table(runtime));
    }
    if let Some(toml::Value::Table(limits)) = t.get_mut("limits")
        && let Some(v) = limits.remove("max_frame_kib")
    {
        let toml::Value::Integer(n) = v else {
            return Err("`limits.max_frame_kib` must be a whole number".into());
        };
        limits.insert("max_frame".into(), toml::Value::Integer(n * 1024));
        notes.push("limits.max_frame_kib → limits.max_frame (bytes)".into());
    }
    if let Some(toml::Value::Table(log)) = t.get_mut("log")
        && let Some(v) = log.remove("verbosity")
    {
        log.insert("level".into(), v);
        notes.push("log.verbosity → log.level".into());
    }
    Ok(())
}
