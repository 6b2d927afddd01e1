//! An instance of an eventual machine as CRDTs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Counter, Hlc, Register, ReplicaId, Set};
use crate::definition::FieldKind;
use crate::error::StateError;
use crate::instance::InstanceState;

/// One context field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// Last writer wins.
    Register(Register),
    /// Concurrent additions add up.
    Counter(Counter),
    /// Observed-remove set.
    Set(Set),
}

impl Field {
    fn join(&mut self, other: &Field) {
        match (self, other) {
            (Field::Register(a), Field::Register(b)) => a.join(b),
            (Field::Counter(a), Field::Counter(b)) => a.join(b),
            (Field::Set(a), Field::Set(b)) => a.join(b),
            // Nodes loaded different definitions: keep one by a rule every node applies
            // alike, so they still converge.
            (mine, theirs) => {
                if theirs.rank() > mine.rank() {
                    *mine = theirs.clone();
                }
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Field::Register(_) => 0,
            Field::Counter(_) => 1,
            Field::Set(_) => 2,
        }
    }

    fn value(&self) -> Json {
        match self {
            Field::Register(r) => parse(r.value()),
            Field::Counter(c) => Json::from(c.value()),
            Field::Set(s) => Json::Array(s.elements().into_iter().map(parse).collect()),
        }
    }
}

fn parse(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}

fn canonical(v: &Json) -> String {
    crate::canonical::to_string(v)
}

/// An instance's state but its context: last writer wins as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shape {
    id: String,
    machine: String,
    version: String,
    active: BTreeSet<String>,
    versions: BTreeMap<String, u64>,
    locked: BTreeSet<String>,
    events: u64,
}

/// An instance as CRDTs: which states are active (with locks, entry counts and the
/// event count) is one register; each context field is the CRDT its machine declares.
/// Changes are made as deltas ([`Doc::change`]) and joined.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Doc {
    shape: Register,
    fields: BTreeMap<String, Field>,
}

impl Doc {
    /// Joins another doc (or a delta) into this one.
    pub fn join(&mut self, other: &Doc) {
        self.shape.join(&other.shape);
        for (k, f) in &other.fields {
            match self.fields.get_mut(k) {
                Some(mine) => mine.join(f),
                None => {
                    self.fields.insert(k.clone(), f.clone());
                }
            }
        }
    }

    /// The instance this doc holds (`None`: an empty doc).
    pub fn state(&self) -> Option<InstanceState> {
        let shape: Shape = serde_json::from_str(self.shape.value()).ok()?;
        let context: serde_json::Map<String, Json> = self
            .fields
            .iter()
            .map(|(k, f)| (k.clone(), f.value()))
            .collect();
        Some(InstanceState {
            id: shape.id,
            machine: shape.machine,
            version: shape.version,
            active: shape.active,
            context: Json::Object(context),
            versions: shape.versions,
            locked: shape.locked,
            events: shape.events,
        })
    }

    /// The latest clock reading in the doc (what a replica that joins it observes).
    pub fn stamp(&self) -> Hlc {
        let fields = self.fields.values().filter_map(|f| match f {
            Field::Register(r) => Some(r.stamp()),
            _ => None,
        });
        fields.fold(self.shape.stamp(), Hlc::max)
    }

