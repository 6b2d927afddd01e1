//! What a machine is, as written: states, transitions, guards and actions, before
//! validation. Built in Rust with [`MachineDef::builder`] or read from TOML with
//! [`crate::load`]; both end in [`crate::Machine::compile`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an item of a definition was written: `file:line:col` (1-based). Definitions
/// built in Rust have none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// The file.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// How an instance's accepted transitions reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each accepted transition is fsynced before it is acknowledged; concurrent
    /// instances share one fsync (group commit).
    #[default]
    Sync,
    /// Acknowledged once written; fsynced at most [`crate::StoreConfig::batch_window`]
    /// later. A crash loses at most that window.
    Batched,
    /// Written, never forced to disk by this machine (other machines' or a clean
    /// shutdown's syncs carry it).
    None,
}

/// How a machine's instances are kept on a cluster (`consistency` in its definition;
/// on one runtime both are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Every change goes through the raft log: linearizable, available on the side of
    /// a partition that holds a majority.
    #[default]
    Linearizable,
    /// Each node applies changes at once and ships them to the others (delta
    /// anti-entropy): writable on every side of a partition, converging after it heals.
    /// Context fields are CRDTs ([`FieldKind`]); the active states are a
    /// last-writer-wins register.
    Eventual,
}

impl Replication {
    fn is_default(&self) -> bool {
        *self == Replication::Linearizable
    }
}

/// The CRDT a context field of an eventual machine is (docs/cluster.md gives the merge
/// rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Last writer wins, by hybrid logical clock (the default for undeclared fields).
    #[default]
    Register,
    /// An integer; concurrent changes add up (`context.n + 1` on two sides: `+2`).
    Counter,
    /// A JSON array used as a set; concurrent adds and removes: an add wins over a
    /// remove that did not see it (observed-remove).
    Set,
}

/// How a child state's permissions derive from its parent's (libpolycall's
/// hierarchical permission models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inherit {
    /// Only the state's own permissions.
    #[default]
    None,
    /// The parent's and the state's own.
    Additive,
    /// The parent's, minus the state's own.
    Subtractive,
    /// The parent's, in place of the state's own.
    Replace,
}

/// How a transition treats its source state (SCXML's transition types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    /// Leave the source and enter the target (the source is exited and re-entered for a
    /// self-transition).
    #[default]
    External,
    /// To a descendant of the source: the source stays active (not exited, not
    /// re-entered). Otherwise as external.
    Local,
    /// No state is exited or entered; only the action runs.
    Internal,
}

/// Context updates: each `key = "CEL expression"` sets `context.key` to the value of
/// the expression, evaluated over `event` and `context` (in key order, each seeing the
/// updates before it).
pub type Action = Vec<(String, String)>;

/// One state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateDef {
    /// Unique within the machine.
    pub name: String,
    /// The enclosing state, if any.
    pub parent: Option<String>,
    /// For a state with children: the child entered by default.
    pub initial: Option<String>,
    /// Every child is active at once (orthogonal regions) instead of exactly one.
    pub parallel: bool,
    /// Once entered, nothing leaves it.
    pub terminal: bool,
    /// Run on entry.
    pub on_enter: Action,
    /// Run on exit.
    pub on_exit: Action,
    /// Who may fire transitions out of this state: principal names (`user:alice`) or
    /// patterns ending in `*` (`spiffe://example.org/*`). Empty: anyone.
    pub permissions: Vec<String>,
    /// How `permissions` combine with the parent's.
    pub inherit: Inherit,
    /// Where it was written.
    pub position: Option<Position>,
}

/// One named transition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransitionDef {
    /// The event that fires it. Several transitions may share a name when their
    /// sources differ (or their guards do); the first whose source is active and whose
    /// guard holds is taken.
    pub name: String,
    /// The source state: the transition fires only while it is active.
    pub from: String,
    /// The target state (for an internal transition, the source).
    pub to: String,
    /// A CEL expression over `event` and `context` that must be `true`.
    pub guard: Option<String>,
    /// Run between the exits and the entries.
    pub action: Action,
    /// External, local or internal.
    pub kind: TransitionKind,
    /// Where it was written.
    pub position: Option<Position>,
    /// Where its guard was written.
    pub guard_position: Option<Position>,
}

