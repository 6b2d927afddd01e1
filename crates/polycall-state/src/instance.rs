//! One instance's state and the pure rules that change it: firing a transition,
//! locking, snapshots and their integrity. No I/O here: the store logs what these
//! functions decide, and replays them on recovery.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::definition::TransitionKind;
use crate::error::StateError;
use crate::machine::{Machine, StateId};

/// An instance of a machine: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The instance id (unique within the runtime).
    pub id: String,
    /// The machine's name.
    pub machine: String,
    /// The machine version ([`Machine::version`]) the instance was created with.
    pub version: String,
    /// Every active state, ancestors included (sorted by name).
    pub active: BTreeSet<String>,
    /// The instance's data (a JSON object).
    pub context: Json,
    /// How many times each state has been entered.
    pub versions: BTreeMap<String, u64>,
    /// Locked states: a transition that exits or enters one fails.
    pub locked: BTreeSet<String>,
    /// Events accepted so far (transitions, locks, restores).
    pub events: u64,
}

/// What one accepted transition did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// The transition's name.
    pub transition: String,
    /// States left, innermost first.
    pub exited: Vec<String>,
    /// States entered, outermost first.
    pub entered: Vec<String>,
}

/// A self-verifying copy of an instance: its state and the BLAKE3 hash of the state's
/// canonical encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The state.
    pub state: InstanceState,
    /// BLAKE3 over [`InstanceState::canonical`] (hex).
    pub integrity: String,
}

impl InstanceState {
    /// A new instance in the machine's initial configuration. `context` fields override
    /// the machine's defaults; initial states' entry actions run.
    pub fn new(machine: &Machine, id: &str, context: Json) -> Result<Self, StateError> {
        let mut ctx = Json::Object(machine.def.context.clone());
        match context {
            Json::Null => {}
            Json::Object(m) => {
                for (k, v) in m {
                    ctx[&k] = v;
                }
            }
            other => {
                return Err(StateError::InvalidInput(format!(
                    "an instance's context is a JSON object, not {other}"
                )));
            }
        }
        let mut st = Self {
            id: id.to_string(),
            machine: machine.def.name.clone(),
            version: machine.hash.clone(),
            active: BTreeSet::new(),
            context: ctx,
            versions: BTreeMap::new(),
            locked: BTreeSet::new(),
            events: 0,
        };
        let mut entered: Vec<StateId> = machine.initial_configuration().into_iter().collect();
        entered.sort_by_key(|&s| (machine.states[s].depth, s));
        for s in entered {
            st.enter(machine, s, &Json::Null)?;
        }
        Ok(st)
    }

    /// The canonical encoding (sorted keys everywhere) that integrity hashes cover.
    pub fn canonical(&self) -> String {
        crate::canonical::to_string(&serde_json::to_value(self).unwrap_or_default())
    }

