//! What the runtime shows of itself: the observer's settings, the runtime as an
//! observation [`Source`] (providers, endpoints, state machines, health, readiness),
//! and the follower that turns state-machine changes into dashboard events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use polycall_observe::trace::{Sampler, Tracer};
use polycall_observe::{FamilyKind, MetricFamily, NotReady, Observer, Source};
use serde_json::{Value as Json, json};

use crate::State;

/// How the runtime observes itself.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ObserveSettings {
    /// Count, time and trace every call (on by default; off removes the measuring layer).
    pub metrics: bool,
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/dashboard` here.
    pub admin: Option<SocketAddr>,
    /// Send call spans to this OTLP/gRPC collector (`http://127.0.0.1:4317`).
    pub otlp_endpoint: Option<String>,
    /// Share of the traces the runtime starts itself that are recorded (callers'
    /// sampled traces always are, when an exporter is set).
    pub trace_sample: f64,
    /// The OpenTelemetry `service.name` of the runtime's spans.
    pub service_name: String,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        Self {
            metrics: true,
            admin: None,
            otlp_endpoint: None,
            trace_sample: 0.01,
            service_name: "polycall-runtime".into(),
        }
    }
}

impl ObserveSettings {
    /// Sets where the admin listener listens.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Sets the OTLP/gRPC collector spans go to.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Sets the share of traces the runtime starts that are recorded.
    pub fn trace_sample(mut self, share: f64) -> Self {
        self.trace_sample = share;
        self
    }

    /// Sets whether calls are measured at all.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// The tracer these settings ask for (must run inside a tokio runtime).
    pub(crate) fn tracer(&self) -> Result<Tracer, crate::RuntimeError> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(Tracer::off());
        };
        let sampler = if self.trace_sample >= 1.0 {
            Sampler::Always
        } else if self.trace_sample <= 0.0 {
            Sampler::Never
        } else {
            Sampler::Ratio(self.trace_sample)
        };
        #[cfg(feature = "otlp")]
        {
            Ok(Tracer::start(
                self.service_name.clone(),
                sampler,
                polycall_observe::otlp::OtlpExporter::new(endpoint.clone()),
            ))
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = sampler;
            Err(crate::RuntimeError::Unsupported(format!(
                "OTLP export to {endpoint}: this build leaves it out (enable polycall-runtime's `otlp` feature)"
            )))
        }
    }
}

/// Transitions per machine and transition, counted by the follower.
pub(crate) type TransitionCounts = Mutex<BTreeMap<(String, String), u64>>;

/// The runtime as the observer and the admin pages see it.
pub(crate) struct RuntimeSource {
    pub(crate) state: Weak<State>,
}

impl Source for RuntimeSource {
    fn endpoints(&self) -> Vec<(Arc<str>, u64, polycall_observe::outlier::EndpointSnapshot)> {
        self.state
            .upgrade()
            .map(|s| s.registry.endpoint_stats())
            .unwrap_or_default()
    }