    /// The delta that takes this doc from `old` (the state it holds; `None`: a new
    /// instance) to `new`, made by `replica` at `stamp`: the shape when it changed, a
    /// register per changed field, a counter's difference, a set's added and removed
    /// elements. `kinds` says which fields are counters and sets (others: registers).
    pub fn change(
        &self,
        old: Option<&InstanceState>,
        new: &InstanceState,
        kinds: &BTreeMap<String, FieldKind>,
        replica: ReplicaId,
        stamp: Hlc,
    ) -> Result<Doc, StateError> {
        let shape = Shape {
            id: new.id.clone(),
            machine: new.machine.clone(),
            version: new.version.clone(),
            active: new.active.clone(),
            versions: new.versions.clone(),
            locked: new.locked.clone(),
            events: new.events,
        };
        let shape_text =
            serde_json::to_string(&shape).map_err(|e| StateError::Store(e.to_string()))?;
        let mut delta = Doc::default();
        if old.is_none() || shape_text != self.shape.value() {
            delta.shape = Register::new(shape_text, stamp);
        }
        let empty = serde_json::Map::new();
        let old_context = old.and_then(|o| o.context.as_object()).unwrap_or(&empty);
        let new_context = new.context.as_object().ok_or_else(|| {
            StateError::InvalidInput("an instance's context is a JSON object".into())
        })?;
        for (k, v) in new_context {
            let before = old_context.get(k);
            if before == Some(v) && old.is_some() {
                continue;
            }
            let kind = kinds.get(k).copied().unwrap_or_default();
            let field = match kind {
                FieldKind::Register => Field::Register(Register::new(canonical(v), stamp)),
                FieldKind::Counter => {
                    let int = |v: Option<&Json>| match v {
                        None => Ok(0),
                        Some(v) => v.as_i64().ok_or_else(|| {
                            StateError::InvalidInput(format!(
                                "context field `{k}` is a counter: it holds integers, not {v}"
                            ))
                        }),
                    };
                    let by = int(Some(v))?.saturating_sub(int(before)?);
                    let current = match self.fields.get(k) {
                        Some(Field::Counter(c)) => c.clone(),
                        _ => Counter::default(),
                    };
                    Field::Counter(current.add(replica, by))
                }
                FieldKind::Set => {
                    let elements = |v: Option<&Json>| match v {
                        None => Ok(BTreeSet::new()),
                        Some(Json::Array(a)) => Ok(a.iter().map(canonical).collect()),
                        Some(other) => Err(StateError::InvalidInput(format!(
                            "context field `{k}` is a set: it holds arrays, not {other}"
                        ))),
                    };
                    let (was, is) = (elements(before)?, elements(Some(v))?);
                    let mut current = match self.fields.get(k) {
                        Some(Field::Set(s)) => s.clone(),
                        _ => Set::default(),
                    };
                    let mut change = Set::default();
                    for gone in was.difference(&is) {
                        let d = current.remove(gone);
                        current.join(&d);
                        change.join(&d);
                    }
                    for added in is.difference(&was) {
                        let d = current.add(replica, added);
                        current.join(&d);
                        change.join(&d);
                    }
                    Field::Set(change)
                }
            };
            delta.fields.insert(k.clone(), field);
        }
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Clock;
    use serde_json::json;

    fn state(active: &str, context: Json, events: u64) -> InstanceState {
        InstanceState {
            id: "c-1".into(),
            machine: "cart".into(),
            version: "v".into(),
            active: BTreeSet::from([active.to_string()]),
            context,
            versions: BTreeMap::new(),
            locked: BTreeSet::new(),
            events,
        }
    }

    #[test]
    fn two_sides_of_a_partition_converge_by_the_documented_rules() {
        let kinds = BTreeMap::from([
            ("visits".to_string(), FieldKind::Counter),
            ("items".to_string(), FieldKind::Set),
        ]);
        let (mut ca, mut cb) = (Clock::new(1), Clock::new(2));
        let start = state(
            "open",
            json!({"visits": 0, "items": ["pen"], "owner": "ada"}),
            0,
        );
        let mut a = Doc::default();
        let created = a.change(None, &start, &kinds, 1, ca.tick(10)).unwrap();
        a.join(&created);
        let mut b = a.clone();
        // Side a: two visits, adds "ink", owner "bob", moves to "paid".
        let next = state(
            "paid",
            json!({"visits": 2, "items": ["ink", "pen"], "owner": "bob"}),
            1,
        );
        let da = a
            .change(a.state().as_ref(), &next, &kinds, 1, ca.tick(20))
            .unwrap();
        a.join(&da);
        // Side b, later by the clock: one visit, removes "pen", owner "cy".
        let next = state("open", json!({"visits": 1, "items": [], "owner": "cy"}), 1);
        let db = b
            .change(b.state().as_ref(), &next, &kinds, 2, cb.tick(30))
            .unwrap();
        b.join(&db);
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.join(&db);
        ba.join(&da);
        assert_eq!(ab, ba);
        let merged = ab.state().unwrap();
        assert_eq!(merged.context["visits"], json!(3), "counters add up");
        assert_eq!(
            merged.context["items"],
            json!(["ink"]),
            "pen removed, ink added"
        );
        assert_eq!(merged.context["owner"], json!("cy"), "the later write wins");
        assert!(merged.active.contains("open"), "the later shape wins");
    }

    #[test]
    fn a_counter_refuses_what_is_not_an_integer() {
        let kinds = BTreeMap::from([("n".to_string(), FieldKind::Counter)]);
        let err = Doc::default()
            .change(
                None,
                &state("s", json!({"n": "x"}), 0),
                &kinds,
                1,
                Hlc::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("counter"), "{err}");
    }
}
