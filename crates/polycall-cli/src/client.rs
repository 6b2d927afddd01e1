//! Commands that talk to a running runtime: `call`, `describe`, `status`, `stop`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use polycall::net::retry::{RetryConfig, RetryLayer};
use polycall::net::{Channel, ChannelConfig, Endpoint};
use polycall::{Call, ContentType, Metadata, Payload, Priority, Status};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

use crate::Target;
use crate::output::{Out, exit};

/// Arguments of `polycall call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The method: SERVICE.METHOD (or SERVICE, with OPERATION next, as libpolycall took it).
    method: String,
    /// The operation, when SERVICE was given alone.
    operation: Option<String>,
    #[command(flatten)]
    target: Target,
    /// The input as a JSON document.
    #[arg(long, visible_alias = "input-value", conflicts_with_all = ["input", "raw"])]
    json: Option<String>,
    /// Read the input from FILE, or from standard input with `-` (JSON when it parses as
    /// JSON, raw bytes otherwise).
    #[arg(long, conflicts_with = "raw")]
    input: Option<String>,
    /// The input as raw bytes (this text, as is).
    #[arg(long)]
    raw: Option<String>,
    /// Mark the call idempotent (it may then be retried even after it ran).
    #[arg(long)]
    idempotent: bool,
    /// Retry up to N more times on `unavailable` or `busy`, with jittered exponential
    /// backoff and a retry budget; a call that may have run is retried only with
    /// --idempotent.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Priority class: critical, high, normal or low.
    #[arg(long, default_value = "normal", value_parser = parse_priority)]
    priority: Priority,
    /// Open the method as a stream and print each reply message as one JSON line, until
    /// the stream ends (exit 0) or fails (its status's exit code). A stream has no
    /// deadline unless --stream-timeout-ms gives one.
    #[arg(long)]
    stream: bool,
    /// With --stream: send the request stream from FILE (or standard input with `-`),
    /// one JSON document per line, instead of one request (a client or bidirectional
    /// stream).
    #[arg(long, requires = "stream")]
    requests: Option<String>,
    /// With --stream: stop (cancelling the call) after N reply messages.
    #[arg(long, requires = "stream")]
    count: Option<u64>,
    /// With --stream: the deadline of the whole stream, in milliseconds.
    #[arg(long, requires = "stream")]
    stream_timeout_ms: Option<u64>,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    match s {
        "critical" => Ok(Priority::Critical),
        "high" => Ok(Priority::High),
        "normal" => Ok(Priority::Normal),
        "low" => Ok(Priority::Low),
        _ => Err(format!(
            "{s:?} is not a priority class: critical, high, normal or low"
        )),
    }
}

/// How one call is made: its class, idempotency and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    idempotent: bool,
    retries: u32,
    priority: Priority,
}

pub(crate) const PLAIN: Policy = Policy {
    idempotent: true,
    retries: 0,
    priority: Priority::Normal,
};