    /// BLAKE3 of [`Self::canonical`], hex.
    pub fn integrity(&self) -> String {
        blake3::hash(self.canonical().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The innermost active states (the "current" states).
    pub fn current(&self, machine: &Machine) -> Vec<String> {
        self.active
            .iter()
            .filter(|n| {
                machine.state(n).is_some_and(|s| {
                    !machine.states[s]
                        .children
                        .iter()
                        .any(|c| self.active.contains(&machine.states[*c].name))
                })
            })
            .cloned()
            .collect()
    }

    /// Whether the instance is done: a final state is active.
    pub fn is_final(&self, machine: &Machine) -> bool {
        self.active
            .iter()
            .any(|n| machine.state(n).is_some_and(|s| machine.states[s].terminal))
    }

    fn check_machine(&self, machine: &Machine) -> Result<(), StateError> {
        if self.version != machine.hash {
            return Err(StateError::VersionMismatch {
                instance: self.id.clone(),
                have: self.version.clone(),
                machine: machine.hash.clone(),
            });
        }
        Ok(())
    }

    fn enter(&mut self, machine: &Machine, s: StateId, event: &Json) -> Result<(), StateError> {
        let st = &machine.states[s];
        self.active.insert(st.name.clone());
        *self.versions.entry(st.name.clone()).or_insert(0) += 1;
        run_action(
            &mut self.context,
            &st.on_enter,
            event,
            &format!("on_enter of `{}`", st.name),
        )
    }

    /// Fires the transition `name` with `event` on behalf of `principal`. On success the
    /// state has changed and the returned [`Fired`] tells how; on failure nothing
    /// changed.
    pub fn fire(
        &mut self,
        machine: &Machine,
        name: &str,
        event: &Json,
        principal: Option<&str>,
    ) -> Result<Fired, StateError> {
        self.check_machine(machine)?;
        let Some(candidates) = machine.by_name.get(name) else {
            let mut names: Vec<&String> = machine.by_name.keys().collect();
            names.sort();
            return Err(StateError::UnknownTransition {
                machine: machine.def.name.clone(),
                transition: name.to_string(),
                known: names.into_iter().cloned().collect(),
            });
        };
        let mut from_active = candidates
            .iter()
            .map(|&i| &machine.transitions[i])
            .filter(|t| self.active.contains(&machine.states[t.from].name))
            .peekable();
        if from_active.peek().is_none() {
            let froms: Vec<String> = candidates
                .iter()
                .map(|&i| machine.states[machine.transitions[i].from].name.clone())
                .collect();
            return Err(StateError::NotFromCurrent {
                transition: name.to_string(),
                from: froms,
                current: self.current(machine),
            });
        }
        let mut rejected = Vec::new();
        let mut chosen = None;
        for t in from_active {
            let perms = &machine.states[t.from].permissions;
            if !perms.is_empty()
                && !principal.is_some_and(|p| perms.iter().any(|pat| matches(pat, p)))
            {
                return Err(StateError::PermissionDenied(format!(
                    "`{}` may be fired from `{}` only by {}; the caller is {}",
                    name,
                    machine.states[t.from].name,
                    perms.join(", "),
                    principal.unwrap_or("anonymous")
                )));
            }
            match &t.guard {
                None => {
                    chosen = Some(t);
                    break;
                }
                Some(g) => match g.holds(event, &self.context) {
                    Ok(true) => {
                        chosen = Some(t);
                        break;
                    }
                    Ok(false) => rejected.push(g.source().to_string()),
                    Err(e) => return Err(StateError::Guard(e.to_string())),
                },
            }
        }
        let Some(t) = chosen else {
            return Err(StateError::GuardRejected {
                transition: name.to_string(),
                guards: rejected,
            });
        };
        let (exit, entry) = plan(machine, &self.active_ids(machine), t.from, t.to, t.kind);
        // A final state stays final; a locked state is neither left nor entered.
        for &s in &exit {
            if machine.states[s].terminal {
                return Err(StateError::Final(machine.states[s].name.clone()));
            }
        }
        for &s in exit
            .iter()
            .chain(entry.iter())
            .chain(std::iter::once(&t.from))
        {
            if self.locked.contains(&machine.states[s].name) {
                return Err(StateError::Locked(machine.states[s].name.clone()));
            }
        }
        let mut next = self.clone();
        for &s in &exit {
            let st = &machine.states[s];
            run_action(
                &mut next.context,
                &st.on_exit,
                event,
                &format!("on_exit of `{}`", st.name),
            )?;
            next.active.remove(&st.name);
        }
        run_action(
            &mut next.context,
            &t.action,
            event,
            &format!("action of `{}`", t.name),
        )?;
        for &s in &entry {
            next.enter(machine, s, event)?;
        }
        next.events += 1;
        *self = next;
        Ok(Fired {
            transition: t.name.clone(),
            exited: exit
                .iter()
                .map(|&s| machine.states[s].name.clone())
                .collect(),
            entered: entry
                .iter()
                .map(|&s| machine.states[s].name.clone())
                .collect(),
        })
    }

    fn active_ids(&self, machine: &Machine) -> BTreeSet<StateId> {
        self.active
            .iter()
            .filter_map(|n| machine.state(n))
            .collect()
    }

    /// Locks (`lock = true`) or unlocks an active or inactive state.
    pub fn set_lock(
        &mut self,
        machine: &Machine,
        state: &str,
        lock: bool,
    ) -> Result<(), StateError> {
        self.check_machine(machine)?;
        if machine.state(state).is_none() {
            return Err(StateError::UnknownState(state.to_string()));
        }
        let changed = if lock {
            self.locked.insert(state.to_string())
        } else {
            self.locked.remove(state)
        };
        if !changed {
            return Err(StateError::Precondition(format!(
                "state `{state}` is already {}",
                if lock { "locked" } else { "unlocked" }
            )));
        }
        self.events += 1;
        Ok(())
    }

    /// A self-verifying copy.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.clone(),
            integrity: self.integrity(),
        }
    }

