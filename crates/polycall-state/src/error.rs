//! Why a state-machine operation failed, and the call status each reason maps to.

use polycall_core::{Code, Status};

/// Why an operation on a machine or an instance failed. Nothing changed when one of
/// these is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    /// No machine of that name is loaded.
    #[error("no machine named `{0}` is loaded")]
    UnknownMachine(String),
    /// No instance of that id.
    #[error("no instance `{0}`; create it first")]
    UnknownInstance(String),
    /// The instance id is taken.
    #[error("instance `{0}` exists already")]
    InstanceExists(String),
    /// No state of that name.
    #[error("no state named `{0}`")]
    UnknownState(String),
    /// No transition of that name.
    #[error("machine `{machine}` has no transition `{transition}`; it has: {}", known.join(", "))]
    UnknownTransition {
        /// The machine.
        machine: String,
        /// The name asked for.
        transition: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// The transition exists but none of its sources is active.
    #[error("`{transition}` fires from {} but the instance is in {}", from.join(" or "), current.join(", "))]
    NotFromCurrent {
        /// The transition.
        transition: String,
        /// Its sources.
        from: Vec<String>,
        /// The instance's current states.
        current: Vec<String>,
    },
    /// Every candidate's guard was false.
    #[error("`{transition}` refused by its guard: {}", guards.join(" / "))]
    GuardRejected {
        /// The transition.
        transition: String,
        /// The guards that were false.
        guards: Vec<String>,
    },
    /// A guard failed to evaluate (a missing field, a type error).
    #[error("guard failed to evaluate: {0}")]
    Guard(String),
    /// An action failed to evaluate.
    #[error("action failed to evaluate: {0}")]
    Action(String),
    /// The transition would leave a final state.
    #[error("state `{0}` is final: nothing leaves it")]
    Final(String),
    /// The transition touches a locked state.
    #[error("state `{0}` is locked; unlock it first")]
    Locked(String),
    /// The caller may not fire this transition.
    #[error("{0}")]
    PermissionDenied(String),
    /// The instance or snapshot is of another machine version.
    #[error(
        "instance `{instance}` is of machine version {have} but the loaded machine is {machine}; restore a snapshot of this version or create a new instance"
    )]
    VersionMismatch {
        /// The instance.
        instance: String,
        /// Its version.
        have: String,
        /// The loaded machine's version.
        machine: String,
    },
    /// An integrity hash does not match.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// Another precondition failed.
    #[error("{0}")]
    Precondition(String),
    /// The request is not acceptable.
    #[error("{0}")]
    InvalidInput(String),
    /// The store failed.
    #[error("state store: {0}")]
    Store(String),
    /// A replicated store could not take the operation now (no leader, the leader out
    /// of reach). When the leader went away during a write, the write may still commit:
    /// read the instance before retrying.
    #[error("{0}")]
    Unavailable(String),
    /// This host does not offer the operation (e.g. history on a replicated host).
    #[error("{0}")]
    Unsupported(String),
}

impl StateError {
    /// The call status code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownMachine(_)
            | Self::UnknownInstance(_)
            | Self::UnknownState(_)
            | Self::UnknownTransition { .. } => Code::NotFound,
            Self::InstanceExists(_) => Code::AlreadyExists,
            Self::NotFromCurrent { .. }
            | Self::GuardRejected { .. }
            | Self::Final(_)
            | Self::Locked(_)
            | Self::VersionMismatch { .. }
            | Self::Precondition(_) => Code::FailedPrecondition,
            Self::Guard(_) | Self::Action(_) | Self::InvalidInput(_) | Self::Integrity(_) => {
                Code::InvalidInput
            }
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Store(_) => Code::Internal,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unsupported(_) => Code::Unsupported,
        }
    }
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<redb::Error> for StateError {
    fn from(e: redb::Error) -> Self {
        Self::Store(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                Self::Store(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
