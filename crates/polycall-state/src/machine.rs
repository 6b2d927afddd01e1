//! A validated, compiled machine: states indexed, guards and actions compiled, every
//! mistake of the definition reported at once with its position.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;

use crate::definition::{Inherit, MachineDef, Position, TransitionKind};
use crate::expr::Expr;

/// One mistake in a definition, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// Where (absent for definitions built in Rust).
    pub position: Option<Position>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Some(p) => write!(f, "{p}: error: {}", self.message),
            None => write!(f, "error: {}", self.message),
        }
    }
}

/// Every mistake found in a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

pub(crate) type StateId = usize;

#[derive(Debug)]
pub(crate) struct CompiledState {
    pub(crate) name: String,
    pub(crate) parent: Option<StateId>,
    pub(crate) children: Vec<StateId>,
    pub(crate) initial: Option<StateId>,
    pub(crate) parallel: bool,
    pub(crate) terminal: bool,
    pub(crate) depth: usize,
    pub(crate) on_enter: Vec<(String, Expr)>,
    pub(crate) on_exit: Vec<(String, Expr)>,
    /// After inheritance.
    pub(crate) permissions: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CompiledTransition {
    pub(crate) name: String,
    pub(crate) from: StateId,
    pub(crate) to: StateId,
    pub(crate) guard: Option<Expr>,
    pub(crate) action: Vec<(String, Expr)>,
    pub(crate) kind: TransitionKind,
}

/// A machine ready to run instances.
#[derive(Debug)]
pub struct Machine {
    pub(crate) def: MachineDef,
    pub(crate) hash: String,
    pub(crate) states: Vec<CompiledState>,
    pub(crate) index: HashMap<String, StateId>,
    pub(crate) transitions: Vec<CompiledTransition>,
    pub(crate) by_name: HashMap<String, Vec<usize>>,
    pub(crate) initial: StateId,
}

impl Machine {
    /// Validates and compiles a definition, reporting every mistake at once: unknown
    /// states, duplicate names, bad hierarchies, guards and actions that do not
    /// compile, transitions out of final states, final states no path reaches.
    pub fn compile(def: MachineDef) -> Result<Self, DefinitionErrors> {
        Compiler::new(&def).run(def)
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The definition it was compiled from.
    pub fn definition(&self) -> &MachineDef {
        &self.def
    }

    /// BLAKE3 of the definition's canonical encoding (hex): an instance records it, and
    /// a snapshot of one version is refused by another.
    pub fn version(&self) -> &str {
        &self.hash
    }

    pub(crate) fn state(&self, name: &str) -> Option<StateId> {
        self.index.get(name).copied()
    }

    /// Strict ancestors of `s`, nearest first.
    pub(crate) fn ancestors(&self, s: StateId) -> impl Iterator<Item = StateId> + '_ {
        std::iter::successors(self.states[s].parent, move |&p| self.states[p].parent)
    }

    /// Whether `a` lies strictly inside `b`.
    pub(crate) fn is_inside(&self, a: StateId, b: StateId) -> bool {
        self.ancestors(a).any(|x| x == b)
    }

    /// Adds `s` and the states entered by default below it.
    pub(crate) fn enter_defaults(&self, s: StateId, set: &mut BTreeSet<StateId>) {
        set.insert(s);
        let st = &self.states[s];
        if st.parallel {
            for &c in &st.children {
                self.enter_defaults(c, set);
            }
        } else if let Some(i) = st.initial {
            self.enter_defaults(i, set);
        }
    }

    /// The states a new instance is in.
    pub(crate) fn initial_configuration(&self) -> BTreeSet<StateId> {
        let mut set = BTreeSet::new();
        self.enter_defaults(self.initial, &mut set);
        set
    }
}

struct Compiler {
    errors: Vec<DefinitionError>,
    fallback: Option<Position>,
}

impl Compiler {
    fn new(def: &MachineDef) -> Self {
        Self {
            errors: Vec::new(),
            fallback: def.position.clone(),
        }
    }

