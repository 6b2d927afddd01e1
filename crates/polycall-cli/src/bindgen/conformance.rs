//! The Rust side of the cross-language conformance suite (`bindings/conformance/`): a
//! client that runs every scenario against a provider of the conformance interface, and
//! a provider of that interface.
//!
//! This file is shared: `polycall bindgen verify` uses it, and so does
//! `tests/tests/conformance.rs` (through `#[path]`). The including module provides
//! `pc_core`, `pc_net` and `pc_runtime` (the polycall crates, however it reaches them).

// Shared by two crates, each of which uses a different part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pc_core, pc_net, pc_runtime};
use pc_core::{Call, Code, Metadata, Payload, Router, Status};
use pc_net::{Channel, Endpoint};

/// What `polycall bindgen --lang rust` generates from `bindings/conformance/conformance.toml`
/// (checked in; a test in polycall-bindgen keeps it equal to what the generator writes).
#[rustfmt::skip]
#[path = "generated/conformance.rs"]
pub mod stubs;
use stubs::{AddInput, ConformanceClient, CountInput, Empty, FailInput, SleepInput, Term};

/// The scenarios, in the order they run (`provider_disconnect` last: it ends the
/// provider).
pub const SCENARIOS: [&str; 12] = [
    "echo_small",
    "add",
    "error_typed",
    "unknown_method",
    "deadline",
    "big_8mib",
    "concurrent_1000",
    "stream_server",
    "stream_error",
    "stream_client",
    "stream_bidi",
    "provider_disconnect",
];

