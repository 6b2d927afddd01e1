//! `polycall run`: the runtime in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use polycall::Status;
use polycall::net::limit::ConcurrencyLimitConfig;
use polycall::net::rate_limit::RateLimitConfig;
use polycall::runtime::config::{LoadedConfig, RuntimeConfigExt};
use polycall::runtime::{Runtime, RuntimeConfig};
use serde_json::json;

use crate::output::{Out, exit};

/// Arguments of `polycall run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Override a configuration key: `--set section.key=value` (repeatable; wins over
    /// the file and the environment, and is applied again on every reload).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Where to listen: HOST:PORT (port 0 = any free port) or unix:PATH [default:
    /// runtime.endpoint of --config, else 127.0.0.1:7464].
    #[arg(long, env = "POLYCALL_ENDPOINT")]
    endpoint: Option<String>,
    /// Write the endpoint actually bound to this file (useful with port 0).
    #[arg(long)]
    endpoint_file: Option<PathBuf>,
    /// Where the runtime keeps its files [default: runtime.state_dir of --config, else
    /// .polycall].
    #[arg(long, env = "POLYCALL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Threads that run connections: 1 (one event loop: a routed call never crosses
    /// threads), N, or 0 for one per core [default: runtime.worker_threads of --config,
    /// else 1].
    #[arg(long)]
    pub(crate) worker_threads: Option<usize>,
    /// Most connections at once [default: runtime.max_connections of --config, else 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time given to calls in flight at shutdown, in milliseconds [default:
    /// runtime.drain_timeout_ms of --config, else 10000].
    #[arg(long)]
    drain_timeout_ms: Option<u64>,
    /// Calls per second each client may make (burst the same); over it, `busy`.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Calls the runtime serves at once; over it, `busy` — low priorities are shed first.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Load state machine definitions (*.toml) from this directory [default:
    /// state.machine_dir of --config, else none].
    #[arg(long)]
    machines: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS and authentication. Only for a
    /// network you trust entirely: anyone who reaches the port can call every method.
    #[arg(long)]
    insecure_remote: bool,
    /// Serve the test aids `debug.echo` and `debug.sleep` [default:
    /// runtime.debug_methods of --config, else off].
    #[arg(long)]
    debug_methods: bool,
    /// Serve /metrics, /healthz, /readyz and /dashboard on this HOST:PORT (loopback
    /// unless --insecure-remote) [default: admin.listen of --config, else none].
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<std::net::SocketAddr>,
    /// Write the admin address actually bound to this file (useful with port 0).
    #[arg(long)]
    admin_file: Option<PathBuf>,
    /// Serve every method over HTTP/JSON on this HOST:PORT: POST /v1/{service}/{method},
    /// /openapi.json, /docs (loopback or TLS unless --insecure-remote) [default:
    /// gateway.listen of --config, else none].
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<std::net::SocketAddr>,
    /// Write the HTTP address actually bound to this file (useful with port 0).
    #[arg(long)]
    http_file: Option<PathBuf>,
    /// Find other runtimes and forward calls for methods served elsewhere:
    /// static:HOST:PORT,HOST:PORT, etcd:http://HOST:PORT or dns:SRV-NAME[@IP:PORT]
    /// [default: discovery.registry of --config, else alone].
    #[arg(long, value_name = "REGISTRY")]
    discover: Option<String>,
    /// This runtime's name in the discovery registry [default: discovery.name, else its
    /// endpoint].
    #[arg(long, value_name = "NAME")]
    discover_name: Option<String>,
    /// Serve the routes, API versions and API keys of this file on the HTTP gateway
    /// (docs/gateway.md) [default: gateway.routes of --config, else none].
    #[arg(long, value_name = "FILE")]
    http_routes: Option<PathBuf>,
    /// Send call spans to this OTLP/gRPC collector (http://HOST:4317) [default:
    /// observe.otlp_endpoint of --config, else none].
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// Percent of the traces the runtime starts itself that are recorded (callers'
    /// sampled traces always are) [default: observe.trace_sample_percent, else 1].
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    trace_sample: Option<u8>,
    /// Do not measure calls: no per-method metrics, anomaly detection or outlier
    /// ejection [default: observe.metrics of --config, else measured].
    #[arg(long)]
    no_metrics: bool,
    /// This runtime's node id in a raft cluster (with --cluster) [default:
    /// cluster.node_id of --config, else a single node].
    #[arg(long, requires = "cluster")]
    node_id: Option<u64>,
    /// The cluster's voters, `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (each node's call
    /// endpoint, this one included; a node listed here listens on its own address
    /// unless --endpoint says otherwise) [default: cluster.members of --config].
    #[arg(long, requires = "node_id", value_name = "ID=HOST:PORT,...")]
    cluster: Option<String>,
}