    fn err(&mut self, position: &Option<Position>, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            position: position.clone().or_else(|| self.fallback.clone()),
            message: message.into(),
        });
    }

    fn compile_expr(&mut self, pos: &Option<Position>, what: &str, src: &str) -> Option<Expr> {
        match Expr::compile(src) {
            Ok(e) => Some(e),
            Err(e) => {
                self.err(pos, format!("{what} `{src}` does not compile: {e}"));
                None
            }
        }
    }

    fn compile_action(
        &mut self,
        pos: &Option<Position>,
        what: &str,
        action: &[(String, String)],
    ) -> Vec<(String, Expr)> {
        let mut out = Vec::new();
        for (k, src) in action {
            if k.is_empty() {
                self.err(pos, format!("{what} sets an empty context key"));
                continue;
            }
            if let Some(e) = self.compile_expr(pos, &format!("{what} value for `{k}`"), src) {
                out.push((k.clone(), e));
            }
        }
        out
    }

    fn run(mut self, def: MachineDef) -> Result<Machine, DefinitionErrors> {
        let mpos = def.position.clone();
        if let Err(e) = polycall_core::ServiceName::new(&format!("state.{}", def.name)) {
            self.err(
                &mpos,
                format!("machine name {:?} cannot name methods: {e}", def.name),
            );
        }
        // States and their names.
        let mut index = HashMap::new();
        for (i, s) in def.states.iter().enumerate() {
            if s.name.is_empty() {
                self.err(&s.position, "a state has an empty name");
            }
            if index.insert(s.name.clone(), i).is_some() {
                self.err(&s.position, format!("state `{}` is defined twice", s.name));
            }
        }
        let lookup = |name: &str| index.get(name).copied();
        let suggest = |name: &str| -> String {
            let names: Vec<&str> = def.states.iter().map(|s| s.name.as_str()).collect();
            match names.iter().find(|n| close(n, name)) {
                Some(n) => format!(" (did you mean `{n}`?)"),
                None => format!("; states: {}", names.join(", ")),
            }
        };
        let mut parents = vec![None; def.states.len()];
        for (i, s) in def.states.iter().enumerate() {
            if let Some(p) = &s.parent {
                match lookup(p) {
                    Some(pi) => parents[i] = Some(pi),
                    None => self.err(
                        &s.position,
                        format!(
                            "state `{}` names unknown parent `{p}`{}",
                            s.name,
                            suggest(p)
                        ),
                    ),
                }
            }
        }
        // Cycles in the hierarchy.
        for (i, s) in def.states.iter().enumerate() {
            let mut seen = 0;
            let mut cur = parents[i];
            while let Some(c) = cur {
                seen += 1;
                if c == i || seen > def.states.len() {
                    self.err(
                        &s.position,
                        format!("state `{}` is its own ancestor", s.name),
                    );
                    parents[i] = None;
                    break;
                }
                cur = parents[c];
            }
        }
        let mut children = vec![Vec::new(); def.states.len()];
        for (i, p) in parents.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        let depth = |mut i: usize| {
            let mut d = 0;
            while let Some(p) = parents[i] {
                d += 1;
                i = p;
                if d > parents.len() {
                    break;
                }
            }
            d
        };
        let mut states = Vec::new();
        for (i, s) in def.states.iter().enumerate() {
            let mut initial = None;
            match (&s.initial, children[i].is_empty(), s.parallel) {
                (Some(name), false, false) => match lookup(name) {
                    Some(c) if parents[c] == Some(i) => initial = Some(c),
                    _ => self.err(
                        &s.position,
                        format!("state `{}`: initial `{name}` is not one of its children", s.name),
                    ),
                },
                (None, false, false) => self.err(
                    &s.position,
                    format!(
                        "state `{}` has children but no `initial`: say which child is entered first",
                        s.name
                    ),
                ),
                (Some(_), _, true) => self.err(
                    &s.position,
                    format!("parallel state `{}` enters every child; `initial` does not apply", s.name),
                ),
                (Some(_), true, false) => self.err(
                    &s.position,
                    format!("state `{}` has an `initial` but no children", s.name),
                ),
                (None, true, true) => self.err(
                    &s.position,
                    format!("parallel state `{}` has no children (regions)", s.name),
                ),
                _ => {}
            }
            if s.terminal && !children[i].is_empty() {
                self.err(
                    &s.position,
                    format!("final state `{}` cannot have children", s.name),
                );
            }
            let on_enter = self.compile_action(
                &s.position,
                &format!("state `{}` on_enter", s.name),
                &s.on_enter,
            );
            let on_exit = self.compile_action(
                &s.position,
                &format!("state `{}` on_exit", s.name),
                &s.on_exit,
            );
            states.push(CompiledState {
                name: s.name.clone(),
                parent: parents[i],
                children: children[i].clone(),
                initial,
                parallel: s.parallel,
                terminal: s.terminal,
                depth: depth(i),
                on_enter,
                on_exit,
                permissions: Vec::new(),
            });
        }
        // Permissions after inheritance, parents first.
        let mut order: Vec<usize> = (0..states.len()).collect();
        order.sort_by_key(|&i| states[i].depth);
        for i in order {
            let own = &def.states[i].permissions;
            let parent: Vec<String> = states[i]
                .parent
                .map(|p| states[p].permissions.clone())
                .unwrap_or_default();
            states[i].permissions = match def.states[i].inherit {
                Inherit::None => own.clone(),
                Inherit::Additive => {
                    let mut v = parent;
                    v.extend(
                        own.iter()
                            .filter(|p| !v.contains(p))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    v
                }
                Inherit::Subtractive => parent.into_iter().filter(|p| !own.contains(p)).collect(),
                Inherit::Replace => parent,
            };
        }
        let initial = match lookup(&def.initial) {
            Some(i) if parents[i].is_none() => Some(i),
            Some(_) => {
                self.err(
                    &mpos,
                    format!(
                        "the machine's initial state `{}` must be a top-level state",
                        def.initial
                    ),
                );
                None
            }
            None => {
                self.err(
                    &mpos,
                    format!(
                        "the machine's initial state `{}` is not defined{}",
                        def.initial,
                        suggest(&def.initial)
                    ),
                );
                None
            }
        };
        // Transitions.
        let mut transitions = Vec::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for t in &def.transitions {
            if let Err(e) = polycall_core::MethodName::new(&t.name) {
                self.err(
                    &t.position,
                    format!("transition name {:?} is invalid: {e}", t.name),
                );
            }
            let from = lookup(&t.from);
            let to = lookup(&t.to);
            if from.is_none() {
                self.err(
                    &t.position,
                    format!(
                        "transition `{}` starts from unknown state `{}`{}",
                        t.name,
                        t.from,
                        suggest(&t.from)
                    ),
                );
            }
            if to.is_none() {
                self.err(
                    &t.position,
                    format!(
                        "transition `{}` goes to unknown state `{}`{}",
                        t.name,
                        t.to,
                        suggest(&t.to)
                    ),
                );
            }
            let guard = t.guard.as_ref().and_then(|g| {
                let pos = t.guard_position.clone().or_else(|| t.position.clone());
                self.compile_expr(&pos, &format!("transition `{}` guard", t.name), g)
            });
            let action = self.compile_action(
                &t.position,
                &format!("transition `{}` action", t.name),
                &t.action,
            );
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            if t.kind == TransitionKind::Internal && from != to {
                self.err(
                    &t.position,
                    format!(
                        "internal transition `{}` must stay in `{}` (to = from)",
                        t.name, t.from
                    ),
                );
            }
            if states[from].terminal {
                self.err(
                    &t.position,
                    format!(
                        "transition `{}` leaves final state `{}`: a final state stays final",
                        t.name, t.from
                    ),
                );
            }
            by_name
                .entry(t.name.clone())
                .or_default()
                .push(transitions.len());
            transitions.push(CompiledTransition {
                name: t.name.clone(),
                from,
                to,
                guard,
                action,
                kind: t.kind,
            });
        }
        let Some(initial) = initial else {
            return Err(DefinitionErrors(self.errors));
        };
        let mut machine = Machine {
            hash: String::new(),
            def,
            states,
            index,
            transitions,
            by_name,
            initial,
        };
        // Reachability: states some sequence of transitions can enter.
        let mut reached: BTreeSet<StateId> = machine.initial_configuration();
        let mut queue: VecDeque<StateId> = reached.iter().copied().collect();
        while let Some(s) = queue.pop_front() {
            for t in machine.transitions.iter().filter(|t| t.from == s) {
                let mut entered = BTreeSet::new();
                machine.enter_defaults(t.to, &mut entered);
                entered.extend(machine.ancestors(t.to));
                for e in entered {
                    if reached.insert(e) {
                        queue.push_back(e);
                    }
                }
            }
        }
        for (i, s) in machine.states.iter().enumerate() {
            if s.terminal && !reached.contains(&i) {
                let pos = machine.def.states[i].position.clone();
                self.err(
                    &pos,
                    format!(
                        "final state `{}` is unreachable: no transition path from `{}` enters it",
                        s.name, machine.def.initial
                    ),
                );
            }
        }
        self.check_crdt(&machine.def);
        if !self.errors.is_empty() {
            return Err(DefinitionErrors(self.errors));
        }
        machine.hash = definition_hash(&machine.def);
        Ok(machine)
    }
}

