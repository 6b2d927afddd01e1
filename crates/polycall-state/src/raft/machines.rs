//! The machines a cluster node hosts, by name and by version: what the replicated and
//! the eventual host both look instances' definitions up in.

use std::collections::HashMap;
use std::sync::Arc;

use super::NodeId;
use crate::error::StateError;
use crate::host::InstanceView;
use crate::instance::InstanceState;
use crate::machine::Machine;

/// Loaded machines by name (for new instances) and by version (an instance is changed
/// with the definition it was created with).
#[derive(Debug)]
pub(super) struct NodeMachines {
    by_name: HashMap<String, Arc<Machine>>,
    by_version: HashMap<String, Arc<Machine>>,
    node: NodeId,
}

impl NodeMachines {
    /// The machines node `node` hosts; a name given twice is refused.
    pub(super) fn new(machines: Vec<Machine>, node: NodeId) -> Result<Self, StateError> {
        let mut by_name = HashMap::new();
        let mut by_version = HashMap::new();
        for m in machines {
            let m = Arc::new(m);
            by_version.insert(m.version().to_string(), m.clone());
            if by_name.insert(m.name().to_string(), m.clone()).is_some() {
                return Err(StateError::InvalidInput(format!(
                    "machine `{}` is given twice",
                    m.name()
                )));
            }
        }
        Ok(Self {
            by_name,
            by_version,
            node,
        })
    }

    /// Every machine.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Machine> {
        self.by_name.values().map(|m| m.as_ref())
    }

    /// A machine by name, if loaded.
    pub(super) fn get(&self, name: &str) -> Option<&Machine> {
        self.by_name.get(name).map(|m| m.as_ref())
    }

    /// A machine by name, for a new instance.
    pub(super) fn named(&self, name: &str) -> Result<Arc<Machine>, StateError> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| StateError::UnknownMachine(name.to_string()))
    }

    /// The definition of machine version `version`.
    pub(super) fn version(&self, version: &str) -> Result<Arc<Machine>, StateError> {
        self.by_version.get(version).cloned().ok_or_else(|| {
            StateError::Store(format!(
                "machine version {version} is not loaded on node {}: every node of a cluster \
                 must load the same machine definitions",
                self.node
            ))
        })
    }

    /// An instance as callers see it, `index` being what produced it.
    pub(super) fn view(&self, state: InstanceState, index: u64) -> InstanceView {
        let (current, is_final) = match self.by_version.get(&state.version) {
            Some(m) => (state.current(m), state.is_final(m)),
            None => (Vec::new(), false),
        };
        InstanceView {
            integrity: state.integrity(),
            current,
            is_final,
            index,
            state,
        }
    }
}

/// The id of a new instance: `given` (checked), or `generated()`.
pub(super) fn instance_id(
    given: Option<&str>,
    generated: impl FnOnce() -> String,
) -> Result<String, StateError> {
    match given {
        Some(id) => {
            crate::host::check_instance_id(id)?;
            Ok(id.to_string())
        }
        None => Ok(generated()),
    }
}