/// Runs the runtime: embedded defaults, or the loaded `--config` file; flags win over
/// both.
pub async fn run(
    args: RunArgs,
    loaded: Option<LoadedConfig>,
    log_level: polycall::runtime::reload::LogLevelHook,
    out: Out,
) -> u8 {
    let mut config = match loaded.as_ref().map(LoadedConfig::runtime_config) {
        None => RuntimeConfig::default(),
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            return out.fail_with("run", &Status::invalid_input(e.to_string()), exit::INPUT);
        }
    };
    config.insecure_remote = args.insecure_remote;
    config.debug_methods |= args.debug_methods;
    if let Some(ep) = &args.endpoint {
        config.endpoint = match ep.parse() {
            Ok(e) => e,
            Err(e) => return out.fail("run", &Status::invalid_input(format!("{e}"))),
        };
    }
    if let Some(d) = &args.state_dir {
        config.state_dir = d.clone();
    }
    if let Some(d) = &args.machines {
        config.state.machine_dir = Some(d.clone());
    }
    if let Some(n) = args.max_connections {
        config.server.max_connections = n;
    }
    if let Some(ms) = args.drain_timeout_ms {
        config.server.drain_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = args.rate_limit {
        config.qos.rate_limit = Some(RateLimitConfig::default().per_second(n).burst(n));
    }
    if let Some(n) = args.max_concurrency {
        config.qos.concurrency = Some(ConcurrencyLimitConfig::default().max(n));
    }
    if let Some(a) = args.admin {
        config.observe.admin = Some(a);
    }
    if let Some(a) = args.http {
        // The flag names the address; `[gateway]`'s other keys still apply.
        let mut g = polycall::runtime::GatewaySettings::new(a);
        if let Some(l) = &loaded {
            g = g
                .max_body(usize::try_from(l.config.gateway.max_body).unwrap_or(usize::MAX))
                .timeout(std::time::Duration::from_millis(
                    l.config.gateway.timeout_ms,
                ));
            if let Some(file) = &l.config.gateway.routes {
                g = g.routes(file.clone());
            }
        }
        config.gateway = Some(g);
    }
    if let Some(registry) = &args.discover {
        let registry = match polycall::runtime::DiscoveryRegistry::parse(registry) {
            Ok(r) => r,
            Err(e) => {
                return out.fail_with(
                    "run",
                    &Status::invalid_input(format!("--discover: {e}")),
                    exit::INPUT,
                );
            }
        };
        let mut d = polycall::runtime::DiscoverySettings::new(registry);
        if let Some(l) = &loaded {
            let c = &l.config.discovery;
            d = d
                .ttl(Duration::from_secs(c.ttl_s))
                .refresh(Duration::from_millis(c.refresh_ms));
            if let Some(n) = &c.name {
                d = d.name(n.clone());
            }
            if let Some(a) = &c.advertise {
                d = d.advertise(a.clone());
            }
        }
        config.discovery = Some(d);
    }
    if let Some(name) = &args.discover_name {
        match config.discovery.take() {
            Some(d) => config.discovery = Some(d.name(name.clone())),
            None => {
                return out.fail_with(
                    "run",
                    &Status::invalid_input(
                        "--discover-name names this runtime in a registry: add --discover (or discovery.registry in --config)",
                    ),
                    exit::INPUT,
                );
            }
        }
    }
    if let Some(file) = &args.http_routes {
        match config.gateway.take() {
            Some(g) => config.gateway = Some(g.routes(file.clone())),
            None => {
                return out.fail_with(
                    "run",
                    &Status::invalid_input(
                        "--http-routes needs a gateway to serve them: add --http HOST:PORT (or gateway.listen in --config)",
                    ),
                    exit::INPUT,
                );
            }
        }
    }
    if let Some(u) = &args.otlp {
        config.observe.otlp_endpoint = Some(u.clone());
    }
    if let Some(p) = args.trace_sample {
        config.observe.trace_sample = f64::from(p) / 100.0;
    }
    if args.no_metrics {
        config.observe.metrics = false;
    }
    if let (Some(id), Some(members)) = (args.node_id, &args.cluster) {
        let members = match polycall::runtime::ClusterSettings::parse_members(members) {
            Ok(m) => m,
            Err(e) => {
                return out.fail_with(
                    "run",
                    &Status::invalid_input(format!("--cluster: {e}")),
                    exit::INPUT,
                );
            }
        };
        let mut settings = polycall::runtime::ClusterSettings::new(id, members);
        if let Some(c) = loaded.as_ref().map(|l| &l.config.cluster) {
            // The rest of [cluster] still applies.
            settings = settings.timing(
                Duration::from_millis(c.heartbeat_ms),
                Duration::from_millis(c.election_timeout_ms),
            );
            settings.data_file = c.data_file.clone();
            settings.snapshot_every = c.snapshot_every;
            settings.peer_identities = c.peer_identities.clone();
        }
        config.cluster = Some(settings);
    }
    if let Some(c) = &config.cluster
        && args.endpoint.is_none()
        && let Some(own) = c.members.get(&c.node_id)
    {
        // The node listens where its peers are told to find it.
        config.endpoint = match own.parse() {
            Ok(e) => e,
            Err(e) => {
                return out.fail_with(
                    "run",
                    &Status::invalid_input(format!("cluster member {}: {e}", c.node_id)),
                    exit::INPUT,
                );
            }
        };
    }
    let state_dir = config.state_dir.clone();
    let runtime = match Runtime::start(config).await {
        Ok(r) => std::sync::Arc::new(r),
        Err(e @ polycall::runtime::RuntimeError::InsecureRemote { .. }) => {
            return out.fail_with("run", &Status::invalid_input(e.to_string()), exit::INPUT);
        }
        Err(e @ polycall::runtime::RuntimeError::State(_)) => {
            return out.fail_with("run", &Status::invalid_input(e.to_string()), exit::INPUT);
        }
        Err(e @ polycall::runtime::RuntimeError::Tls(_)) => {
            return out.fail_with("run", &Status::invalid_input(e.to_string()), exit::INPUT);
        }
        Err(e @ polycall::runtime::RuntimeError::Unsupported(_)) => {
            return out.fail("run", &Status::unsupported(e.to_string()));
        }
        Err(e @ polycall::runtime::RuntimeError::Admin(_)) => {
            return out.fail_with("run", &Status::invalid_input(e.to_string()), exit::INPUT);
        }
        Err(e) => return out.fail_with("run", &Status::unavailable(e.to_string()), exit::RUNTIME),
    };
    // With a configuration file, watch it and apply what can change live.
    let _watcher = match loaded {
        // Only a file can change: with --set / environment alone there is nothing to watch.
        Some(l) if l.path.is_some() => {
            let env = polycall::runtime::config::Config::process_env();
            match polycall::runtime::reload::watch(
                runtime.clone(),
                l,
                env,
                args.sets.clone(),
                Some(log_level),
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("configuration changes will need a restart: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let bound = runtime.local_endpoint().to_string();
    if let Some(f) = &args.endpoint_file
        && let Err(e) =
            polycall::security::private_file::replace(f, format!("{bound}\n").as_bytes())
    {
        runtime.shutdown().await;
        return out.fail_with(
            "run",
            &Status::invalid_input(format!("cannot write {}: {e}", f.display())),
            exit::INPUT,
        );
    }
    for (file, addr) in [
        (&args.admin_file, runtime.admin_addr()),
        (&args.http_file, runtime.http_addr()),
    ] {
        if let (Some(f), Some(a)) = (file, addr)
            && let Err(e) =
                polycall::security::private_file::replace(f, format!("{a}\n").as_bytes())
        {
            runtime.shutdown().await;
            return out.fail_with(
                "run",
                &Status::invalid_input(format!("cannot write {}: {e}", f.display())),
                exit::INPUT,
            );
        }
    }
    tracing::info!(endpoint = %bound, state_dir = %state_dir.display(), "polycall runtime listening");
    if !out.quiet && out.format == crate::output::Format::Text {
        eprintln!(
            "polycall runtime listening on {bound} (state in {}); stop with Ctrl-C or `polycall stop`",
            state_dir.display()
        );
    }
    let interrupted = wait_for_stop(&runtime).await;
    tracing::info!("shutting down: finishing calls in flight");
    runtime.shutdown().await;
    let _ = std::fs::remove_file(state_dir.join("runtime.json"));
    let _ = std::fs::remove_file(state_dir.join("runtime.token"));
    if interrupted {
        return exit::INTERRUPTED;
    }
    out.ok(
        "run",
        json!({"endpoint": bound, "stopped": true}),
        String::new,
    )
}

/// Waits for SIGTERM (true = clean), SIGINT (interrupted) or `sys.shutdown`; SIGHUP
/// reloads the TLS certificates meanwhile.
async fn wait_for_stop(runtime: &Runtime) -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            runtime.shutdown_requested().await;
            return false;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return false,
                _ = int.recv() => return true,
                _ = runtime.shutdown_requested() => return false,
                _ = hup.recv() => match runtime.reload_tls(None) {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("SIGHUP: no TLS to reload"),
                    Err(e) => tracing::warn!("SIGHUP: certificates not reloaded, the previous ones stay: {e}"),
                },
            }
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
