//! Cluster backup files (`state.backup` on a cluster node): one redb file holding the
//! replicated instances as of one applied index and the eventual instances as this
//! node had merged them, each as its own table. Written under a temporary name and
//! renamed, so a file at the destination is always whole; never overwritten.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StateError;
use crate::store::BackupInfo;

/// Replicated instances: id → its value (JSON, as replicated).
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster_instances");
/// Eventual instances: id → a self-verifying snapshot (JSON) of its merged state.
const EVENTUAL: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster_eventual");
/// `applied_index` → the index the replicated instances were read at; `replicated` →
/// 1 when they were backed up, 0 when the node had none to back up.
const META: TableDefinition<&str, u64> = TableDefinition::new("cluster_meta");

/// A cluster backup as read.
#[derive(Debug)]
pub(super) struct BackupFile {
    /// The applied index the replicated instances were read at (0: none were).
    pub(super) taken_at: u64,
    /// Replicated instances: id and value.
    pub(super) instances: Vec<(String, Vec<u8>)>,
    /// Eventual instances: id and snapshot (JSON). Empty in backups from before
    /// eventual instances were backed up.
    pub(super) eventual: Vec<(String, Vec<u8>)>,
    /// Whether the replicated instances were backed up (a node with eventual machines
    /// only backs up none, and its backups leave replicated instances alone).
    pub(super) replicated: bool,
}

/// Writes `file` to `dest`, a path that must not exist yet.
pub(super) fn write(dest: &std::path::Path, file: &BackupFile) -> Result<BackupInfo, StateError> {
    let tmp = crate::store::partial_backup_path(dest)?;
    let db = redb::Database::create(&tmp)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    {
        let mut t = txn.open_table(INSTANCES)?;
        for (id, value) in &file.instances {
            t.insert(id.as_str(), value.as_slice())?;
        }
        let mut t = txn.open_table(EVENTUAL)?;
        for (id, snapshot) in &file.eventual {
            t.insert(id.as_str(), snapshot.as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert("applied_index", file.taken_at)?;
        meta.insert("replicated", u64::from(file.replicated))?;
    }
    txn.commit()?;
    drop(db);
    std::fs::rename(&tmp, dest).map_err(|e| StateError::Store(e.to_string()))?;
    Ok(BackupInfo {
        path: dest.to_path_buf(),
        records: (file.instances.len() + file.eventual.len()) as u64,
        last_index: file.taken_at,
        bytes: std::fs::metadata(dest).map_or(0, |m| m.len()),
    })
}

/// Reads the backup at `path`.
pub(super) fn read(path: &std::path::Path) -> Result<BackupFile, StateError> {
    let not_backup = |e: &dyn std::fmt::Display| {
        StateError::InvalidInput(format!(
            "{} is not a cluster backup (from state.backup on a cluster node): {e}",
            path.display()
        ))
    };
    let db = redb::Database::open(path).map_err(|e| not_backup(&e))?;
    let read = db.begin_read()?;
    let meta = read.open_table(META).map_err(|e| not_backup(&e))?;
    let taken_at = meta
        .get("applied_index")?
        .map(|v| v.value())
        .ok_or_else(|| not_backup(&"it has no applied index"))?;
    // Backups from before the flag were all of replicated instances.
    let replicated = meta.get("replicated")?.is_none_or(|v| v.value() != 0);
    let rows = |table: TableDefinition<&str, &[u8]>| -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let t = match read.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(not_backup(&e)),
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    };
    Ok(BackupFile {
        taken_at,
        instances: rows(INSTANCES)?,
        eventual: rows(EVENTUAL)?,
        replicated,
    })
}
