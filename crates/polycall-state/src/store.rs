//! The transaction log in redb: every accepted event is a record in the log before it is
//! acknowledged; snapshots bound recovery time and let the log be compacted; one
//! committer thread turns concurrent appends into one transaction and one fsync (group
//! commit).
//!
//! Tables (keys and values are fixed-width integers, strings and postcard bytes):
//!
//! | table | key | value |
//! |---|---|---|
//! | `log` | (instance, index) | [`Record`] |
//! | `order` | index | instance |
//! | `snapshots` | (instance, index) | [`StoredSnapshot`] |
//! | `instances` | instance | machine name |
//! | `created` | instance | (log index, time) of its (latest) creation |
//! | `definitions` | machine version | the definition (JSON) |
//! | `meta` | name | u64 (`next_index`) |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::definition::Durability;
use crate::error::StateError;

pub(crate) const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
pub(crate) const ORDER: TableDefinition<u64, &str> = TableDefinition::new("order");
pub(crate) const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");
pub(crate) const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
/// When each instance was (last) created: (log index, microseconds since the epoch).
pub(crate) const CREATED: TableDefinition<&str, (u64, u64)> = TableDefinition::new("created");
pub(crate) const DEFINITIONS: TableDefinition<&str, &str> = TableDefinition::new("definitions");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One event of one instance, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// The instance was created with this context (JSON text).
    Created {
        /// The machine.
        machine: String,
        /// Its version (definition hash).
        version: String,
        /// The caller's context (JSON text).
        context: String,
    },
    /// A transition fired.
    Fired {
        /// Its name.
        transition: String,
        /// The event payload (JSON text).
        event: String,
        /// Who fired it.
        principal: Option<String>,
    },
    /// A state was locked.
    Locked(String),
    /// A state was unlocked.
    Unlocked(String),
    /// The instance was replaced by this state (a snapshot restore or point-in-time
    /// recovery), as JSON text of an [`crate::InstanceState`].
    Restored(String),
    /// The instance was removed (a point-in-time recovery to before it existed).
    Deleted,
}

/// A log record: when, what, and the integrity hash of the state it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Microseconds since the Unix epoch, when the event was accepted.
    pub ts_us: u64,
    /// The event.
    pub entry: Entry,
    /// BLAKE3 of the resulting state's canonical encoding ("" after `Deleted`).
    pub integrity: String,
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// When it was taken (the time of the record at its index).
    pub ts_us: u64,
    /// The state (JSON text of an [`crate::InstanceState`]).
    pub state: String,
    /// BLAKE3 of the state's canonical encoding.
    pub integrity: String,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How the store runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// For `batched` machines: the longest an acknowledged event waits for its fsync
    /// (the loss window in a crash).
    pub batch_window: Duration,
    /// Snapshots kept per instance; the log behind the oldest is compacted away, so
    /// point-in-time recovery reaches back to it.
    pub keep_snapshots: usize,
    /// Most appends one transaction (one fsync) carries.
    pub max_batch: usize,
}

impl StoreConfig {
    /// Defaults for a database at `path`: 50 ms batch window, 16 snapshots kept,
    /// 4,096 appends per commit.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            batch_window: Duration::from_millis(50),
            keep_snapshots: 16,
            max_batch: 4096,
        }
    }

    /// Sets the database file.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets, for `batched` machines, the longest an acknowledged event waits for its fsync.
    pub fn batch_window(mut self, batch_window: Duration) -> Self {
        self.batch_window = batch_window;
        self
    }

    /// Sets the snapshots kept per instance (how far back point-in-time recovery reaches).
    pub fn keep_snapshots(mut self, keep_snapshots: usize) -> Self {
        self.keep_snapshots = keep_snapshots;
        self
    }

    /// Sets the most appends one transaction (one fsync) carries.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }
}

/// One write of an append request.
#[derive(Debug)]
pub(crate) enum Write {
    /// A record for an instance (the committer assigns its index).
    Append {
        instance: String,
        /// For a creation: the machine and the time.
        created: Option<(String, u64)>,
        record: Vec<u8>,
    },
    /// A snapshot at the index of this request's last append, then compaction.
    Snapshot { instance: String, snapshot: Vec<u8> },
}

struct Request {
    writes: Vec<Write>,
    durability: Durability,
    done: tokio::sync::oneshot::Sender<Result<u64, StateError>>,
}

/// Counters of the committer, for benchmarks and health.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Of which with an fsync.
    pub syncs: u64,
    /// Append requests carried.
    pub requests: u64,
    /// Transactions that failed (their requests were refused).
    pub failures: u64,
    /// Whether the newest transaction failed: the store is not taking writes.
    pub failing: bool,
    /// Time spent in synced commits (the fsync included), nanoseconds in total: with
    /// `syncs`, the mean fsync latency.
    pub sync_nanos: u64,
    /// Time spent in unsynced commits, nanoseconds in total.
    pub commit_nanos: u64,
}

