//! `polycall cluster`: the cluster a runtime belongs to — its status, and membership
//! changes (through the leader, with raft's joint consensus).

use std::time::Duration;

use polycall::Status;
use serde_json::{Value, json};

use crate::Target;
use crate::client::{call_json, runtime_token};
use crate::output::{Out, exit};

/// `polycall cluster …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// The leader, the term, the members, each member's log index and lag.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Add a node as a learner: it receives the log (a snapshot when far behind) without
    /// voting; answers once it has caught up.
    AddLearner {
        /// The new node's id.
        id: u64,
        /// Where it listens (HOST:PORT).
        addr: String,
        /// The runtime token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
        /// The runtime token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member (voter or learner).
    Remove {
        /// The member's id.
        id: u64,
        /// The runtime token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// One line per member: id, address, role, matched index and lag.
fn describe(v: &Value) -> String {
    let mut lines = vec![format!(
        "node {} is {} in term {}; leader: {}; log {} applied {}{}",
        v["node"],
        v["role"].as_str().unwrap_or("?"),
        v["term"],
        v["leader"]
            .as_u64()
            .map_or("none".into(), |l| l.to_string()),
        v["last_log_index"],
        v["applied_index"],
        if v["joint"].as_bool() == Some(true) {
            " (membership change under way)"
        } else {
            ""
        },
    )];
    for m in v["members"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {:>3}  {:<22} {:<8} matched {:<8} lag {}",
            m["id"],
            m["addr"].as_str().unwrap_or("?"),
            if m["voter"].as_bool() == Some(true) {
                "voter"
            } else {
                "learner"
            },
            m["matched"].as_u64().map_or("?".into(), |i| i.to_string()),
            m["lag"].as_u64().map_or("?".into(), |i| i.to_string()),
        ));
    }
    lines.join("\n")
}

/// Runs a `polycall cluster` command.
pub async fn cluster(command: ClusterCommand, timeout: Duration, out: Out) -> u8 {
    let (name, result) = match command {
        ClusterCommand::Status { target } => (
            "cluster status",
            call_json(&target, "sys.cluster.status", json!({}), timeout, true).await,
        ),
        ClusterCommand::AddLearner {
            id,
            addr,
            token,
            target,
        } => (
            "cluster add-learner",
            change(
                &target,
                "add_learner",
                json!({"id": id, "addr": addr}),
                token,
                timeout,
            )
            .await,
        ),
        ClusterCommand::Promote { id, token, target } => (
            "cluster promote",
            change(&target, "promote", json!({"id": id}), token, timeout).await,
        ),
        ClusterCommand::Remove { id, token, target } => (
            "cluster remove",
            change(&target, "remove", json!({"id": id}), token, timeout).await,
        ),
    };
    match result {
        Ok(v) => out.ok(name, v.clone(), || describe(&v)),
        Err(s) if s.code == polycall::Code::UnknownMethod => out.fail_with(
            name,
            &Status::invalid_input(
                "this runtime is not a cluster member (run it with --node-id and --cluster)",
            ),
            exit::INPUT,
        ),
        Err(s) => out.fail(name, &s),
    }
}

async fn change(
    target: &Target,
    method: &str,
    mut input: Value,
    token: Option<String>,
    timeout: Duration,
) -> Result<Value, Status> {
    input["token"] = json!(runtime_token(target, token)?);
    call_json(
        target,
        &format!("sys.cluster.{method}"),
        input,
        timeout,
        false,
    )
    .await
}