/// The runtime's endpoint: `--endpoint`, else the state directory's record, else the
/// default.
fn resolve(target: &Target) -> Result<Endpoint, Status> {
    let text = match &target.endpoint {
        Some(e) => e.clone(),
        None => std::fs::read_to_string(target.state_dir.join("runtime.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["endpoint"].as_str().map(str::to_owned))
            .unwrap_or_else(|| polycall::runtime::DEFAULT_ENDPOINT.to_owned()),
    };
    text.parse()
        .map_err(|e| Status::invalid_input(format!("{e}")))
}

/// The channel settings `target` asks for: TLS, a client certificate, credentials.
pub(crate) fn channel_config(target: &Target, timeout: Duration) -> Result<ChannelConfig, Status> {
    use polycall::net::auth::Credentials;
    use polycall::security::{ClientTls, SecretRef};
    let mut config = ChannelConfig::default().connect_timeout(timeout.min(Duration::from_secs(15)));
    if let Some(ca) = &target.ca {
        let mut tls = ClientTls::default().ca(SecretRef::File(ca.clone()));
        tls.cert_chain = target.cert.clone().map(SecretRef::File);
        tls.key = target.key.clone().map(SecretRef::File);
        let built = tls
            .build()
            .map_err(|e| Status::invalid_input(e.to_string()))?;
        let mut transport = polycall::net::tls::Tls::client(built);
        if let Some(name) = &target.server_name {
            transport = transport
                .with_server_name(name)
                .map_err(|e| Status::invalid_input(e.to_string()))?;
        }
        config.transport = std::sync::Arc::new(transport);
        if target.cert.is_some() && target.token_env.is_none() && target.user.is_none() {
            config.connection.credentials = Some(Credentials::Certificate);
        }
    }
    if let Some(var) = &target.token_env {
        let token = std::env::var(var).map_err(|_| {
            Status::invalid_input(format!(
                "--token-env {var}: the variable is not set; export the token in it"
            ))
        })?;
        config.connection.credentials = Some(Credentials::token(token.into_bytes()));
    }
    if let Some(user) = &target.user {
        let password = match std::env::var("POLYCALL_PASSWORD") {
            Ok(p) => p.into_bytes(),
            Err(_) => polycall::security::opaque::read_password(&format!("password for {user}: "))
                .map_err(|e| Status::invalid_input(e.to_string()))?,
        };
        config.connection.credentials = Some(Credentials::password(user.clone(), password));
    }
    Ok(config)
}

pub(crate) async fn connect(target: &Target, timeout: Duration) -> Result<Channel, Status> {
    let endpoint = resolve(target)?;
    Channel::with_config(endpoint, channel_config(target, timeout)?).await
}

fn input_payload(args: &CallArgs) -> Result<Payload, Status> {
    if let Some(j) = &args.json {
        let v: Value = serde_json::from_str(j)
            .map_err(|e| Status::invalid_input(format!("--json is not valid JSON: {e}")))?;
        return Payload::json(&v).map_err(|e| Status::invalid_input(e.to_string()));
    }
    if let Some(r) = &args.raw {
        return Ok(Payload::raw(r.clone().into_bytes()));
    }
    if let Some(f) = &args.input {
        let mut bytes = Vec::new();
        let read = if f == "-" {
            std::io::stdin().read_to_end(&mut bytes).map(|_| ())
        } else {
            std::fs::read(f).map(|b| bytes = b)
        };
        read.map_err(|e| Status::invalid_input(format!("cannot read {f}: {e}")))?;
        let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
        return Ok(Payload::new(
            bytes,
            if is_json {
                ContentType::Json
            } else {
                ContentType::Raw
            },
        ));
    }
    Ok(Payload::json(&json!({})).unwrap_or_default())
}

pub(crate) async fn invoke(
    channel: &Channel,
    name: &str,
    payload: Payload,
    timeout: Duration,
    policy: Policy,
) -> Result<Payload, Status> {
    let mut md = Metadata::default()
        .with_timeout(Instant::now(), timeout)
        .with_priority(policy.priority);
    md.idempotent = policy.idempotent;
    let call = Call::new(name, payload)
        .map_err(|e| Status::invalid_input(e.to_string()))?
        .with_metadata(md);
    let reply = if policy.retries > 0 {
        let config = RetryConfig::default().max_attempts(policy.retries + 1);
        RetryLayer::new(config)
            .layer(channel.clone())
            .oneshot(call)
            .await
    } else {
        channel.call(call).await
    };
    reply.map(|r| r.payload)
}

fn payload_json(p: &Payload) -> Value {
    match p.content_type {
        ContentType::Json => p.to_json().unwrap_or_else(
            |_| json!({"content_type": "json", "text": String::from_utf8_lossy(&p.bytes)}),
        ),
        _ => match std::str::from_utf8(&p.bytes) {
            Ok(t) => json!({"content_type": p.content_type.name(), "text": t}),
            Err(_) => {
                json!({"content_type": p.content_type.name(), "hex": p.bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()})
            }
        },
    }
}

/// The request messages of `--requests`: one JSON document per line.
fn request_lines(source: &str) -> Result<Vec<Payload>, Status> {
    let text = if source == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map(|_| t)
            .map_err(|e| Status::invalid_input(format!("cannot read standard input: {e}")))?
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| Status::invalid_input(format!("cannot read {source}: {e}")))?
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| {
                Status::invalid_input(format!("{source}:{}: not a JSON document: {e}", i + 1))
            })?;
            Payload::json(&v).map_err(|e| Status::invalid_input(e.to_string()))
        })
        .collect()
}

