//! Hot reload: the runtime watches its configuration file and applies what it can
//! without a restart.
//!
//! On every change of the file: load it again (all layers: file, environment, `--set`).
//! An invalid file is rejected — every diagnostic is logged, the running configuration
//! is kept, and the rejection shows under `config` in `sys.health`. A valid one is
//! compared with the running one: QoS (`[qos]`) is replaced live on every connection,
//! already open ones included; `[limits]` apply to connections opened afterwards (open
//! ones keep what they negotiated); the connection cap and drain timeout change at once;
//! the log level through the caller's hook. Every other change is logged as
//! `restart required: KEY`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Runtime;
use crate::config::{Config, LoadedConfig, RuntimeConfigExt};

/// Sets the log level (e.g. through a `tracing_subscriber::reload` handle).
pub type LogLevelHook =
    Arc<dyn Fn(&str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Why a configuration file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The configuration came from defaults, the environment or `--set` only.
    #[error("the configuration did not come from a file: nothing to watch")]
    NoFile,
    /// The operating system refused the watch.
    #[error("cannot watch {}: {reason}", path.display())]
    Watch {
        /// The file or directory.
        path: PathBuf,
        /// What the watcher said.
        reason: String,
    },
}

/// A running watch of the configuration file; dropping it stops the watch.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigWatcher")
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Keys a running runtime applies itself.
fn applied_live(key: &str) -> bool {
    key.starts_with("qos.")
        || key.starts_with("limits.")
        || key == "log.level"
        || key == "runtime.max_connections"
        || key == "runtime.drain_timeout_ms"
        || key == "auth.file"
        || key.starts_with("tls.")
}

/// Watches `running.path` and applies changes to `runtime` as they come.
///
/// ```no_run
/// # async fn demo(runtime: std::sync::Arc<polycall_runtime::Runtime>, loaded: polycall_runtime::config::LoadedConfig) {
/// let watcher = polycall_runtime::reload::watch(runtime, loaded, vec![], vec![], None).unwrap();
/// // … keep `watcher` alive as long as the runtime runs.
/// # drop(watcher); }
/// ```
pub fn watch(
    runtime: Arc<Runtime>,
    running: LoadedConfig,
    env: Vec<(String, String)>,
    sets: Vec<String>,
    log_level: Option<LogLevelHook>,
) -> Result<ConfigWatcher, WatchError> {
    let path: PathBuf = running.path.clone().ok_or(WatchError::NoFile)?;
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_owned());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // Watch the directory: editors replace files by renaming over them.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| WatchError::Watch {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| WatchError::Watch {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
    let source = path.display().to_string();
    runtime.set_config_status(json!({"source": source, "reloads": 0, "last_reload": null}));
    let task = tokio::spawn(async move {
        let mut running = running;
        let mut last_text = std::fs::read_to_string(&path).ok();
        let mut reloads = 0u64;
        while rx.recv().await.is_some() {
            // Let a burst of events (write, rename, chmod) settle, then read once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let text = std::fs::read_to_string(&path).ok();
            if text == last_text {
                continue;
            }
            last_text = text;
            reloads += 1;
            let last_reload = match Config::load(Some(&path), &env, &sets) {
                Err(diagnostics) => {
                    for d in &diagnostics {
                        tracing::warn!("configuration reload rejected: {d}");
                    }
                    tracing::warn!("keeping the running configuration");
                    json!({
                        "ok": false,
                        "at_unix_ms": now_ms(),
                        "errors": diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "running": "the previous configuration is kept",
                    })
                }
                Ok(new) => {
                    let diff = running.diff(&new);
                    let (applied, not_live): (Vec<_>, Vec<_>) =
                        diff.reloadable.iter().partition(|c| applied_live(&c.key));
                    let next = match new.runtime_config() {
                        Ok(next) => next,
                        Err(e) => {
                            tracing::warn!("configuration change not applied: {e}");
                            let last_reload = json!({
                                "ok": false,
                                "at_unix_ms": now_ms(),
                                "errors": [e.to_string()],
                                "running": "the previous configuration is kept",
                            });
                            runtime.set_config_status(json!({"source": source, "reloads": reloads, "last_reload": last_reload}));
                            continue;
                        }
                    };
                    let changed = |k: &str| applied.iter().any(|c| c.key == k);
                    if applied
                        .iter()
                        .any(|c| c.key.starts_with("qos.") || c.key == "auth.file")
                    {
                        runtime.update_qos(&next.qos);
                    }
                    if applied.iter().any(|c| c.key.starts_with("tls."))
                        && let Err(e) = runtime.reload_tls(next.tls.clone())
                    {
                        tracing::warn!("TLS settings not reloaded: {e}");
                    }
                    if applied
                        .iter()
                        .any(|c| c.key.starts_with("limits.") || c.key == "auth.file")
                    {
                        runtime.update_server(|s| s.connection = next.server.connection.clone());
                    }
                    if changed("runtime.max_connections") {
                        runtime.update_server(|s| s.max_connections = next.server.max_connections);
                    }
                    if changed("runtime.drain_timeout_ms") {
                        runtime.update_server(|s| s.drain_timeout = next.server.drain_timeout);
                    }
                    if applied.iter().any(|c| c.key == "log.level")
                        && let Some(hook) = &log_level
                        && let Err(e) = hook(new.log_level())
                    {
                        tracing::warn!("log level not changed: {e}");
                    }
                    let mut restart: Vec<String> = diff
                        .restart_required
                        .iter()
                        .map(|c| c.key.clone())
                        .collect();
                    restart.extend(not_live.iter().map(|c| c.key.clone()));
                    for key in &restart {
                        tracing::warn!("restart required: {key}");
                    }
                    let applied: Vec<String> = applied.iter().map(|c| c.key.clone()).collect();
                    if !applied.is_empty() {
                        tracing::info!(keys = ?applied, "configuration reloaded");
                    }
                    running = new;
                    json!({"ok": true, "at_unix_ms": now_ms(), "applied": applied, "restart_required": restart})
                }
            };
            runtime.set_config_status(
                json!({"source": source, "reloads": reloads, "last_reload": last_reload}),
            );
        }
    });
    Ok(ConfigWatcher {
        _watcher: watcher,
        task,
    })
}
