//! An observed-remove set with a causal context (no tombstones).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// One add event: the replica that made it and its sequence number there.
pub type Dot = (ReplicaId, u64);

/// Which add events a replica has seen: a contiguous prefix per replica, plus the dots
/// seen out of order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CausalContext {
    seen: BTreeMap<ReplicaId, u64>,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.seen.get(&dot.0).is_some_and(|&n| n >= dot.1) || self.cloud.contains(dot)
    }

    /// The next dot of `replica` (one past every dot of it seen).
    fn next(&self, replica: ReplicaId) -> Dot {
        let prefix = self.seen.get(&replica).copied().unwrap_or(0);
        let cloud = self
            .cloud
            .range((replica, 0)..=(replica, u64::MAX))
            .next_back()
            .map_or(0, |d| d.1);
        (replica, prefix.max(cloud) + 1)
    }

    fn insert(&mut self, dot: Dot) {
        self.cloud.insert(dot);
        self.compact();
    }

    fn join(&mut self, other: &CausalContext) {
        for (r, n) in &other.seen {
            let e = self.seen.entry(*r).or_insert(0);
            *e = (*e).max(*n);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Moves dots that extend a replica's prefix into it, and drops covered ones (the
    /// cloud is visited in order, so one pass settles a chain).
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for (r, n) in cloud {
            let prefix = self.seen.entry(r).or_insert(0);
            if n == *prefix + 1 {
                *prefix = n;
            } else if n > *prefix {
                self.cloud.insert((r, n));
            }
        }
    }
}

/// A set of JSON values (as canonical text) where an add wins over a concurrent remove
/// that did not see it: each element is kept with the add events (dots) that put it
/// there; a remove deletes the dots it saw; joining keeps a dot both sides have, or one
/// side has and the other never saw.
///
/// ```
/// use polycall_state::crdt::Set;
/// let (mut a, mut b) = (Set::default(), Set::default());
/// let add = a.add(1, "\"apple\"");
/// a.join(&add);
/// b.join(&a);                      // b has seen the add
/// let remove = b.remove("\"apple\"");
/// b.join(&remove);
/// let again = a.add(1, "\"apple\""); // meanwhile a adds it again
/// a.join(&again);
/// a.join(&b);
/// b.join(&a);
/// assert_eq!(a.elements(), vec!["\"apple\""]); // the add b did not see wins
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Set {
    entries: BTreeMap<String, BTreeSet<Dot>>,
    context: CausalContext,
}

impl Set {
    /// The delta that adds `element` on behalf of `replica` (replacing the adds of it
    /// seen so far).
    pub fn add(&self, replica: ReplicaId, element: &str) -> Set {
        let dot = self.context.next(replica);
        let mut delta = self.remove(element);
        delta
            .entries
            .insert(element.to_string(), BTreeSet::from([dot]));
        delta.context.insert(dot);
        delta
    }

    /// The delta that removes `element` as this replica sees it.
    pub fn remove(&self, element: &str) -> Set {
        let mut delta = Set::default();
        for dot in self.entries.get(element).into_iter().flatten() {
            delta.context.insert(*dot);
        }
        delta
    }

    /// Joins another set (or a delta) into this one.
    pub fn join(&mut self, other: &Set) {
        let keys: BTreeSet<String> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let none = BTreeSet::new();
        for k in keys {
            let mine = self.entries.get(&k).unwrap_or(&none);
            let theirs = other.entries.get(&k).unwrap_or(&none);
            let kept: BTreeSet<Dot> = mine
                .iter()
                .filter(|d| theirs.contains(d) || !other.context.contains(d))
                .chain(theirs.iter().filter(|d| !self.context.contains(d)))
                .copied()
                .collect();
            if kept.is_empty() {
                self.entries.remove(&k);
            } else {
                self.entries.insert(k, kept);
            }
        }
        self.context.join(&other.context);
    }

    /// The elements (canonical JSON), in order.
    pub fn elements(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_add_and_remove_of_different_dots_keeps_the_unseen_add() {
        let mut a = Set::default();
        let d = a.add(1, "x");
        a.join(&d);
        let mut b = a.clone();
        // Both remove and re-add concurrently, in different orders.
        let rb = b.remove("x");
        b.join(&rb);
        let ra = a.add(1, "x");
        a.join(&ra);
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.join(&b);
        ba.join(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.elements(), vec!["x"]);
        // A remove that saw every add removes it everywhere.
        let r = ab.remove("x");
        ab.join(&r);
        ba.join(&r);
        assert!(ab.elements().is_empty() && ba.elements().is_empty());
        assert_eq!(ab, ba);
    }

    #[test]
    fn deltas_arriving_out_of_order_converge() {
        let mut source = Set::default();
        let mut deltas = Vec::new();
        for e in ["a", "b", "c"] {
            let d = source.add(9, e);
            source.join(&d);
            deltas.push(d);
        }
        let r = source.remove("b");
        source.join(&r);
        deltas.push(r);
        let mut sink = Set::default();
        for d in deltas.iter().rev() {
            sink.join(d);
        }
        assert_eq!(sink.elements(), source.elements());
        assert_eq!(sink.elements(), vec!["a", "c"]);
    }
}