/// `polycall call --stream`: each reply message as one JSON line on standard output.
async fn call_stream(
    args: &CallArgs,
    name: &str,
    payload: Payload,
    timeout: Duration,
    out: &Out,
) -> u8 {
    use futures_util::StreamExt;
    let requests = match args.requests.as_deref().map(request_lines).transpose() {
        Ok(r) => r,
        Err(s) => return out.fail_with("call", &s, exit::INPUT),
    };
    let mut md = Metadata::default().with_priority(args.priority);
    if let Some(ms) = args.stream_timeout_ms {
        md = md.with_timeout(Instant::now(), Duration::from_millis(ms));
    }
    let opened = async {
        let channel = connect(&args.target, timeout).await?;
        match requests {
            Some(messages) => {
                let messages: polycall::MessageStream = Box::pin(polycall::stream::iter(
                    messages.into_iter().map(Ok).collect::<Vec<_>>(),
                ));
                let call = polycall::StreamCall::new(name, messages)
                    .map_err(|e| Status::invalid_input(e.to_string()))?
                    .with_metadata(md);
                channel.bidi(call).await
            }
            None => {
                let call = Call::new(name, payload)
                    .map_err(|e| Status::invalid_input(e.to_string()))?
                    .with_metadata(md);
                channel.server_stream(call).await
            }
        }
    };
    let mut replies = match opened.await {
        Ok(r) => r,
        Err(s) => return out.fail("call", &s),
    };
    let mut stdout = std::io::stdout();
    let mut seen = 0u64;
    while let Some(message) = replies.next().await {
        match message {
            Ok(p) => {
                if !out.quiet {
                    let _ = writeln!(stdout, "{}", payload_json(&p));
                    let _ = stdout.flush();
                }
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return exit::OK; // dropping the stream cancels the call
                }
            }
            Err(s) => return out.fail("call", &s),
        }
    }
    exit::OK
}

pub async fn call(args: CallArgs, timeout: Duration, out: Out) -> u8 {
    let name = match &args.operation {
        Some(op) => format!("{}.{op}", args.method),
        None => args.method.clone(),
    };
    let payload = match input_payload(&args) {
        Ok(p) => p,
        Err(s) => return out.fail_with("call", &s, exit::INPUT),
    };
    if let Err(e) = polycall::split_full_name(&name) {
        return out.fail_with("call", &Status::invalid_input(e.to_string()), exit::INPUT);
    }
    if args.stream {
        return call_stream(&args, &name, payload, timeout, &out).await;
    }
    let result = async {
        let channel = connect(&args.target, timeout).await?;
        invoke(
            &channel,
            &name,
            payload,
            timeout,
            Policy {
                idempotent: args.idempotent,
                retries: args.retries,
                priority: args.priority,
            },
        )
        .await
    }
    .await;
    match result {
        Ok(reply) => {
            if out.format == crate::output::Format::Text && reply.content_type != ContentType::Json
            {
                if !out.quiet {
                    let mut stdout = std::io::stdout();
                    let _ = stdout.write_all(&reply.bytes);
                    let _ = stdout.flush();
                }
                return exit::OK;
            }
            let data = payload_json(&reply);
            out.ok("call", data.clone(), || {
                serde_json::to_string_pretty(&data).unwrap_or_default()
            })
        }
        Err(s) => out.fail("call", &s),
    }
}