    /// Replaces this instance's state with `snap` after checking it: the integrity hash
    /// must match, it must be of this instance and machine version, and no state of the
    /// instance may be locked.
    pub fn restore(&mut self, machine: &Machine, snap: &Snapshot) -> Result<(), StateError> {
        snap.verify()?;
        if snap.state.id != self.id || snap.state.machine != self.machine {
            return Err(StateError::InvalidInput(format!(
                "the snapshot is of {}/{}, not {}/{}",
                snap.state.machine, snap.state.id, self.machine, self.id
            )));
        }
        if snap.state.version != machine.hash {
            return Err(StateError::VersionMismatch {
                instance: self.id.clone(),
                have: snap.state.version.clone(),
                machine: machine.hash.clone(),
            });
        }
        if let Some(l) = self.locked.iter().next() {
            return Err(StateError::Locked(l.clone()));
        }
        let events = self.events + 1;
        *self = snap.state.clone();
        self.events = events;
        Ok(())
    }
}

impl Snapshot {
    /// Checks the integrity hash.
    pub fn verify(&self) -> Result<(), StateError> {
        let actual = self.state.integrity();
        if actual != self.integrity {
            return Err(StateError::Integrity(format!(
                "snapshot of {} claims {} but hashes to {actual}",
                self.state.id, self.integrity
            )));
        }
        Ok(())
    }
}

/// `pattern` is a principal name, or a prefix ending in `*`.
fn matches(pattern: &str, principal: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => principal.starts_with(prefix),
        None => pattern == principal,
    }
}

fn run_action(
    context: &mut Json,
    action: &[(String, crate::Expr)],
    event: &Json,
    what: &str,
) -> Result<(), StateError> {
    for (key, expr) in action {
        let v = expr.eval(event, context).map_err(|e| {
            StateError::Action(format!("{what}: `{key}` = `{}`: {e}", expr.source()))
        })?;
        if !context.is_object() {
            *context = Json::Object(Default::default());
        }
        context[key.as_str()] = v;
    }
    Ok(())
}

/// The states a transition exits (innermost first) and enters (outermost first).
fn plan(
    machine: &Machine,
    active: &BTreeSet<StateId>,
    from: StateId,
    to: StateId,
    kind: TransitionKind,
) -> (Vec<StateId>, Vec<StateId>) {
    if kind == TransitionKind::Internal {
        return (Vec::new(), Vec::new());
    }
    // The domain: the innermost compound state that contains both ends and stays.
    let domain = if kind == TransitionKind::Local && machine.is_inside(to, from) {
        Some(from)
    } else {
        machine
            .ancestors(from)
            .find(|&a| !machine.states[a].parallel && machine.is_inside(to, a))
    };
    let inside_domain = |s: StateId| domain.is_none_or(|d| machine.is_inside(s, d));
    let mut exit: Vec<StateId> = active
        .iter()
        .copied()
        .filter(|&s| inside_domain(s))
        .collect();
    exit.sort_by_key(|&s| std::cmp::Reverse((machine.states[s].depth, s)));
    // Path from the domain down to the target.
    let mut path: Vec<StateId> = std::iter::once(to)
        .chain(machine.ancestors(to))
        .take_while(|&s| Some(s) != domain)
        .collect();
    path.reverse();
    let mut entry = BTreeSet::new();
    for (i, &s) in path.iter().enumerate() {
        entry.insert(s);
        if machine.states[s].parallel {
            let next = path.get(i + 1).copied();
            for &c in &machine.states[s].children {
                if Some(c) != next {
                    machine.enter_defaults(c, &mut entry);
                }
            }
        }
    }
    machine.enter_defaults(to, &mut entry);
    let mut entry: Vec<StateId> = entry.into_iter().collect();
    entry.sort_by_key(|&s| (machine.states[s].depth, s));
    (exit, entry)
}