/// A machine as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineDef {
    /// The machine's name: its methods are `state.<name>.create`, `….fire`, ….
    pub name: String,
    /// The top-level state a new instance enters.
    pub initial: String,
    /// The states.
    pub states: Vec<StateDef>,
    /// The transitions.
    pub transitions: Vec<TransitionDef>,
    /// A new instance's context (a JSON object), before the caller's `context`.
    pub context: serde_json::Map<String, serde_json::Value>,
    /// How accepted transitions reach the disk.
    pub durability: Durability,
    /// A snapshot of an instance every this many accepted events (0: never).
    pub snapshot_every: u64,
    /// How instances are kept on a cluster.
    #[serde(default, skip_serializing_if = "Replication::is_default")]
    pub consistency: Replication,
    /// For an eventual machine: the CRDT each context field is (undeclared fields are
    /// registers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub crdt: BTreeMap<String, FieldKind>,
    /// Where the machine was written (its file, or `None`).
    pub position: Option<Position>,
}

impl MachineDef {
    /// Starts a definition in Rust.
    ///
    /// ```
    /// use polycall_state::{MachineDef, Machine};
    /// let def = MachineDef::builder("door", "closed")
    ///     .state("closed")
    ///     .state("open")
    ///     .transition("open", "closed", "open")
    ///     .transition("close", "open", "closed")
    ///     .build();
    /// let machine = Machine::compile(def).unwrap();
    /// assert_eq!(machine.name(), "door");
    /// ```
    pub fn builder(name: impl Into<String>, initial: impl Into<String>) -> MachineBuilder {
        MachineBuilder {
            def: MachineDef {
                name: name.into(),
                initial: initial.into(),
                snapshot_every: DEFAULT_SNAPSHOT_EVERY,
                ..MachineDef::default()
            },
        }
    }
}

/// Snapshot interval when none is given.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 64;

/// Builds a [`MachineDef`] in Rust; see [`MachineDef::builder`].
#[derive(Debug, Clone)]
pub struct MachineBuilder {
    def: MachineDef,
}

impl MachineBuilder {
    /// Adds a plain top-level state.
    pub fn state(self, name: impl Into<String>) -> Self {
        self.state_def(StateDef {
            name: name.into(),
            ..StateDef::default()
        })
    }

    /// Adds a final top-level state.
    pub fn final_state(self, name: impl Into<String>) -> Self {
        self.state_def(StateDef {
            name: name.into(),
            terminal: true,
            ..StateDef::default()
        })
    }

    /// Adds a fully described state.
    pub fn state_def(mut self, state: StateDef) -> Self {
        self.def.states.push(state);
        self
    }

    /// Adds an external transition without guard or action.
    pub fn transition(
        self,
        name: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Self {
        self.transition_def(TransitionDef {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            ..TransitionDef::default()
        })
    }

    /// Adds a transition with a CEL guard.
    pub fn guarded(
        self,
        name: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
        guard: impl Into<String>,
    ) -> Self {
        self.transition_def(TransitionDef {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            guard: Some(guard.into()),
            ..TransitionDef::default()
        })
    }

    /// Adds a fully described transition.
    pub fn transition_def(mut self, t: TransitionDef) -> Self {
        self.def.transitions.push(t);
        self
    }

    /// Sets a field of a new instance's context.
    pub fn context(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.def.context.insert(key.into(), value);
        self
    }

    /// Sets the durability mode.
    pub fn durability(mut self, d: Durability) -> Self {
        self.def.durability = d;
        self
    }

    /// Makes the machine eventually consistent on a cluster ([`Replication::Eventual`]).
    pub fn eventual(mut self) -> Self {
        self.def.consistency = Replication::Eventual;
        self
    }

    /// Declares context field `key` as CRDT `kind` (eventual machines).
    pub fn crdt(mut self, key: impl Into<String>, kind: FieldKind) -> Self {
        self.def.crdt.insert(key.into(), kind);
        self
    }

    /// Sets the snapshot interval (accepted events between snapshots; 0: never).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.def.snapshot_every = n;
        self
    }

    /// The definition.
    pub fn build(self) -> MachineDef {
        self.def
    }
}
