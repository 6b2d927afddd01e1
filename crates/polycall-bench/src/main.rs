//! Processes of the RPC benchmark, each run by `cargo xtask bench rpc` on its own:
//!
//! ```text
//! polycall-bench serve-raw      --listen ADDR --ready FILE   pipelined length-prefixed TCP echo
//! polycall-bench serve-polycall --listen ADDR --ready FILE   a polycall Server with bench.echo
//! polycall-bench provide        --runtime EP --ready FILE    bench.echo as a provider of a runtime
//! polycall-bench serve-tonic    --listen ADDR --ready FILE   a tonic (gRPC) unary echo
//! polycall-bench serve-nats     --nats ADDR --ready FILE     a NATS responder on subject bench.echo
//! polycall-bench load --peer raw|polycall|tonic|nats --endpoint EP --payload N
//!                     --concurrency C --connections K --seconds S [--warmup S]
//!                     [--server-pids P,Q]                    → one JSON line of results
//! polycall-bench serve-raw-stream --listen ADDR --ready FILE a raw TCP server stream
//! polycall-bench stream-load --peer raw|polycall|tonic --endpoint EP --count N --size S
//!                     [--server-pids P,Q]                    → one JSON line of results
//! polycall-bench cluster-load --peer polycall|etcd --endpoints A,B,C --writers W
//!                     --value-size N --seconds S --warmup S  → one JSON line (cargo xtask bench cluster)
//! polycall-bench stall-serve | stall-ping | stall-load | stall-hsm-cert …
//!                                     the event-loop stall benchmark (cargo xtask bench stall);
//!                                     see the doc comments of src/stall.rs and src/stall_load.rs
//! ```
//!
//! The raw echo is the practical limit of any framed protocol here: a 4-byte
//! little-endian length, the payload, echoed back in order, pipelined.
//!
//! Every peer gets the same payload bytes ([`payload`]), every reply is checked for
//! its length, and the warm-up is left out of every figure (calls, latency, CPU).

mod cluster_load;
mod http_echo;
mod load;
mod nats_peer;
mod polycall;
mod raw;
mod stall;
mod stall_load;
mod stream_load;
mod tonic_peer;

/// Why a benchmark process could not do its part.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct Fail {
    what: String,
    detail: String,
}

impl Fail {
    /// A failure of `what`, explained by `detail`.
    pub fn new(what: impl Into<String>, detail: impl std::fmt::Display) -> Fail {
        Fail {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// Adds what was being done to an error.
pub trait Ctx<T> {
    /// The error, explained as a failure of `what`.
    fn ctx(self, what: &str) -> Result<T, Fail>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail::new(what, e))
    }
}

/// The command-line arguments of one subcommand.
pub struct Args(Vec<String>);

impl Args {
    /// The value after `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    /// The value after `name`, which must be given.
    pub fn need(&self, name: &str) -> Result<&str, Fail> {
        self.get(name)
            .ok_or_else(|| Fail::new(format!("argument {name}"), "missing; see the usage"))
    }

    /// The value after `name`, parsed.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T, Fail>
    where
        T::Err: std::fmt::Display,
    {
        self.need(name)?
            .parse()
            .map_err(|e| Fail::new(format!("argument {name}"), e))
    }

    /// Writes `what` and a newline to the `--ready` file, if one was given: the
    /// harness waits for the newline.
    pub fn ready(&self, what: &str) -> Result<(), Fail> {
        if let Some(f) = self.get("--ready") {
            std::fs::write(f, format!("{what}\n")).ctx("writing the --ready file")?;
        }
        Ok(())
    }
}

/// CPU seconds used so far by process `pid` (`None`: this one), user + system, from
/// /proc (USER_HZ is 100, so 10 ms resolution).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let f = stat_fields(pid);
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The fields of `/proc/PID/stat` (this process when `None`) after the command name,
/// from the state on; empty when it cannot be read.
fn stat_fields(pid: Option<u32>) -> Vec<String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    after.split_whitespace().map(str::to_owned).collect()
}

/// Minor page faults of `pid` (this process when `None`) so far, from `/proc`: memory
/// touched for the first time (or again after the allocator gave it back).
pub fn minor_faults(pid: Option<u32>) -> u64 {
    stat_fields(pid)
        .get(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// [`payload`] of `len` bytes made once per process and kept for its life: the
/// streaming servers make each message as `Bytes::from_static` of it, so that making a
/// message costs neither an allocation nor a reference count (the same for every peer).
pub fn static_payload(len: usize) -> &'static [u8] {
    static MADE: std::sync::Mutex<Vec<&'static [u8]>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    match made.iter().find(|b| b.len() == len) {
        Some(b) => b,
        None => {
            let b: &'static [u8] = Vec::leak(payload(len).to_vec());
            made.push(b);
            b
        }
    }
}

/// The request payload every peer sends: `len` pseudo-random bytes (SplitMix64 from a
/// fixed seed), so the same bytes for every peer, and incompressible: a sender whose
/// compression selector is on (the runtime and the provider keep their defaults)
/// gains nothing by compressing.
pub fn payload(len: usize) -> bytes::Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

const USAGE: &str = "usage: polycall-bench serve-raw|serve-polycall|provide|serve-tonic|serve-nats|load|cluster-load|serve-http-echo|\
serve-raw-stream|stream-load|\
stall-serve|stall-ping|stall-load|stall-hsm-cert … (see the doc comments of crates/polycall-bench/src/main.rs \
and src/stall.rs)";

fn main() -> std::process::ExitCode {
    let args = Args(std::env::args().collect());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polycall-bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.0.get(1).map(String::as_str) {
            Some("serve-raw") => raw::serve(&args).await,
            Some("serve-polycall") => polycall::serve(&args).await,
            Some("provide") => polycall::provide(&args).await,
            Some("serve-tonic") => tonic_peer::serve(&args).await,
            Some("serve-nats") => nats_peer::serve(&args).await,
            Some("load") => load::run(&args).await,
            Some("cluster-load") => cluster_load::run(&args).await,
            Some("serve-http-echo") => http_echo::serve(&args).await,
            Some("serve-raw-stream") => stream_load::serve_raw(&args).await,
            Some("stream-load") => stream_load::run(&args).await,
            Some("stall-serve") => stall::serve(&args).await,
            Some("stall-ping") => stall::ping(&args).await,
            Some("stall-load") => stall_load::run(&args).await,
            Some("stall-hsm-cert") => stall::hsm_cert(&args),
            _ => Err(Fail::new("polycall-bench", USAGE)),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polycall-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
