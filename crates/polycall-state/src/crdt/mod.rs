//! Conflict-free replicated data types: the context fields of an eventual machine
//! ([`Replication::Eventual`](crate::Replication)) and the instance built of them.
//!
//! Every type here is a join-semilattice: [`join`](Counter::join) is commutative,
//! associative and idempotent, so replicas that have joined the same changes hold the
//! same value whatever the order and however often the changes arrived. Changes are
//! made as *deltas* (a small value of the same type holding only what changed), which is
//! what replicas ship to each other; joining a delta is the same as joining a whole
//! state.
//!
//! - [`Counter`]: an integer whose concurrent additions add up (a PN-counter);
//! - [`Register`]: last writer wins, by [`Hlc`] (hybrid logical clock; ties cannot
//!   happen: the clock carries the replica id);
//! - [`Set`]: a set of JSON values where an add wins over a concurrent remove that did
//!   not see it (an observed-remove set with a causal context, no tombstones);
//! - [`Doc`]: an instance — its active states as a register, each context field as the
//!   CRDT its machine declares.
//!
//! Replica ids are random per data file (not node ids): a node whose disk was wiped
//! comes back as a new replica, so its new changes never collide with its old ones.

mod counter;
mod doc;
mod hlc;
mod register;
mod set;

pub use counter::Counter;
pub use doc::{Doc, Field};
pub use hlc::{Clock, ClockDrift, Hlc};
pub use register::Register;
pub use set::{CausalContext, Dot, Set};

/// A replica's id: random per data file.
pub type ReplicaId = u64;
