//! # polycall-state
//!
//! Durable state machines. A machine (states with entry and exit actions and a final
//! flag, named transitions with CEL guards and actions, hierarchy with parallel regions,
//! locks, permissions) is defined in Rust ([`MachineDef::builder`]) or in TOML
//! ([`load`]); instances of it live in a [`StateHost`], which handles one event per
//! instance at a time, logs every accepted event in redb before acknowledging it, and
//! recovers instances after a crash from snapshots and the log. Point-in-time recovery
//! ([`StateHost::restore_to`]), online backups ([`StateHost::backup`]) and pictures
//! ([`graph`]) come with it.
//!
//! ```
//! use polycall_state::{MachineDef, Machine, StateHost, StoreConfig};
//! use serde_json::json;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let door = MachineDef::builder("door", "closed")
//!     .state("closed")
//!     .state("open")
//!     .guarded("open", "closed", "open", "event.key == 42")
//!     .transition("close", "open", "closed")
//!     .build();
//! let dir = std::env::temp_dir().join(format!("polycall-state-doc-{}", std::process::id()));
//! let host = StateHost::open(vec![Machine::compile(door)?], StoreConfig::new(dir.join("state.redb")))?;
//! host.create("door", Some("front"), json!({})).await?;
//! assert!(host.fire("front", "open", json!({"key": 1}), None).await.is_err()); // guard
//! let (_, now) = host.fire("front", "open", json!({"key": 42}), None).await?;
//! assert_eq!(now.current, vec!["open".to_string()]);
//! # drop(host); std::fs::remove_dir_all(dir)?; Ok(()) }
//! ```

pub mod canonical;
pub mod crdt;
mod definition;
mod error;
mod expr;
pub mod graph;
mod host;
mod instance;
pub mod load;
mod machine;
#[cfg(feature = "raft")]
pub mod raft;
mod store;
pub mod time;
pub use time::TimeError;

pub use definition::{
    Action, DEFAULT_SNAPSHOT_EVERY, Durability, FieldKind, Inherit, MachineBuilder, MachineDef,
    Position, Replication, StateDef, TransitionDef, TransitionKind,
};
pub use error::StateError;
pub use expr::{Expr, ExprError};
pub use host::{At, Change, InstanceView, StateHost};
pub use instance::{Fired, InstanceState, Snapshot};
pub use machine::{DefinitionError, DefinitionErrors, Machine};
pub use store::{BackupInfo, CommitStats, Entry, Record, Store, StoreConfig, now_us};
