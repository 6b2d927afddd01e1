//! `polycall`: run the runtime, call methods, and look inside.
//!
//! Exit codes (libpolycall's contract): 0 ok, 1 runtime error, 2 usage, 3 config or
//! invalid input, 4 unsupported or unknown operation, 5 transport, 6 deadline, 7 auth,
//! 130 interrupted.

mod bindgen;
mod client;
mod cluster_cmd;
mod config_cmd;
mod demo;
mod output;
mod report;
mod run;
mod security_cmd;
mod state_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use output::{FormatArg, Out};

/// polycall: a polyglot call runtime.
#[derive(Debug, Parser)]
#[command(name = "polycall", version, about, long_about = None)]
struct Cli {
    /// A polycall.toml for `run` and `config` (docs/config.md).
    #[arg(long, global = true, env = "POLYCALL_CONFIG")]
    config: Option<PathBuf>,
    /// Output for people (text) or for programs (one JSON object); `state graph` also
    /// takes dot and mermaid.
    #[arg(long, global = true, value_enum, default_value = "text")]
    format: FormatArg,
    /// Print nothing on success.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Give up on a call after this many milliseconds.
    #[arg(long, global = true, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Log lines for people (text), one JSON object a line with the call's trace_id and
    /// span_id (json), or libpolycall's telemetry shape (telemetry) [default:
    /// log.format of --config, else text].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

/// Where a command finds the runtime.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The runtime's endpoint (HOST:PORT or unix:PATH); default: the one recorded in the
    /// state directory, else 127.0.0.1:7464.
    #[arg(long, env = "POLYCALL_ENDPOINT")]
    pub(crate) endpoint: Option<String>,
    /// The runtime's state directory.
    #[arg(long, default_value = ".polycall", env = "POLYCALL_STATE_DIR")]
    pub(crate) state_dir: PathBuf,
    /// Connect with TLS 1.3, trusting the CA certificates in this PEM file.
    #[arg(long, env = "POLYCALL_CA")]
    pub(crate) ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS; with --key.
    #[arg(long, requires = "key", requires = "ca")]
    pub(crate) cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the endpoint's host).
    #[arg(long)]
    pub(crate) server_name: Option<String>,
    /// Authenticate with the bearer token in this environment variable (never on the
    /// command line).
    #[arg(long, value_name = "VAR", conflicts_with = "user")]
    pub(crate) token_env: Option<String>,
    /// Log in as this user (OPAQUE: the password never leaves this process); the
    /// password is read from POLYCALL_PASSWORD, else from the terminal.
    #[arg(long)]
    pub(crate) user: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
    Telemetry,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the runtime in the foreground (loopback, no configuration needed).
    Run(run::RunArgs),
    /// Call a method: `polycall call debug.echo --json '{"a": 1}'`.
    Call(client::CallArgs),
    /// List the methods served and who provides them.
    Describe {
        #[command(flatten)]
        target: Target,
        /// Every runtime discovery knows (sys.discovery): name, endpoint, health and the
        /// methods each serves.
        #[arg(long)]
        cluster: bool,
    },
    /// Show whether the runtime is up, and its numbers.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Write a performance report (HTML: throughput and latency per method, top errors,
    /// anomalies, resource use) from the runtime's retained metrics.
    Report(report::ReportArgs),
    /// Stop the runtime gracefully (needs its token, read from the state directory).
    Stop {
        #[command(flatten)]
        target: Target,
        /// The shutdown token (default: STATE_DIR/runtime.token).
        #[arg(long, env = "POLYCALL_TOKEN")]
        token: Option<String>,
    },
    /// A runtime, a provider and a few calls in one process: a first look at polycall.
    Demo,
    /// Typed bindings from an interface schema or a live runtime; `verify` runs the
    /// cross-language conformance suite (docs/bindgen.md).
    Bindgen(bindgen::BindgenArgs),
    /// Your own certificate authority: init, issue (with SPIFFE IDs), revoke.
    Certs {
        #[command(subcommand)]
        command: security_cmd::CertsCommand,
    },
    /// OPAQUE password users: add (password from the terminal or stdin), remove, list.
    Users {
        #[command(subcommand)]
        command: security_cmd::UsersCommand,
    },
    /// State machines: check and draw definitions; recover, back up, watch and trace
    /// instances of a running runtime (docs/state.md).
    State {
        #[command(subcommand)]
        command: state_cmd::StateCommand,
    },
    /// A runtime's cluster: status, add-learner, promote, remove.
    Cluster {
        #[command(subcommand)]
        command: cluster_cmd::ClusterCommand,
    },
    /// Validate, show or migrate configuration (polycall.toml, libpolycall's files).
    Config {
        #[command(subcommand)]
        command: config_cmd::ConfigCommand,
    },
}

/// Sets the log level through a reload handle of the subscriber's filter.
fn level_hook<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> polycall::runtime::reload::LogLevelHook {
    std::sync::Arc::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level)?;
        handle.modify(|f| *f = filter)?;
        Ok(())
    })
}