/// Every item of a typed reply stream, or the status that ended it.
async fn drain<T>(mut s: stubs_stream::BoxStream<T>) -> (Vec<T>, Option<Status>) {
    let mut items = Vec::new();
    while let Some(item) = pc_core::stream::next_item(&mut s).await {
        match item {
            Ok(v) => items.push(v),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

mod stubs_stream {
    pub use super::pc_core::typed::BoxStream;
}

/// What one scenario gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

impl Outcome {
    fn new(scenario: &str, result: Result<String, String>) -> Self {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Self {
            scenario: scenario.to_owned(),
            ok,
            detail,
        }
    }

    /// Parses a JSON line `{"scenario", "ok", "detail"}` printed by a language's client.
    pub fn from_json_line(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        Some(Self {
            scenario: v["scenario"].as_str()?.to_owned(),
            ok: v["ok"].as_bool()?,
            detail: v["detail"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// Deterministic pseudo-random bytes (xorshift), so payloads are incompressible
/// without a random-number dependency.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn call(name: &str, payload: Payload) -> Result<Call, String> {
    Call::new(name, payload).map_err(|e| format!("bad method name {name}: {e}"))
}

async fn echo_small(client: &ConformanceClient) -> Result<String, String> {
    let data = noise(64, 7);
    let back = client
        .echo(Payload::raw(data.clone()))
        .await
        .map_err(|e| format!("echo failed: {e}"))?;
    if back.bytes[..] == data[..] {
        Ok("64 bytes back unchanged".into())
    } else {
        Err(format!(
            "echo returned {} different bytes",
            back.bytes.len()
        ))
    }
}

async fn add(client: &ConformanceClient, a: i64, b: i64) -> Result<i64, String> {
    client
        .add(AddInput { a, b })
        .await
        .map(|out| out.sum)
        .map_err(|e| format!("add({a}, {b}) failed: {e}"))
}

fn expect_code<T: std::fmt::Debug>(
    r: Result<T, Status>,
    code: Code,
    what: &str,
) -> Result<Status, String> {
    match r {
        Ok(answer) => Err(format!(
            "{what}: expected {code}, got an answer: {answer:?}"
        )),
        Err(s) if s.code == code => Ok(s),
        Err(s) => Err(format!(
            "{what}: expected {code}, got {}: {}",
            s.code, s.message
        )),
    }
}

/// One scenario, through the client `polycall bindgen --lang rust` generated from the
/// conformance schema (`unknown_method` calls a method the schema lacks, so it goes
/// through the channel itself).
async fn scenario(
    ch: &Channel,
    client: &ConformanceClient,
    svc: &str,
    name: &str,
) -> Result<String, String> {
    match name {
        "echo_small" => echo_small(client).await,
        "add" => match add(client, 2, 40).await? {
            42 => Ok("2 + 40 = 42".into()),
            n => Err(format!("2 + 40 gave {n}")),
        },
        "error_typed" => {
            let r = client
                .fail(FailInput {
                    code: "invalid_input".into(),
                    message: "bad x".into(),
                })
                .await;
            let s = expect_code(r, Code::InvalidInput, "fail")?;
            if s.message.contains("bad x") {
                Ok(format!("invalid_input: {}", s.message))
            } else {
                Err(format!("message {:?} lacks \"bad x\"", s.message))
            }
        }
        "unknown_method" => {
            let r = ch
                .call(call(&format!("{svc}.nope"), Payload::empty())?)
                .await;
            let s = expect_code(r, Code::UnknownMethod, "nope")?;
            Ok(format!("unknown_method: {}", s.message))
        }
        "deadline" => {
            let started = Instant::now();
            // The handler would sleep 10 s; the 200 ms deadline must end the call long
            // before (5 s: a bound a loaded 2-core machine cannot break, as the other
            // languages' clients use).
            let metadata = Metadata::default().with_timeout(started, Duration::from_millis(200));
            let r = tokio::time::timeout(
                Duration::from_secs(8),
                client.sleep_with(SleepInput { ms: 10_000 }, metadata),
            )
            .await
            .map_err(|_| "no answer within 8 s of a 200 ms deadline".to_owned())?;
            let took = started.elapsed();
            expect_code(r, Code::DeadlineExceeded, "sleep 10000 ms")?;
            if took < Duration::from_secs(5) {
                Ok(format!("deadline_exceeded after {} ms", took.as_millis()))
            } else {
                Err(format!(
                    "deadline_exceeded only after {} ms",
                    took.as_millis()
                ))
            }
        }
        "big_8mib" => {
            let data = noise(8 << 20, 11);
            let back = client
                .echo(Payload::raw(data.clone()))
                .await
                .map_err(|e| format!("8 MiB echo failed: {e}"))?;
            if back.bytes[..] == data[..] {
                Ok("8 MiB back unchanged".into())
            } else {
                Err(format!(
                    "8 MiB echo returned {} bytes that differ",
                    back.bytes.len()
                ))
            }
        }
        "concurrent_1000" => {
            let mut tasks = Vec::with_capacity(1000);
            for i in 0..1000i64 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    (i, add(&client, i, 3 * i + 1).await)
                }));
            }
            let mut bad = Vec::new();
            for t in tasks {
                match t.await {
                    Ok((i, Ok(sum))) if sum == 4 * i + 1 => {}
                    Ok((i, Ok(sum))) => bad.push(format!("#{i}: sum {sum}")),
                    Ok((i, Err(e))) => bad.push(format!("#{i}: {e}")),
                    Err(e) => bad.push(format!("task: {e}")),
                }
            }
            if bad.is_empty() {
                Ok("1000 concurrent adds, each reply matching its input".into())
            } else {
                Err(format!("{} of 1000 wrong, first: {}", bad.len(), bad[0]))
            }
        }
        "stream_server" => {
            let s = client
                .count(CountInput {
                    n: 5,
                    fail_after: None,
                })
                .await
                .map_err(|e| format!("count 5: {e}"))?;
            let (items, end) = drain(s).await;
            let got: Vec<i64> = items.iter().map(|c| c.i).collect();
            match end {
                None if got == [0, 1, 2, 3, 4] => Ok("count 5: 0..4, then the end".into()),
                None => Err(format!("count 5 gave {got:?}")),
                Some(e) => Err(format!("count 5 failed after {got:?}: {e}")),
            }
        }
        "stream_error" => {
            let s = client
                .count(CountInput {
                    n: 10,
                    fail_after: Some(3),
                })
                .await
                .map_err(|e| format!("count 10 failing after 3: {e}"))?;
            let (items, end) = drain(s).await;
            match end {
                Some(e) if e.code == Code::FailedPrecondition && items.len() == 3 => Ok(format!(
                    "3 messages, then failed_precondition: {}",
                    e.message
                )),
                other => Err(format!(
                    "expected 3 messages then failed_precondition, got {} then {other:?}",
                    items.len()
                )),
            }
        }
        "stream_client" => {
            let numbers = pc_core::stream::iter((1..=100).map(|n| Term { n }));
            match client.total(numbers).await {
                Ok(t) if t.sum == 5050 => Ok("1 + … + 100 = 5050 over a request stream".into()),
                Ok(t) => Err(format!("the total of 1..=100 came back as {}", t.sum)),
                Err(e) => Err(format!("total: {e}")),
            }
        }
        "stream_bidi" => {
            let sent: Vec<Vec<u8>> = (0..50u64)
                .map(|i| noise(1 + (i as usize * 997) % 70_000, i))
                .collect();
            let requests = pc_core::stream::iter(sent.clone().into_iter().map(Payload::raw));
            let s = client
                .relay(requests)
                .await
                .map_err(|e| format!("relay: {e}"))?;
            let (items, end) = drain(s).await;
            if let Some(e) = end {
                return Err(format!("relay failed after {} messages: {e}", items.len()));
            }
            let back: Vec<Vec<u8>> = items.iter().map(|p| p.bytes.to_vec()).collect();
            if back == sent {
                Ok("50 messages (1 B to 48 KiB) relayed in order, unchanged".into())
            } else {
                Err(format!("{} messages back, not the 50 sent", back.len()))
            }
        }
        "provider_disconnect" => {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.exit_now(Payload::raw("bye")),
            )
            .await
            .map_err(|_| "exit_now hung for 10 s".to_owned())?;
            let s = expect_code(r, Code::Unavailable, "exit_now")?;
            Ok(format!("unavailable: {}", s.message))
        }
        other => Err(format!("unknown scenario {other}")),
    }
}

/// Runs every scenario (but those in `skip`) against `service` at `endpoint`, on one
/// connection.
pub async fn run_client(endpoint: Endpoint, service: &str, skip: &[String]) -> Vec<Outcome> {
    let ch = match Channel::connect(endpoint.clone()).await {
        Ok(c) => c,
        Err(e) => {
            return SCENARIOS
                .iter()
                .map(|s| Outcome::new(s, Err(format!("cannot connect to {endpoint}: {e}"))))
                .collect();
        }
    };
    let client = ConformanceClient::with_service(ch.clone(), service);
    let mut out = Vec::new();
    for s in SCENARIOS {
        if skip
            .iter()
            .any(|k| k == s || (k == "exit_now" && s == "provider_disconnect"))
        {
            continue;
        }
        out.push(Outcome::new(s, scenario(&ch, &client, service, s).await));
    }
    out
}

/// The Rust conformance provider, registered with a runtime.
pub struct RustProvider {
    provider: Arc<pc_runtime::Provider>,
    closer: tokio::task::JoinHandle<()>,
}

/// The Rust conformance provider: the service trait `polycall bindgen --lang rust`
/// generated from the conformance schema.
struct Provides {
    exit: tokio::sync::mpsc::UnboundedSender<()>,
}

impl stubs::Conformance for Provides {
    async fn echo(&self, request: Payload, _: Metadata) -> Result<Payload, Status> {
        Ok(request)
    }

    async fn add(&self, request: AddInput, _: Metadata) -> Result<stubs::AddOutput, Status> {
        Ok(stubs::AddOutput {
            sum: request.a.wrapping_add(request.b),
        })
    }

    async fn fail(&self, request: FailInput, _: Metadata) -> Result<Empty, Status> {
        match Code::from_name(&request.code) {
            Some(code) if code != Code::Ok => Err(Status::new(code, request.message)),
            _ => Err(Status::invalid_input(format!(
                "fail: {:?} is not a status code name",
                request.code
            ))),
        }
    }

    async fn sleep(&self, request: SleepInput, _: Metadata) -> Result<Empty, Status> {
        let ms = u64::try_from(request.ms)
            .map_err(|_| Status::invalid_input("sleep needs {\"ms\": int} of at least 0"))?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Empty {})
    }

    async fn exit_now(&self, _: Payload, _: Metadata) -> Result<Payload, Status> {
        let _ = self.exit.send(());
        // Never answers: the connection goes away under the call.
        std::future::pending().await
    }

    fn count(&self, request: CountInput, _: Metadata) -> stubs_stream::BoxStream<stubs::Counted> {
        let fail_after = request.fail_after;
        let items: Vec<Result<stubs::Counted, Status>> = (0..request.n.max(0))
            .map_while(|i| match fail_after {
                Some(f) if i == f => Some(Err(Status::new(
                    Code::FailedPrecondition,
                    format!("count failed after {f} messages, as asked"),
                ))),
                Some(f) if i > f => None,
                _ => Some(Ok(stubs::Counted { i })),
            })
            .collect();
        Box::pin(pc_core::stream::iter(items))
    }

    async fn total(
        &self,
        mut requests: stubs_stream::BoxStream<Term>,
        _: Metadata,
    ) -> Result<stubs::Total, Status> {
        let mut sum = 0i64;
        while let Some(n) = pc_core::stream::next_item(&mut requests).await {
            sum = sum.wrapping_add(n?.n);
        }
        Ok(stubs::Total { sum })
    }

    fn relay(
        &self,
        requests: stubs_stream::BoxStream<Payload>,
        _: Metadata,
    ) -> stubs_stream::BoxStream<Payload> {
        requests
    }
}

fn router(service: &str, exit: tokio::sync::mpsc::UnboundedSender<()>) -> Result<Router, Status> {
    stubs::router_as(Provides { exit }, service).map_err(|e| Status::invalid_input(e.to_string()))
}

impl RustProvider {
    /// Connects to the runtime at `endpoint` and registers `service`. `exit_now`
    /// closes the provider's connection mid-call (the provider then reconnects).
    pub async fn start(endpoint: Endpoint, service: &str) -> Result<Self, Status> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let provider = Arc::new(pc_runtime::Provider::start(endpoint, router(service, tx)?).await?);
        let p = Arc::downgrade(&provider);
        let closer = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                if let Some(conn) = p.upgrade().and_then(|p| p.connection()) {
                    conn.close(Status::unavailable(
                        "the conformance provider exits (exit_now)",
                    ));
                }
            }
        });
        Ok(Self { provider, closer })
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.closer.abort();
        if let Ok(p) = Arc::try_unwrap(self.provider) {
            p.stop().await;
        }
    }
}