    fn families(&self) -> Vec<MetricFamily> {
        let Some(s) = self.state.upgrade() else {
            return Vec::new();
        };
        let mut f = vec![
            MetricFamily::single(
                "polycall_providers",
                "Providers connected with at least one method.",
                FamilyKind::Gauge,
                s.registry.providers() as f64,
            ),
            MetricFamily::single(
                "polycall_connections",
                "Connections open on the call port.",
                FamilyKind::Gauge,
                s.connections.get().map_or(0, |c| c.connections()) as f64,
            ),
        ];
        f.push(MetricFamily {
            name: "polycall_method_providers".into(),
            help: "Providers of each provided method.".into(),
            kind: FamilyKind::Gauge,
            series: s
                .registry
                .snapshot()
                .into_iter()
                .map(|(name, _, ids)| (vec![("method".into(), name)], ids.len() as f64))
                .collect(),
        });
        if let Some(totals) = &s.compression {
            let mut sent = [Vec::new(), Vec::new(), Vec::new()];
            for a in polycall_proto::compress::Algorithm::ALL {
                let (messages, raw, wire) = totals.get(a);
                let l = vec![("algorithm".to_owned(), a.name().to_owned())];
                sent[0].push((l.clone(), messages as f64));
                sent[1].push((l.clone(), raw as f64));
                sent[2].push((l, wire as f64));
            }
            let [messages, raw, wire] = sent;
            for (name, help, series) in [
                (
                    "polycall_sent_messages",
                    "Messages sent on the call port's connections, by compression algorithm (none: sent as they are).",
                    messages,
                ),
                (
                    "polycall_sent_raw_bytes",
                    "Payload bytes of those messages before compression; over polycall_sent_wire_bytes_total, the compression ratio.",
                    raw,
                ),
                (
                    "polycall_sent_wire_bytes",
                    "Payload bytes of those messages as sent.",
                    wire,
                ),
            ] {
                f.push(MetricFamily {
                    name: name.into(),
                    help: help.into(),
                    kind: FamilyKind::Counter,
                    series,
                });
            }
            let (mut raw, mut wire) = (Vec::new(), Vec::new());
            for (method, _, r, w) in totals.methods() {
                let l = vec![("method".to_owned(), method)];
                raw.push((l.clone(), r as f64));
                wire.push((l, w as f64));
            }
            f.push(MetricFamily {
                name: "polycall_method_sent_raw_bytes".into(),
                help: "Payload bytes sent per method (calls and replies) before compression; over polycall_method_sent_wire_bytes_total, the method's compression ratio.".into(),
                kind: FamilyKind::Counter,
                series: raw,
            });
            f.push(MetricFamily {
                name: "polycall_method_sent_wire_bytes".into(),
                help: "Payload bytes sent per method as they went on the wire.".into(),
                kind: FamilyKind::Counter,
                series: wire,
            });
        }
        let qos = s.qos.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(limit) = &qos.limit {
            f.push(MetricFamily::single(
                "polycall_limit_in_flight",
                "Calls holding a slot of the runtime's concurrency limit.",
                FamilyKind::Gauge,
                limit.in_flight() as f64,
            ));
            f.push(MetricFamily::single(
                "polycall_limit_queued",
                "Calls waiting in the concurrency limit's queue.",
                FamilyKind::Gauge,
                limit.queued() as f64,
            ));
            f.push(MetricFamily::single(
                "polycall_shed",
                "Calls the concurrency limit refused (busy), since the QoS settings last changed.",
                FamilyKind::Counter,
                limit.shed() as f64,
            ));
        }
        if let Some(rate) = &qos.rate {
            f.push(MetricFamily::single(
                "polycall_rate_limited",
                "Calls refused for their client's rate (busy), since the QoS settings last changed.",
                FamilyKind::Counter,
                rate.limited() as f64,
            ));
        }
        if let Some(host) = &s.machines {
            let st = host.store().stats();
            f.push(MetricFamily::single(
                "polycall_state_commits",
                "State-store transactions committed.",
                FamilyKind::Counter,
                st.commits as f64,
            ));
            f.push(MetricFamily::single(
                "polycall_state_fsyncs",
                "State-store commits made durable with an fsync.",
                FamilyKind::Counter,
                st.syncs as f64,
            ));
            f.push(MetricFamily::single(
                "polycall_state_fsync_seconds",
                "Time spent in synced commits; over polycall_state_fsyncs_total, the mean fsync latency.",
                FamilyKind::Counter,
                st.sync_nanos as f64 / 1e9,
            ));
            f.push(MetricFamily::single(
                "polycall_state_commit_failures",
                "State-store transactions that failed.",
                FamilyKind::Counter,
                st.failures as f64,
            ));
            f.push(MetricFamily::single(
                "polycall_state_log_index",
                "Newest state-log index.",
                FamilyKind::Gauge,
                host.last_index() as f64,
            ));
            let counts = s.transitions.lock().unwrap_or_else(|e| e.into_inner());
            f.push(MetricFamily {
                name: "polycall_state_transitions".into(),
                help: "State-machine transitions fired, by machine and transition.".into(),
                kind: FamilyKind::Counter,
                series: counts
                    .iter()
                    .map(|((m, t), n)| {
                        (
                            vec![
                                ("machine".into(), m.clone()),
                                ("transition".into(), t.clone()),
                            ],
                            *n as f64,
                        )
                    })
                    .collect(),
            });
        }
        f
    }

    fn health(&self) -> Json {
        self.state
            .upgrade()
            .map_or_else(|| json!({"status": "stopped"}), |s| s.health())
    }

    fn ready(&self) -> Result<(), NotReady> {
        let s = self
            .state
            .upgrade()
            .ok_or_else(|| NotReady::new("the runtime has stopped"))?;
        if s.endpoint.get().is_none() {
            return Err(NotReady::new("the call port is not bound yet"));
        }
        if *s.shutdown.borrow() {
            return Err(NotReady::new("draining: a shutdown was requested"));
        }
        if s.machines
            .as_ref()
            .is_some_and(|h| h.store().stats().failing)
        {
            return Err(NotReady::new("the state store's last commit failed"));
        }
        Ok(())
    }

    fn overview(&self) -> Json {
        let Some(s) = self.state.upgrade() else {
            return json!({});
        };
        let providers: Vec<Json> = s
            .registry
            .by_provider()
            .into_iter()
            .map(|(id, methods)| json!({"id": id, "methods": methods}))
            .collect();
        let machines: Vec<Json> = s
            .machines
            .as_ref()
            .map(|h| {
                h.machines()
                    .map(polycall_state::graph::json_graph)
                    .collect()
            })
            .unwrap_or_default();
        let instances = s
            .instance_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (machine, current))| json!({"id": id, "machine": machine, "current": current}))
            .collect::<Vec<_>>();
        json!({
            "providers": providers,
            "methods": s.describe()["methods"],
            "machines": machines,
            "instances": instances,
        })
    }
}