/// `polycall describe --cluster`: this runtime and every runtime discovery knows.
pub async fn describe_cluster(target: Target, timeout: Duration, out: Out) -> u8 {
    let result = async {
        let channel = connect(&target, timeout).await?;
        invoke(&channel, "sys.discovery", Payload::empty(), timeout, PLAIN).await
    }
    .await;
    match result {
        Ok(p) => {
            let data = payload_json(&p);
            out.ok("describe", data.clone(), || {
                let mut lines = vec![format!(
                    "{:<24} {:<22} {:<8} METHODS",
                    "RUNTIME", "ENDPOINT", "HEALTH"
                )];
                let row = |r: &Value, health: &str| {
                    let methods: Vec<&str> = r["methods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{:<24} {:<22} {:<8} {}",
                        r["name"].as_str().unwrap_or("?"),
                        r["endpoint"].as_str().unwrap_or(""),
                        health,
                        methods.join(", ")
                    )
                };
                lines.push(row(&data["self"], "self"));
                for p in data["peers"].as_array().into_iter().flatten() {
                    let health = if p["healthy"].as_bool().unwrap_or(false) {
                        "up"
                    } else {
                        "down"
                    };
                    lines.push(row(p, health));
                }
                lines.join("\n")
            })
        }
        Err(s) => out.fail("describe", &s),
    }
}

pub async fn describe(target: Target, timeout: Duration, out: Out) -> u8 {
    let result = async {
        let channel = connect(&target, timeout).await?;
        invoke(&channel, "sys.describe", Payload::empty(), timeout, PLAIN).await
    }
    .await;
    match result {
        Ok(p) => {
            let data = payload_json(&p);
            out.ok("describe", data.clone(), || {
                let mut lines = vec![format!(
                    "{:<28} {:<20} {:<10} {}",
                    "METHOD", "PROVIDED BY", "IDEMPOTENT", "SUMMARY"
                )];
                for m in data["methods"].as_array().into_iter().flatten() {
                    let by = match &m["provided_by"] {
                        Value::String(s) => s.clone(),
                        Value::Array(a) => a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","),
                        _ => String::new(),
                    };
                    lines.push(format!(
                        "{:<28} {:<20} {:<10} {}",
                        m["name"].as_str().unwrap_or(""),
                        by,
                        if m["idempotent"].as_bool().unwrap_or(false) {
                            "yes"
                        } else {
                            "no"
                        },
                        m["summary"].as_str().unwrap_or("")
                    ));
                    for h in m["http"].as_array().into_iter().flatten() {
                        lines.push(format!(
                            "    {} {}{}",
                            h["method"].as_str().unwrap_or(""),
                            h["path"].as_str().unwrap_or(""),
                            if h["deprecated"].as_bool().unwrap_or(false) {
                                " (deprecated)"
                            } else {
                                ""
                            }
                        ));
                    }
                }
                lines.join("\n")
            })
        }
        Err(s) => out.fail("describe", &s),
    }
}

pub async fn status(target: Target, timeout: Duration, out: Out) -> u8 {
    let result = async {
        let channel = connect(&target, timeout).await?;
        invoke(&channel, "sys.health", Payload::empty(), timeout, PLAIN).await
    }
    .await;
    match result {
        Ok(p) => {
            let data = payload_json(&p);
            let line = format!(
                "runtime {} at {}: up {:.1}s, {} connections, {} providers, {} methods",
                data["status"].as_str().unwrap_or("?"),
                data["endpoint"].as_str().unwrap_or("?"),
                data["uptime_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                data["connections"],
                data["providers"],
                data["methods"]
            );
            if data["status"] == "ok" {
                return out.ok("status", data.clone(), || line);
            }
            // Degraded (or a status this build does not know): say why, exit non-zero.
            let reasons: Vec<String> = data["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let status = Status::unavailable(format!(
                "the runtime is {}: {}",
                data["status"].as_str().unwrap_or("not ok"),
                if reasons.is_empty() {
                    "no reason given".to_owned()
                } else {
                    reasons.join("; ")
                }
            ));
            out.fail_with_data(
                "status",
                data,
                &status,
                crate::output::exit::RUNTIME,
                || line,
            )
        }
        Err(s) => out.fail("status", &s),
    }
}

