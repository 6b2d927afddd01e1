//! `polycall state`: check and draw machine definitions, and — through a running
//! runtime — point-in-time recovery, backups, a live stream of transitions and an HTML
//! timeline. Instances themselves are driven with `polycall call state.<machine>.fire`.

use std::path::PathBuf;
use std::time::Duration;

use polycall::Status;
use polycall::state::{Store, graph, load};
use serde_json::{Value, json};

use crate::Target;
use crate::client::{call_json, runtime_token};
use crate::output::{FormatArg, Out, exit};

/// `polycall state …`.
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Validate machine definitions (a directory of *.toml, or one file): every mistake
    /// with file:line:col; exit 3 when any.
    Check {
        /// A directory of definitions or one file.
        path: PathBuf,
    },
    /// Draw a machine: `--format dot` (graphviz; also the default), `mermaid` or `json`.
    Graph {
        /// The machine's name.
        machine: String,
        /// Read the definition from this directory instead of asking the runtime.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Highlight this instance's active states (asks the runtime).
        #[arg(long)]
        id: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Point-in-time recovery: put one instance (`--instance`) or every instance back to
    /// a time (RFC 3339, or microseconds since the epoch) or a log index.
    Restore {
        /// The time.
        #[arg(long, conflicts_with = "index", required_unless_present = "index")]
        at: Option<String>,
        /// The log index.
        #[arg(long)]
        index: Option<u64>,
        /// Only this instance (with --machine).
        #[arg(long, requires = "machine")]
        instance: Option<String>,
        /// The instance's machine.
        #[arg(long)]
        machine: Option<String>,
        /// The runtime token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// An online, consistent backup of the running runtime's state to a new file.
    Backup {
        /// The backup file (must not exist).
        file: PathBuf,
        /// The runtime token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Install a backup as the database of a fresh runtime (refuses to overwrite).
    RestoreBackup {
        /// The backup file.
        file: PathBuf,
        /// The database to create (default: STATE_DIR/state.redb).
        #[arg(long)]
        database: Option<PathBuf>,
        /// The runtime's state directory.
        #[arg(long, default_value = ".polycall", env = "POLYCALL_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Print transitions as they are logged (one JSON object a line).
    Watch {
        /// Start after this log index (default: only new ones).
        #[arg(long)]
        after: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Write a self-contained HTML timeline of an instance's transitions.
    Timeline {
        /// The machine.
        machine: String,
        /// The instance.
        id: String,
        /// The HTML file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

fn write_out(output: &Option<PathBuf>, text: &str) -> Result<(), Status> {
    match output {
        Some(p) => std::fs::write(p, text)
            .map_err(|e| Status::invalid_input(format!("cannot write {}: {e}", p.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Runs a `polycall state` command.
pub async fn state(cmd: StateCommand, format: FormatArg, timeout: Duration, out: Out) -> u8 {
    match cmd {
        StateCommand::Check { path } => {
            let result = if path.is_dir() {
                load::from_dir(&path).map(|m| {
                    m.into_iter()
                        .map(|m| m.name().to_string())
                        .collect::<Vec<_>>()
                })
            } else {
                load::from_file(&path).map(|m| vec![m.name().to_string()])
            };
            match result {
                Ok(names) => out.ok("state check", json!({"machines": names}), || {
                    format!("{} machine(s) valid: {}", names.len(), names.join(", "))
                }),
                Err(errs) => {
                    if out.format == crate::output::Format::Text {
                        eprintln!("{errs}");
                    }
                    let n = errs.0.len();
                    out.fail_with(
                        "state check",
                        &Status::invalid_input(format!("{n} error(s) in the machine definitions")),
                        exit::INPUT,
                    )
                }
            }
        }
        StateCommand::Graph {
            machine,
            dir,
            id,
            output,
            target,
        } => {
            let result = async {
                let (format, graph_format) = match format {
                    FormatArg::Text | FormatArg::Dot => (graph::Format::Dot, "dot"),
                    FormatArg::Mermaid => (graph::Format::Mermaid, "mermaid"),
                    FormatArg::Json => (graph::Format::Json, "json"),
                };
                let text = match (&dir, &id) {
                    (Some(dir), None) => {
                        let machines = load::from_dir(dir)
                            .map_err(|e| Status::invalid_input(e.to_string()))?;
                        let m = machines
                            .iter()
                            .find(|m| m.name() == machine)
                            .ok_or_else(|| {
                                Status::not_found(format!(
                                    "no machine `{machine}` in {}",
                                    dir.display()
                                ))
                            })?;
                        graph::render(m, format, &[])
                    }
                    _ => {
                        let mut input = json!({"format": graph_format});
                        if let Some(id) = &id {
                            input["id"] = json!(id);
                        }
                        let v = call_json(
                            &target,
                            &format!("state.{machine}.graph"),
                            input,
                            timeout,
                            true,
                        )
                        .await?;
                        v["text"].as_str().unwrap_or_default().to_string()
                    }
                };
                write_out(&output, &text)
            }
            .await;
            match result {
                Ok(()) => exit::OK,
                Err(s) => out.fail("state graph", &s),
            }
        }
        StateCommand::Restore {
            at,
            index,
            instance,
            machine,
            token,
            target,
        } => {
            let result = async {
                let mut input = match (&at, index) {
                    (Some(t), _) => json!({"at": polycall::state::time::parse(t).map_err(|e| Status::invalid_input(e.to_string()))?}),
                    (None, Some(i)) => json!({"index": i}),
                    (None, None) => return Err(Status::invalid_input("give --at TIME or --index N")),
                };
                let name = match (&instance, &machine) {
                    (Some(id), Some(m)) => {
                        input["id"] = json!(id);
                        format!("state.{m}.recover")
                    }
                    _ => {
                        input["token"] = json!(runtime_token(&target, token)?);
                        "state.recover".to_string()
                    }
                };
                call_json(&target, &name, input, timeout, false).await
            }
            .await;
            match result {
                Ok(v) => {
                    let n = v["restored"].as_array().map_or(0, Vec::len);
                    out.ok("state restore", v, || format!("{n} instance(s) restored"))
                }
                Err(s) => out.fail("state restore", &s),
            }
        }
        StateCommand::Backup {
            file,
            token,
            target,
        } => {
            let result = async {
                let path =
                    std::path::absolute(&file).map_err(|e| Status::invalid_input(e.to_string()))?;
                let token = runtime_token(&target, token)?;
                call_json(
                    &target,
                    "state.backup",
                    json!({"path": path.display().to_string(), "token": token}),
                    timeout,
                    false,
                )
                .await
            }
            .await;
            match result {
                Ok(v) => out.ok("state backup", v.clone(), || {
                    format!(
                        "backup {}: {} records up to log index {}, {} bytes",
                        v["path"].as_str().unwrap_or("?"),
                        v["records"],
                        v["last_index"],
                        v["bytes"]
                    )
                }),
                Err(s) => out.fail("state backup", &s),
            }
        }
        StateCommand::RestoreBackup {
            file,
            database,
            state_dir,
        } => {
            let db = database.unwrap_or_else(|| state_dir.join("state.redb"));
            match Store::restore_backup(&file, &db) {
                Ok(()) => out.ok(
                    "state restore-backup",
                    json!({"database": db.display().to_string()}),
                    || {
                        format!(
                            "{} installed as {}; start the runtime with it",
                            file.display(),
                            db.display()
                        )
                    },
                ),
                Err(e) => out.fail_with("state restore-backup", &Status::from(e), exit::INPUT),
            }
        }
        StateCommand::Watch {
            after,
            count,
            target,
        } => {
            // A server stream of the changes as they happen (`state.subscribe`).
            let mut input = json!({});
            if let Some(a) = after {
                input["after"] = json!(a);
            }
            match crate::client::stream_json(&target, "state.subscribe", input, timeout).await {
                Ok(mut changes) => {
                    use futures_util::StreamExt;
                    let mut seen = 0u64;
                    while let Some(c) = changes.next().await {
                        match c {
                            Ok(c) => {
                                println!("{c}");
                                seen += 1;
                                if count.is_some_and(|n| seen >= n) {
                                    return exit::OK;
                                }
                            }
                            Err(s) => return out.fail("state watch", &s),
                        }
                    }
                    exit::OK
                }
                Err(s) => out.fail("state watch", &s),
            }
        }
        StateCommand::Timeline {
            machine,
            id,
            output,
            target,
        } => {
            let result = async {
                let v: Value = call_json(
                    &target,
                    &format!("state.{machine}.timeline"),
                    json!({"id": id}),
                    timeout,
                    true,
                )
                .await?;
                write_out(&output, v["html"].as_str().unwrap_or_default())
            }
            .await;
            match result {
                Ok(()) => exit::OK,
                Err(s) => out.fail("state timeline", &s),
            }
        }
    }
}