/// Follows the state log: counts transitions, keeps each instance's current states for
/// the dashboard, and publishes every change as a `state` event. Ends with the runtime.
pub(crate) fn follow_state(state: Weak<State>, observer: Observer) {
    tokio::spawn(async move {
        // Instances that exist now, then every change from the newest index on. The
        // follower holds the runtime and its state host only weakly between changes, and
        // stops as soon as the runtime is dropped or asked to stop: it never keeps the
        // database open behind a runtime that is gone.
        let (weak_host, mut after, mut stop) = {
            let Some(s) = state.upgrade() else { return };
            let Some(host) = s.machines.clone() else {
                return;
            };
            for id in host.instances().await {
                if let Ok(view) = host.get(&id).await {
                    s.instance_states
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, (view.state.machine.clone(), view.current.clone()));
                }
            }
            (
                Arc::downgrade(&host),
                host.last_index(),
                s.shutdown.subscribe(),
            )
        };
        loop {
            let Some(host) = weak_host.upgrade() else {
                return;
            };
            let changes = tokio::select! {
                // The runtime's state went (Err) or a shutdown was asked for (Ok).
                _ = stop.changed() => return,
                c = host.changes(after, 1000, Duration::from_secs(5)) => c,
            };
            let changes = match changes {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("state follower: {e}");
                    drop(host);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for change in changes {
                after = change.index;
                let view = host.get(&change.instance).await.ok();
                let Some(s) = state.upgrade() else { return };
                let kind = change.event["kind"].as_str().unwrap_or("").to_owned();
                let transition = change.event["transition"].as_str().map(str::to_owned);
                let (machine, current) = match &view {
                    Some(v) => (v.state.machine.clone(), v.current.clone()),
                    None => (String::new(), Vec::new()),
                };
                if let Some(t) = &transition {
                    *s.transitions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry((machine.clone(), t.clone()))
                        .or_default() += 1;
                }
                {
                    let mut states = s.instance_states.lock().unwrap_or_else(|e| e.into_inner());
                    if kind == "deleted" || view.is_none() {
                        states.remove(&change.instance);
                    } else {
                        states.insert(change.instance.clone(), (machine.clone(), current.clone()));
                    }
                }
                observer.publish(&json!({
                    "type": "state",
                    "index": change.index,
                    "ts_us": change.ts_us,
                    "instance": change.instance,
                    "machine": machine,
                    "kind": kind,
                    "transition": transition,
                    "current": current,
                }));
            }
        }
    });
}

/// Most spans one `sys.trace.export` call may carry.
pub const MAX_EXPORTED_SPANS: usize = 1000;

fn invalid(msg: impl Into<String>) -> polycall_core::Status {
    polycall_core::Status::invalid_input(msg)
}

/// Checks one span handed in by a binding: well-formed ids, bounded text.
fn check_span(
    i: usize,
    s: &polycall_observe::trace::SpanRecord,
) -> Result<(), polycall_core::Status> {
    if s.ids().is_none() {
        return Err(invalid(format!(
            "span {i}: trace_id must be 32 and span_id/parent_id 16 lowercase hex digits, not all zero"
        )));
    }
    if s.name.is_empty() || s.name.len() > 256 || s.service.is_empty() || s.service.len() > 128 {
        return Err(invalid(format!(
            "span {i}: name (1..=256 bytes) and service (1..=128 bytes) are required"
        )));
    }
    if s.attributes.len() > 64
        || s.attributes
            .iter()
            .any(|(k, v)| k.len() > 128 || v.len() > 1024)
    {
        return Err(invalid(format!(
            "span {i}: at most 64 attributes, keys up to 128 bytes, values up to 1 KiB"
        )));
    }
    Ok(())
}