pub async fn stop(target: Target, token: Option<String>, timeout: Duration, out: Out) -> u8 {
    let token = match token {
        Some(t) => t,
        None => match std::fs::read_to_string(target.state_dir.join("runtime.token")) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                let s = Status::unauthenticated(format!(
                    "no token: cannot read {}: {e}; pass --token or --state-dir",
                    target.state_dir.join("runtime.token").display()
                ));
                return out.fail("stop", &s);
            }
        },
    };
    let endpoint = match resolve(&target) {
        Ok(e) => e,
        Err(s) => return out.fail_with("stop", &s, exit::INPUT),
    };
    let result = async {
        let channel = connect(&target, timeout).await?;
        let payload =
            Payload::json(&json!({"token": token})).map_err(|e| Status::internal(e.to_string()))?;
        invoke(
            &channel,
            "sys.shutdown",
            payload,
            timeout,
            Policy {
                idempotent: false,
                ..PLAIN
            },
        )
        .await
    }
    .await;
    match result {
        Ok(_) => {
            // Wait (within the timeout) until the runtime is gone.
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                let probe = ChannelConfig::default().connect_timeout(Duration::from_millis(200));
                if Channel::with_config(endpoint.clone(), probe).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out.ok(
                "stop",
                json!({"endpoint": endpoint.to_string(), "stopped": true}),
                || format!("stopped the runtime at {endpoint}"),
            )
        }
        Err(s) => out.fail("stop", &s),
    }
}

/// Calls `name` on the runtime with a JSON input and returns the JSON reply (for
/// commands built on runtime methods, such as `polycall state`).
pub(crate) async fn call_json(
    target: &Target,
    name: &str,
    input: Value,
    timeout: Duration,
    idempotent: bool,
) -> Result<Value, Status> {
    let channel = connect(target, timeout).await?;
    let payload = Payload::json(&input).map_err(|e| Status::internal(e.to_string()))?;
    let reply = invoke(
        &channel,
        name,
        payload,
        timeout,
        Policy {
            idempotent,
            ..PLAIN
        },
    )
    .await?;
    Ok(payload_json(&reply))
}

/// Opens `name` as a server stream with `input`; its messages as JSON values.
pub(crate) async fn stream_json(
    target: &Target,
    name: &str,
    input: Value,
    timeout: Duration,
) -> Result<impl futures_util::Stream<Item = Result<Value, Status>> + use<>, Status> {
    use futures_util::StreamExt;
    let channel = connect(target, timeout).await?;
    let payload = Payload::json(&input).map_err(|e| Status::internal(e.to_string()))?;
    let call = Call::new(name, payload).map_err(|e| Status::invalid_input(e.to_string()))?;
    let replies = channel.server_stream(call).await?;
    Ok(replies.map(|m| m.map(|p| payload_json(&p))))
}

/// The runtime's token: `token`, else `STATE_DIR/runtime.token`.
pub(crate) fn runtime_token(target: &Target, token: Option<String>) -> Result<String, Status> {
    match token {
        Some(t) => Ok(t),
        None => std::fs::read_to_string(target.state_dir.join("runtime.token"))
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                Status::unauthenticated(format!(
                    "no token: cannot read {}: {e}; pass --token or --state-dir",
                    target.state_dir.join("runtime.token").display()
                ))
            }),
    }
}