/// Logs to stderr in `format`, filtered by `filter`; the hook changes the level later.
fn init_logs<E>(
    format: E,
    filter: tracing_subscriber::EnvFilter,
) -> polycall::runtime::reload::LogLevelHook
where
    E: tracing_subscriber::fmt::FormatEvent<
            tracing_subscriber::Registry,
            tracing_subscriber::fmt::format::DefaultFields,
        > + Send
        + Sync
        + 'static,
{
    let b = tracing_subscriber::fmt()
        .event_format(format)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = b.reload_handle();
    let _ = b.try_init();
    level_hook(handle)
}

/// mimalloc instead of the system allocator: megabyte messages (decompressed on one
/// thread, sent and freed on another) are recycled instead of returned to the kernel and
/// mapped again each time; with glibc, that churn has the kernel freeing pages on the
/// event loop's core (measured: `cargo xtask bench stall`, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out {
        format: cli.format.output(),
        quiet: cli.quiet,
    };
    let graph_command = matches!(
        cli.command,
        Command::State {
            command: state_cmd::StateCommand::Graph { .. }
        }
    );
    if matches!(cli.format, FormatArg::Dot | FormatArg::Mermaid) && !graph_command {
        eprintln!("error: --format dot and --format mermaid apply to `polycall state graph` only");
        return ExitCode::from(output::exit::USAGE);
    }
    let graph_format = cli.format;
    // `--config FILE` configures `run` (and names the file of `config`); invalid: exit 3.
    let loaded = match (&cli.config, &cli.command) {
        // No file, but --set or POLYCALL_SECTION__KEY variables: those over the defaults.
        (None, Command::Run(args))
            if !args.sets.is_empty()
                || !polycall::runtime::config::Config::process_env().is_empty() =>
        {
            let env = polycall::runtime::config::Config::process_env();
            match polycall::runtime::config::Config::load(None, &env, &args.sets) {
                Ok(l) => Some(l),
                Err(d) => {
                    return ExitCode::from(config_cmd::invalid(&out, "run", "--set", &d));
                }
            }
        }
        (Some(path), Command::Run(args)) => match config_cmd::load(path, &args.sets) {
            Ok(l) => Some(l),
            Err(d) => {
                return ExitCode::from(config_cmd::invalid(
                    &out,
                    "run",
                    &path.display().to_string(),
                    &d,
                ));
            }
        },
        (Some(_), Command::Config { .. } | Command::Certs { .. } | Command::Users { .. })
        | (None, _) => None,
        (Some(path), _) => {
            let status = polycall::Status::unsupported(format!(
                "--config {}: configuration files configure `run` and `config` only in this build",
                path.display()
            ));
            return ExitCode::from(out.fail("config", &status));
        }
    };
    // The demo prints its own story; the runtime inside it keeps quiet.
    let level = if cli.quiet || matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        loaded.as_ref().map_or("info", |l| l.log_level())
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("POLYCALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A reload of the configuration file may change the level while the runtime runs.
    use polycall::runtime::config::LogFormat;
    let log_format = match cli.log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Telemetry) => LogFormat::Telemetry,
        None => loaded.as_ref().map_or(LogFormat::Text, |l| l.log_format()),
    };
    let log_level = match log_format {
        LogFormat::Json => init_logs(polycall::observe::logs::JsonLines, filter),
        LogFormat::Telemetry => init_logs(polycall::observe::logs::TelemetryLines, filter),
        _ => init_logs(tracing_subscriber::fmt::format::Format::default(), filter),
    };
    let command = match cli.command {
        Command::Config { command } => {
            return ExitCode::from(config_cmd::config(command, cli.config.as_deref(), out));
        }
        Command::Certs { command } => return ExitCode::from(security_cmd::certs(command, out)),
        Command::Users { command } => return ExitCode::from(security_cmd::users(command, out)),
        other => other,
    };
    // `run`: as many threads as configured (one event loop by default); other commands:
    // one per core.
    let workers = match &command {
        Command::Run(args) => args
            .worker_threads
            .or_else(|| loaded.as_ref().map(|l| l.config.runtime.worker_threads))
            .unwrap_or(1),
        _ => 0,
    };
    let built = match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(output::exit::RUNTIME);
        }
    };
    let timeout = std::time::Duration::from_millis(cli.timeout_ms);
    let code = runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(args, loaded, log_level, out).await,
            Command::Call(args) => client::call(args, timeout, out).await,
            Command::Describe { target, cluster } => {
                if cluster {
                    client::describe_cluster(target, timeout, out).await
                } else {
                    client::describe(target, timeout, out).await
                }
            }
            Command::Status { target } => client::status(target, timeout, out).await,
            Command::Report(args) => report::report(args, timeout, out).await,
            Command::Stop { target, token } => client::stop(target, token, timeout, out).await,
            Command::Demo => demo::demo(out).await,
            Command::Bindgen(args) => bindgen::bindgen(args, timeout, out).await,
            Command::State { command } => {
                state_cmd::state(command, graph_format, timeout, out).await
            }
            Command::Cluster { command } => cluster_cmd::cluster(command, timeout, out).await,
            Command::Config { .. } | Command::Certs { .. } | Command::Users { .. } => {
                output::exit::OK
            }
        }
    });
    ExitCode::from(code)
}