impl Compiler {
    /// CRDT field kinds belong to eventual machines, and a declared field's initial
    /// value must be of its kind (a counter an integer, a set an array).
    fn check_crdt(&mut self, def: &MachineDef) {
        use crate::definition::{FieldKind, Replication};
        if def.consistency != Replication::Eventual && !def.crdt.is_empty() {
            self.err(
                &def.position,
                "`crdt` declares context fields of an eventual machine: add consistency = \"eventual\""
                    .to_string(),
            );
        }
        for (field, kind) in &def.crdt {
            let ok = match (kind, def.context.get(field)) {
                (_, None) | (FieldKind::Register, _) => true,
                (FieldKind::Counter, Some(v)) => v.is_i64(),
                (FieldKind::Set, Some(v)) => v.is_array(),
            };
            if !ok {
                let (kind, want) = match kind {
                    FieldKind::Counter => ("counter", "an integer"),
                    _ => ("set", "an array"),
                };
                self.err(
                    &def.position,
                    format!(
                        "context field `{field}` is a {kind} but its initial value is not {want}"
                    ),
                );
            }
        }
    }
}

/// One edit apart (a typo), for "did you mean".
fn close(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

/// BLAKE3 over the definition without positions (moving a line does not change the
/// machine's version).
fn definition_hash(def: &MachineDef) -> String {
    let mut d = def.clone();
    d.position = None;
    for s in &mut d.states {
        s.position = None;
    }
    for t in &mut d.transitions {
        t.position = None;
        t.guard_position = None;
    }
    let json = serde_json::to_value(&d).unwrap_or_default();
    blake3::hash(crate::canonical::to_string(&json).as_bytes())
        .to_hex()
        .to_string()
}