/// A binding whose conformance programs can be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `bindings/python` (python3).
    Python,
    /// `bindings/typescript` (node, after `npm run build`).
    TypeScript,
}

impl Lang {
    /// The language of a `--lang` value.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "python" => Some(Lang::Python),
            "typescript" | "ts" | "node" => Some(Lang::TypeScript),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::TypeScript => "typescript",
        }
    }

    /// The command of one of its conformance programs (`provider` or `client`, or
    /// `bench/client`).
    pub fn command(self, root: &Path, program: &str) -> Command {
        let (exe, script) = match self {
            Lang::Python => (
                "python3",
                root.join("bindings/python").join(if program.contains('/') {
                    format!("{program}.py")
                } else {
                    format!("conformance/{program}.py")
                }),
            ),
            Lang::TypeScript => (
                "node",
                root.join("bindings/typescript/dist")
                    .join(if program.contains('/') {
                        format!("{program}.js")
                    } else {
                        format!("conformance/{program}.js")
                    }),
            ),
        };
        let mut c = Command::new(exe);
        c.arg(script).current_dir(root);
        c
    }
}

/// A language's conformance provider, running, registered and serving.
pub struct ProviderProcess {
    child: Child,
}

impl ProviderProcess {
    /// Starts `lang`'s provider for `service` at `endpoint` and waits (up to 60 s) for it
    /// to print `ready`.
    pub async fn start(
        lang: Lang,
        root: &Path,
        endpoint: &Endpoint,
        service: &str,
    ) -> Result<Self, String> {
        let mut cmd = lang.command(root, "provider");
        cmd.args(["--endpoint", &endpoint.to_string(), "--service", service])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {} provider ({cmd:?}): {e}", lang.name()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first.and_then(Result::ok));
            // Keep draining so the provider never blocks on a full pipe.
            for _ in lines {}
        });
        let mut me = Self { child };
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(Some(line))) if line.trim() == "ready" => Ok(me),
            Ok(Ok(Some(line))) => {
                me.kill();
                Err(format!(
                    "the {} provider printed {line:?} instead of ready",
                    lang.name()
                ))
            }
            Ok(_) => {
                let status = me.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "the {} provider exited before it was ready ({status})",
                    lang.name()
                ))
            }
            Err(_) => {
                me.kill();
                Err(format!(
                    "the {} provider was not ready within 60 s",
                    lang.name()
                ))
            }
        }
    }

    /// Ends the provider (if `exit_now` has not already).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `lang`'s conformance client against `service` at `endpoint` (up to 5 minutes);