/// `sys.trace.export` (bindings hand their spans to the runtime's exporter) and
/// `sys.metrics.history` (the retained one-second samples, for `polycall report`).
pub(crate) fn router(state: Weak<State>) -> polycall_core::Router {
    use polycall_core::{Call, MethodInfo, Payload, Reply, Status, handler_fn};
    let s1 = state.clone();
    let s2 = state;
    let reply = |v: Json| {
        Payload::json(&v)
            .map(Reply::new)
            .map_err(|e| Status::internal(e.to_string()))
    };
    polycall_core::Router::new()
        .route(
            "sys.trace.export",
            MethodInfo::new("records spans a binding finished (its side of sampled calls) through the runtime's exporter")
                .input(r#"{"spans": [{"trace_id", "span_id", "parent_id"?, "name", "kind", "service", "start_unix_nanos", "duration_nanos", "error"?, "attributes"?}]}"#)
                .output(r#"{"accepted": u64, "recording": bool}"#),
            handler_fn(move |c: Call| {
                let s = s1.clone();
                async move {
                    #[derive(serde::Deserialize)]
                    struct Input {
                        spans: Vec<polycall_observe::trace::SpanRecord>,
                    }
                    let input: Input = serde_json::from_slice(&c.payload.bytes).map_err(|e| {
                        invalid(format!("sys.trace.export expects {{\"spans\": [...]}}: {e}"))
                    })?;
                    if input.spans.len() > MAX_EXPORTED_SPANS {
                        return Err(invalid(format!(
                            "sys.trace.export takes at most {MAX_EXPORTED_SPANS} spans a call; got {}",
                            input.spans.len()
                        )));
                    }
                    for (i, span) in input.spans.iter().enumerate() {
                        check_span(i, span)?;
                    }
                    let s = s.upgrade().ok_or_else(|| Status::unavailable("the runtime is shutting down"))?;
                    let tracer = s.observer.tracer();
                    let n = input.spans.len();
                    if tracer.recording() {
                        for span in input.spans {
                            tracer.record(span);
                        }
                    }
                    reply(json!({"accepted": n, "recording": tracer.recording()}))
                }
            }),
        )
        .and_then(|r| {
            r.route(
                "sys.metrics.history",
                MethodInfo::new("the runtime's one-second samples (calls, errors, latency percentiles per method; resources) since a time, merged to at most `points`")
                    .input(r#"{"since_ms"?: u64, "points"?: u64}"#)
                    .output(r#"{"samples": [...], "errors": [{"method", "code", "count"}] (since start), "anomalies": [...], "ejections": [...]}"#)
                    .idempotent(true),
                handler_fn(move |c: Call| {
                    let s = s2.clone();
                    async move {
                        let v: Json = if c.payload.is_empty() {
                            json!({})
                        } else {
                            c.payload.to_json().map_err(|e| invalid(format!("sys.metrics.history expects a JSON object: {e}")))?
                        };
                        let since = v["since_ms"].as_u64().unwrap_or(0);
                        let points = v["points"].as_u64().unwrap_or(720).clamp(1, 3600) as usize;
                        let s = s.upgrade().ok_or_else(|| Status::unavailable("the runtime is shutting down"))?;
                        let o = &s.observer;
                        let errors: Vec<Json> = o
                            .metrics()
                            .all()
                            .into_iter()
                            .filter(|(side, _, _)| *side == polycall_observe::metrics::Side::Server)
                            .flat_map(|(_, name, stats)| {
                                stats
                                    .errors_by_code()
                                    .into_iter()
                                    .map(move |(code, n)| json!({"method": name.to_string(), "code": code.name(), "count": n}))
                            })
                            .collect();
                        reply(json!({
                            "errors": errors,
                            "samples": o.history_merged(since, points),
                            "anomalies": o.anomalies(),
                            "ejections": o.recent_ejections(),
                            "metrics": s.observe_metrics,
                        }))
                    }
                }),
            )
        })
        .unwrap_or_else(|e| panic!("built-in method names are valid: {e}"))
}

/// Who may read the admin pages when they are served beyond loopback: a bearer token
/// the call port accepts now (reloads included), whose principal the authorization
/// policy lets call `sys.metrics.history`.
pub(crate) struct AdminAccess {
    pub(crate) state: Weak<State>,
}

impl polycall_observe::admin::AdminAccess for AdminAccess {
    fn check(
        &self,
        authorization: Option<&str>,
    ) -> Result<(), polycall_observe::admin::AccessDenied> {
        use polycall_observe::admin::AccessDenied;
        let s = self
            .state
            .upgrade()
            .ok_or_else(|| AccessDenied::Unauthenticated("the runtime has stopped".into()))?;
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AccessDenied::Unauthenticated(
                    "send `Authorization: Bearer TOKEN` with a token the call port accepts".into(),
                )
            })?;
        let authenticator = s
            .connections
            .get()
            .and_then(|server| server.authenticator())
            .ok_or_else(|| {
                AccessDenied::Unauthenticated("no authentication is configured".into())
            })?;
        let principal = authenticator
            .verify_token(token.as_bytes())
            .ok_or_else(|| AccessDenied::Unauthenticated("the token is not accepted".into()))?;
        let policy = s
            .qos
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .policy
            .clone();
        if let Some(policy) = policy {
            policy
                .check(Some(&principal), "sys", "metrics.history")
                .map_err(|d| AccessDenied::Forbidden(d.to_string()))?;
        }
        Ok(())
    }
}