/// The state database: reads from any thread, writes through the committer.
pub struct Store {
    db: Arc<Database>,
    config: StoreConfig,
    tx: Option<mpsc::Sender<Request>>,
    committer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<std::sync::Mutex<CommitStats>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.config.path)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the database and starts the committer.
    pub fn open(config: StoreConfig) -> Result<Self, StateError> {
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StateError::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(&config.path).map_err(|e| {
            StateError::Store(format!(
                "cannot open {}: {e} (is another runtime using this data directory?)",
                config.path.display()
            ))
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOG)?;
            txn.open_table(ORDER)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(CREATED)?;
            txn.open_table(DEFINITIONS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(std::sync::Mutex::new(CommitStats::default()));
        let committer = {
            let db = db.clone();
            let cfg = config.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("polycall-state-commit".into())
                .spawn(move || commit_loop(db, cfg, rx, stats))
                .map_err(|e| StateError::Store(format!("cannot start the committer: {e}")))?
        };
        Ok(Self {
            db,
            config,
            tx: Some(tx),
            committer: Some(committer),
            stats,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The committer's counters.
    pub fn stats(&self) -> CommitStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Logs `writes` in one request; resolves with the index of its last append once
    /// the writes are as durable as `durability` asks.
    pub(crate) async fn submit(
        &self,
        writes: Vec<Write>,
        durability: Durability,
    ) -> Result<u64, StateError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| StateError::Store("the store is closed".into()))?
            .send(Request {
                writes,
                durability,
                done,
            })
            .map_err(|_| StateError::Store("the committer stopped".into()))?;
        rx.await
            .map_err(|_| StateError::Store("the committer stopped before answering".into()))?
    }

    /// Records a machine definition by version (recovery replays an instance with the
    /// definition it was created with).
    pub(crate) fn put_definition(&self, version: &str, json: &str) -> Result<(), StateError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(DEFINITIONS)?;
            if t.get(version)?.is_none() {
                t.insert(version, json)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A consistent copy of the whole database, taken from one read transaction while
    /// writes go on; refuses to overwrite `dest`.
    pub fn backup(&self, dest: &Path) -> Result<BackupInfo, StateError> {
        let tmp = partial_backup_path(dest)?;
        let read = self.db.begin_read()?;
        let out = Database::create(&tmp)?;
        let mut txn = out.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let records = copy_table(&read, &txn, LOG)?;
        copy_table(&read, &txn, ORDER)?;
        copy_table(&read, &txn, SNAPSHOTS)?;
        copy_table(&read, &txn, INSTANCES)?;
        copy_table(&read, &txn, CREATED)?;
        copy_table(&read, &txn, DEFINITIONS)?;
        copy_table(&read, &txn, META)?;
        txn.commit()?;
        drop(out);
        std::fs::rename(&tmp, dest).map_err(|e| {
            StateError::Store(format!("cannot move the backup to {}: {e}", dest.display()))
        })?;
        let last_index = {
            let meta = read.open_table(META)?;
            meta.get("next_index")?
                .map_or(0, |v| v.value())
                .saturating_sub(1)
        };
        Ok(BackupInfo {
            path: dest.to_path_buf(),
            records,
            last_index,
            bytes: std::fs::metadata(dest).map_or(0, |m| m.len()),
        })
    }

    /// Installs `backup` as the database at `data_file` for a fresh runtime; refuses to
    /// overwrite an existing database.
    pub fn restore_backup(backup: &Path, data_file: &Path) -> Result<(), StateError> {
        if data_file.exists() {
            return Err(StateError::InvalidInput(format!(
                "{} exists; restore a backup only into a fresh data directory",
                data_file.display()
            )));
        }
        // Opening it proves it is a database (and repairs nothing silently).
        Database::open(backup).map_err(|e| {
            StateError::InvalidInput(format!("{} is not a state backup: {e}", backup.display()))
        })?;
        if let Some(dir) = data_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Store(e.to_string()))?;
        }
        std::fs::copy(backup, data_file)
            .map_err(|e| StateError::Store(format!("cannot copy {}: {e}", backup.display())))?;
        Ok(())
    }

    /// Stops the committer after it has written (and fsynced) everything submitted.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx = None;
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Copies every row of `table` from a read transaction into a write transaction (of
/// another database); the number of rows.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StateError> {
    let src = read.open_table(table)?;
    let mut dst = write.open_table(table)?;
    let mut rows = 0;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
        rows += 1;
    }
    Ok(rows)
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupInfo {
    /// The file.
    pub path: PathBuf,
    /// Log records copied.
    pub records: u64,
    /// The last log index it holds.
    pub last_index: u64,
    /// Its size.
    pub bytes: u64,
}

/// Where a backup to `dest` is written before it is renamed to `dest` (a stale one of
/// an interrupted backup removed); refuses a `dest` that exists.
pub(crate) fn partial_backup_path(dest: &Path) -> Result<std::path::PathBuf, StateError> {
    if dest.exists() {
        return Err(StateError::InvalidInput(format!(
            "{} exists; choose a new backup file",
            dest.display()
        )));
    }
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    Ok(tmp)
}

fn commit_loop(
    db: Arc<Database>,
    cfg: StoreConfig,
    rx: mpsc::Receiver<Request>,
    stats: Arc<std::sync::Mutex<CommitStats>>,
) {
    // Set when a commit without fsync holds batched events: by then, sync.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let first = match unsynced_since {
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
            Some(t) => {
                let wait = (t + cfg.batch_window).saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let started = Instant::now();
                        if sync_now(&db).is_ok() {
                            unsynced_since = None;
                            let took =
                                u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            bump(&stats, 0, true, took);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut batch = vec![first];
        let mut appends: usize = batch[0].writes.len();
        while appends < cfg.max_batch {
            match rx.try_recv() {
                Ok(r) => {
                    appends += r.writes.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let sync = batch.iter().any(|r| r.durability == Durability::Sync)
            || unsynced_since.is_some_and(|t| t.elapsed() >= cfg.batch_window);
        let started = Instant::now();
        let result = commit(&db, &cfg, &batch, sync);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => {
                bump(&stats, batch.len() as u64, sync, took);
                if sync {
                    unsynced_since = None;
                } else if unsynced_since.is_none()
                    && batch.iter().any(|r| r.durability == Durability::Batched)
                {
                    unsynced_since = Some(Instant::now());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "state store commit failed; {} requests refused", batch.len());
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.failures += 1;
                s.failing = true;
            }
        }
        match result {
            Ok(lasts) => {
                for (r, last) in batch.into_iter().zip(lasts) {
                    let _ = r.done.send(Ok(last));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.done.send(Err(e.clone()));
                }
            }
        }
    }
    // Everything written so far reaches the disk before the store closes.
    let _ = sync_now(&db);
}

fn bump(stats: &std::sync::Mutex<CommitStats>, requests: u64, sync: bool, took_nanos: u64) {
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    s.failing = false;
    if sync {
        s.sync_nanos = s.sync_nanos.saturating_add(took_nanos);
    } else {
        s.commit_nanos = s.commit_nanos.saturating_add(took_nanos);
    }
    if requests > 0 {
        s.commits += 1;
        s.requests += requests;
    }
    if sync {
        s.syncs += 1;
    }
}

fn sync_now(db: &Database) -> Result<(), StateError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

/// One transaction for the whole batch; the index of each request's last append.
fn commit(
    db: &Database,
    cfg: &StoreConfig,
    batch: &[Request],
    sync: bool,
) -> Result<Vec<u64>, StateError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if sync {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    })?;
    let mut lasts = Vec::with_capacity(batch.len());
    {
        let mut meta = txn.open_table(META)?;
        let mut next = meta.get("next_index")?.map_or(1, |v| v.value());
        let mut log = txn.open_table(LOG)?;
        let mut order = txn.open_table(ORDER)?;
        let mut snaps = txn.open_table(SNAPSHOTS)?;
        let mut instances = txn.open_table(INSTANCES)?;
        let mut created_at = txn.open_table(CREATED)?;
        for req in batch {
            let mut last = 0;
            for w in &req.writes {
                match w {
                    Write::Append {
                        instance,
                        created,
                        record,
                    } => {
                        last = next;
                        log.insert((instance.as_str(), next), record.as_slice())?;
                        order.insert(next, instance.as_str())?;
                        if let Some((m, ts)) = created {
                            instances.insert(instance.as_str(), m.as_str())?;
                            created_at.insert(instance.as_str(), (next, *ts))?;
                        }
                        next += 1;
                    }
                    Write::Snapshot { instance, snapshot } => {
                        snaps.insert((instance.as_str(), last), snapshot.as_slice())?;
                        compact(
                            &mut log,
                            &mut order,
                            &mut snaps,
                            instance,
                            cfg.keep_snapshots,
                        )?;
                    }
                }
            }
            lasts.push(last);
        }
        meta.insert("next_index", next)?;
    }
    txn.commit()?;
    Ok(lasts)
}

/// Keeps the newest `keep` snapshots of `instance` and drops its log records and
/// snapshots behind the oldest kept one.
fn compact(
    log: &mut redb::Table<(&str, u64), &[u8]>,
    order: &mut redb::Table<u64, &str>,
    snaps: &mut redb::Table<(&str, u64), &[u8]>,
    instance: &str,
    keep: usize,
) -> Result<(), StateError> {
    let keep = keep.max(1);
    let indexes: Vec<u64> = snaps
        .range((instance, 0)..=(instance, u64::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    if indexes.len() <= keep {
        return Ok(());
    }
    let oldest_kept = indexes[indexes.len() - keep];
    for i in &indexes[..indexes.len() - keep] {
        snaps.remove((instance, *i))?;
    }
    let old: Vec<u64> = log
        .range((instance, 0)..=(instance, oldest_kept))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for i in old {
        log.remove((instance, i))?;
        order.remove(i)?;
    }
    Ok(())
}