/// returns its outcomes and whether it exited 0. A scenario it did not report counts as
/// failed.
pub async fn run_client_process(
    lang: Lang,
    root: &Path,
    endpoint: &Endpoint,
    service: &str,
) -> (Vec<Outcome>, bool) {
    let mut cmd = lang.command(root, "client");
    cmd.args(["--endpoint", &endpoint.to_string(), "--service", service])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let what = format!("{cmd:?}");
    let run = tokio::task::spawn_blocking(move || cmd.output());
    let output = match tokio::time::timeout(Duration::from_secs(300), run).await {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => {
            return (missing(&[], &format!("cannot run {what}: {e}")), false);
        }
        _ => {
            return (
                missing(&[], &format!("{what} did not finish within 5 minutes")),
                false,
            );
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut seen: Vec<Outcome> = text.lines().filter_map(Outcome::from_json_line).collect();
    let absent = missing(
        &seen,
        &format!(
            "not reported by the {} client ({})",
            lang.name(),
            output.status
        ),
    );
    seen.extend(absent);
    (seen, output.status.success())
}

fn missing(seen: &[Outcome], why: &str) -> Vec<Outcome> {
    SCENARIOS
        .iter()
        .filter(|s| !seen.iter().any(|o| o.scenario == **s))
        .map(|s| Outcome::new(s, Err(why.to_owned())))
        .collect()
}

/// The outcomes as a table, one row per scenario.
pub fn table(title: &str, outcomes: &[Outcome]) -> String {
    let mut s = format!("{title}\n");
    for o in outcomes {
        s.push_str(&format!(
            "  {:<22} {:<5} {}\n",
            o.scenario,
            if o.ok { "pass" } else { "FAIL" },
            o.detail
        ));
    }
    s
}
