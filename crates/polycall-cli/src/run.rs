//! `polycall run`: the runtime in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use polycall::Status;
use polycall::net::limit::ConcurrencyLimitConfig;
use polycall::net::rate_limit::RateLimitConfig;
use polycall::runtime::{DEFAULT_ENDPOINT, Runtime, RuntimeConfig};
use serde_json::json;

use crate::output::{Out, exit};

/// Arguments of `polycall run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where to listen: HOST:PORT (port 0 = any free port) or unix:PATH.
    #[arg(long, default_value = DEFAULT_ENDPOINT, env = "POLYCALL_ENDPOINT")]
    endpoint: String,
    /// Write the endpoint actually bound to this file (useful with port 0).
    #[arg(long)]
    endpoint_file: Option<PathBuf>,
    /// Where the runtime keeps its files.
    #[arg(long, default_value = ".polycall", env = "POLYCALL_STATE_DIR")]
    state_dir: PathBuf,
    /// Most connections at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Time given to calls in flight at shutdown, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    drain_timeout_ms: u64,
    /// Calls per second each client may make (burst the same); over it, `busy`.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Calls the runtime serves at once; over it, `busy` — low priorities are shed first.
    #[arg(long)]
    max_concurrency: Option<usize>,
}

pub async fn run(args: RunArgs, out: Out) -> u8 {
    let endpoint = match args.endpoint.parse() {
        Ok(e) => e,
        Err(e) => return out.fail("run", &Status::invalid_input(format!("{e}"))),
    };
    let mut config = RuntimeConfig {
        endpoint,
        state_dir: args.state_dir.clone(),
        ..RuntimeConfig::default()
    };
    config.server.max_connections = args.max_connections;
    config.server.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    config.qos.rate_limit = args.rate_limit.map(|n| RateLimitConfig {
        per_second: n,
        burst: n,
        ..RateLimitConfig::default()
    });
    config.qos.concurrency = args.max_concurrency.map(|n| ConcurrencyLimitConfig {
        max: n,
        ..ConcurrencyLimitConfig::default()
    });
    let runtime = match Runtime::start(config).await {
        Ok(r) => r,
        Err(e) => return out.fail_with("run", &Status::unavailable(e.to_string()), exit::RUNTIME),
    };
    let bound = runtime.local_endpoint().to_string();
    if let Some(f) = &args.endpoint_file
        && let Err(e) = std::fs::write(f, format!("{bound}\n"))
    {
        runtime.shutdown().await;
        return out.fail_with(
            "run",
            &Status::invalid_input(format!("cannot write {}: {e}", f.display())),
            exit::INPUT,
        );
    }
    tracing::info!(endpoint = %bound, state_dir = %args.state_dir.display(), "polycall runtime listening");
    if !out.quiet && out.format == crate::output::Format::Text {
        eprintln!(
            "polycall runtime listening on {bound} (state in {}); stop with Ctrl-C or `polycall stop`",
            args.state_dir.display()
        );
    }
    let interrupted = wait_for_stop(&runtime).await;
    tracing::info!("shutting down: finishing calls in flight");
    runtime.shutdown().await;
    let _ = std::fs::remove_file(args.state_dir.join("runtime.json"));
    let _ = std::fs::remove_file(args.state_dir.join("runtime.token"));
    if interrupted {
        return exit::INTERRUPTED;
    }
    out.ok(
        "run",
        json!({"endpoint": bound, "stopped": true}),
        String::new,
    )
}

/// Waits for SIGTERM (true = clean), SIGINT (interrupted) or `sys.shutdown`.
async fn wait_for_stop(runtime: &Runtime) -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            runtime.shutdown_requested().await;
            return false;
        };
        tokio::select! {
            _ = term.recv() => false,
            _ = int.recv() => true,
            _ = runtime.shutdown_requested() => false,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => true,
            _ = runtime.shutdown_requested() => false,
        }
    }
}
