//! Machines written in TOML, so programs in every language can define them. The format
//! is in `docs/state.md`; every mistake is reported as `file:line:col: error: …`.
//!
//! ```
//! let text = r#"
//! name = "door"
//! initial = "closed"
//!
//! [[state]]
//! name = "closed"
//! [[state]]
//! name = "open"
//!
//! [[transition]]
//! name = "open"
//! from = "closed"
//! to = "open"
//! guard = "event.key == context.key"
//!
//! [context]
//! key = "1234"
//! "#;
//! let machine = polycall_state::load::from_str(text, "door.toml").unwrap();
//! assert_eq!(machine.name(), "door");
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::definition::{
    DEFAULT_SNAPSHOT_EVERY, Durability, FieldKind, Inherit, MachineDef, Position, Replication,
    StateDef, TransitionDef, TransitionKind,
};
use crate::machine::{DefinitionError, DefinitionErrors, Machine};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: Spanned<String>,
    initial: String,
    #[serde(default)]
    durability: Durability,
    snapshot_every: Option<u64>,
    #[serde(default)]
    consistency: Replication,
    #[serde(default)]
    crdt: BTreeMap<String, FieldKind>,
    #[serde(default)]
    context: toml::Table,
    #[serde(default)]
    state: Vec<Spanned<RawState>>,
    #[serde(default)]
    transition: Vec<Spanned<RawTransition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: String,
    parent: Option<String>,
    initial: Option<String>,
    #[serde(default)]
    parallel: bool,
    #[serde(default, rename = "final")]
    terminal: bool,
    #[serde(default)]
    on_enter: BTreeMap<String, String>,
    #[serde(default)]
    on_exit: BTreeMap<String, String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    inherit: Inherit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    name: String,
    from: String,
    to: String,
    guard: Option<Spanned<String>>,
    #[serde(default)]
    action: BTreeMap<String, String>,
    #[serde(default)]
    kind: TransitionKind,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn position(file: &str, text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Position {
        file: file.to_string(),
        line,
        col,
    }
}

fn at(file: &str, text: &str, span: Range<usize>) -> Option<Position> {
    Some(position(file, text, span.start))
}

/// Parses a definition without validating it.
pub fn definition_from_str(text: &str, file: &str) -> Result<MachineDef, DefinitionErrors> {
    let raw: RawMachine = toml::from_str(text).map_err(|e| {
        DefinitionErrors(vec![DefinitionError {
            position: Some(position(file, text, e.span().map_or(0, |s| s.start))),
            message: e.message().to_string(),
        }])
    })?;
    let context = serde_json::to_value(&raw.context)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Ok(MachineDef {
        position: at(file, text, raw.name.span()),
        name: raw.name.into_inner(),
        initial: raw.initial,
        durability: raw.durability,
        snapshot_every: raw.snapshot_every.unwrap_or(DEFAULT_SNAPSHOT_EVERY),
        consistency: raw.consistency,
        crdt: raw.crdt,
        context,
        states: raw
            .state
            .into_iter()
            .map(|s| {
                let position = at(file, text, s.span());
                let s = s.into_inner();
                StateDef {
                    name: s.name,
                    parent: s.parent,
                    initial: s.initial,
                    parallel: s.parallel,
                    terminal: s.terminal,
                    on_enter: s.on_enter.into_iter().collect(),
                    on_exit: s.on_exit.into_iter().collect(),
                    permissions: s.permissions,
                    inherit: s.inherit,
                    position,
                }
            })
            .collect(),
        transitions: raw
            .transition
            .into_iter()
            .map(|t| {
                let position = at(file, text, t.span());
                let t = t.into_inner();
                let guard_position = t.guard.as_ref().and_then(|g| at(file, text, g.span()));
                TransitionDef {
                    name: t.name,
                    from: t.from,
                    to: t.to,
                    guard: t.guard.map(Spanned::into_inner),
                    action: t.action.into_iter().collect(),
                    kind: t.kind,
                    position,
                    guard_position,
                }
            })
            .collect(),
    })
}

/// Parses, validates and compiles a machine written in TOML; `file` names it in errors.
pub fn from_str(text: &str, file: &str) -> Result<Machine, DefinitionErrors> {
    Machine::compile(definition_from_str(text, file)?)
}

/// Reads, validates and compiles a machine from a TOML file.
pub fn from_file(path: &Path) -> Result<Machine, DefinitionErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        DefinitionErrors(vec![DefinitionError {
            position: Some(Position {
                file: file.clone(),
                line: 0,
                col: 0,
            }),
            message: format!("cannot read: {e}"),
        }])
    })?;
    from_str(&text, &file)
}

/// Every `*.toml` machine in a directory, sorted by file name; all errors of all files
/// at once.
pub fn from_dir(dir: &Path) -> Result<Vec<Machine>, DefinitionErrors> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| {
            DefinitionErrors(vec![DefinitionError {
                position: None,
                message: format!("cannot read machine directory {}: {e}", dir.display()),
            }])
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut machines = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match from_file(&f) {
            Ok(m) => {
                if machines.iter().any(|x: &Machine| x.name() == m.name()) {
                    errors.push(DefinitionError {
                        position: m.definition().position.clone(),
                        message: format!("machine `{}` is defined in two files", m.name()),
                    });
                } else {
                    machines.push(m);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(machines)
    } else {
        Err(DefinitionErrors(errors))
    }
}
