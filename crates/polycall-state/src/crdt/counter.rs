//! A counter whose concurrent additions add up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// A PN-counter: each replica's total of increments and of decrements, joined by taking
/// the larger of each; the value is their difference.
///
/// ```
/// use polycall_state::crdt::Counter;
/// let (mut a, mut b) = (Counter::default(), Counter::default());
/// let da = a.add(1, 5);
/// a.join(&da);
/// let db = b.add(2, -2);
/// b.join(&db);
/// a.join(&b);
/// b.join(&a);
/// assert_eq!((a.value(), b.value()), (3, 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counter {
    up: BTreeMap<ReplicaId, u64>,
    down: BTreeMap<ReplicaId, u64>,
}

impl Counter {
    /// The delta that adds `by` (negative: subtracts) on behalf of `replica`.
    pub fn add(&self, replica: ReplicaId, by: i64) -> Counter {
        let mut delta = Counter::default();
        let (side, own) = if by >= 0 {
            (&mut delta.up, &self.up)
        } else {
            (&mut delta.down, &self.down)
        };
        let before = own.get(&replica).copied().unwrap_or(0);
        side.insert(replica, before.saturating_add(by.unsigned_abs()));
        delta
    }

    /// Joins another counter (or a delta) into this one.
    pub fn join(&mut self, other: &Counter) {
        for (mine, theirs) in [(&mut self.up, &other.up), (&mut self.down, &other.down)] {
            for (r, n) in theirs {
                let e = mine.entry(*r).or_insert(0);
                *e = (*e).max(*n);
            }
        }
    }

    /// The value: increments minus decrements.
    pub fn value(&self) -> i64 {
        let sum = |m: &BTreeMap<ReplicaId, u64>| m.values().map(|&n| i128::from(n)).sum::<i128>();
        (sum(&self.up) - sum(&self.down)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}
