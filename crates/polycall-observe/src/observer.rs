//! [`Observer`]: what one process measures, the one-second sampler that turns it into
//! history, anomalies and ejections, and the events the dashboard follows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::anomaly::{Anomaly, AnomalyDetector, Change, DetectorConfig, Window};
use crate::metrics::{CallMetrics, HistogramSnapshot, Side};
use crate::outlier::{Ejection, Ejections, EndpointSnapshot, OutlierConfig, OutlierDetector};
use crate::resources::ResourceUsage;
use crate::trace::Tracer;
use crate::{MeasureLayer, MetricFamily};

/// How long history is kept: an hour of one-second samples.
pub const HISTORY: usize = 3600;

/// What the process embedding the observer (the runtime) tells it.
pub trait Source: Send + Sync + 'static {
    /// Every endpoint of every method and what it has done so far (cumulative):
    /// `(service.method, endpoint id, counts)`.
    fn endpoints(&self) -> Vec<(Arc<str>, u64, EndpointSnapshot)> {
        Vec::new()
    }

    /// Families of its own (providers, connections, state machines…), read at each
    /// scrape.
    fn families(&self) -> Vec<MetricFamily> {
        Vec::new()
    }

    /// Liveness detail (`/healthz`; the runtime answers its `sys.health`).
    fn health(&self) -> serde_json::Value {
        serde_json::json!({"status": "ok"})
    }

    /// Whether it is ready to serve, and why not (`/readyz`).
    fn ready(&self) -> Result<(), NotReady> {
        Ok(())
    }

    /// What the dashboard shows first: `providers`, `methods`, `machines` (graphs),
    /// `instances` (`{id, machine, current}`).
    fn overview(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// Why a process is not ready to serve (`/readyz` answers 503 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not ready: {reason}")]
pub struct NotReady {
    /// What it waits for or what is wrong.
    pub reason: String,
}

impl NotReady {
    /// Not ready because of `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// One method's second.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MethodSample {
    /// `service.method`.
    pub method: String,
    /// `server` or `client`.
    pub side: &'static str,
    /// Calls finished in the second.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Latency percentiles and mean, milliseconds (0 without calls).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// One second of the whole process.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// End of the second, Unix milliseconds.
    pub unix_ms: u64,
    /// Methods with calls in it.
    pub methods: Vec<MethodSample>,
    /// Resource use at its end.
    pub resources: ResourceUsage,
    /// CPU used over it, in cores.
    pub cpu_cores: f64,
}

/// The observer of one process: metrics, tracer, history, anomalies, ejections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use polycall_observe::{Observer, trace::Tracer};
/// let observer = Observer::new(Tracer::off());
/// observer.start_sampler(None);
/// assert!(observer.anomalies().is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Arc<CallMetrics>,
    tracer: Tracer,
    ejections: Arc<Ejections>,
    state: Mutex<SamplerState>,
    events: broadcast::Sender<Arc<str>>,
    /// Families reported at each scrape ([`Observer::report`]).
    reported: Mutex<Vec<Reporter>>,
}

type Reporter = Arc<dyn Fn() -> Vec<MetricFamily> + Send + Sync>;

struct SamplerState {
    detector: AnomalyDetector,
    outliers: OutlierDetector,
    history: VecDeque<Sample>,
    /// Each method's latency histogram and error count at the previous sample.
    last_methods: HashMap<(Side, Arc<str>), (HistogramSnapshot, u64)>,
    last_endpoints: HashMap<(Arc<str>, u64), EndpointSnapshot>,
    last_resources: Option<(Instant, ResourceUsage)>,
    recent_ejections: VecDeque<(u64, Ejection)>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("tracer", &self.inner.tracer)
            .finish()
    }
}

/// One sample standing for several consecutive ones.
fn merge(samples: &[Sample]) -> Sample {
    let mut by: BTreeMap<(String, &'static str), MethodSample> = BTreeMap::new();
    for s in samples {
        for m in &s.methods {
            let e = by
                .entry((m.method.clone(), m.side))
                .or_insert_with(|| MethodSample {
                    calls: 0,
                    errors: 0,
                    mean_ms: 0.0,
                    ..m.clone()
                });
            let total = (e.calls + m.calls).max(1) as f64;
            e.mean_ms = (e.mean_ms * e.calls as f64 + m.mean_ms * m.calls as f64) / total;
            e.calls += m.calls;
            e.errors += m.errors;
            e.p50_ms = e.p50_ms.max(m.p50_ms);
            e.p90_ms = e.p90_ms.max(m.p90_ms);
            e.p99_ms = e.p99_ms.max(m.p99_ms);
        }
    }
    let last = samples.last().cloned().unwrap_or(Sample {
        unix_ms: 0,
        methods: vec![],
        resources: ResourceUsage::default(),
        cpu_cores: 0.0,
    });
    Sample {
        unix_ms: last.unix_ms,
        methods: by.into_values().collect(),
        resources: last.resources,
        cpu_cores: samples.iter().map(|s| s.cpu_cores).sum::<f64>() / samples.len().max(1) as f64,
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Observer {
    /// An observer recording spans through `tracer` (use [`Tracer::off`] for none).
    pub fn new(tracer: Tracer) -> Self {
        Self::with_config(tracer, DetectorConfig::default(), OutlierConfig::default())
    }

    /// An observer with its detectors tuned.
    pub fn with_config(tracer: Tracer, detector: DetectorConfig, outliers: OutlierConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                metrics: Arc::new(CallMetrics::default()),
                tracer,
                ejections: Arc::new(Ejections::default()),
                state: Mutex::new(SamplerState {
                    detector: AnomalyDetector::new(detector),
                    outliers: OutlierDetector::new(outliers),
                    history: VecDeque::new(),
                    last_methods: HashMap::new(),
                    last_endpoints: HashMap::new(),
                    last_resources: None,
                    recent_ejections: VecDeque::new(),
                }),
                events,
                reported: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Adds families read at every scrape: a client's breakers and retry budget
    /// ([`crate::families`]), counters of your own.
    pub fn report(&self, families: impl Fn() -> Vec<MetricFamily> + Send + Sync + 'static) {
        self.inner
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(families));
    }

    /// The families every [`Observer::report`] gives now.
    pub fn reported(&self) -> Vec<MetricFamily> {
        let reporters = self
            .inner
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        reporters.iter().flat_map(|r| r()).collect()
    }

    /// The per-method metrics.
    pub fn metrics(&self) -> &Arc<CallMetrics> {
        &self.inner.metrics
    }

    /// The tracer.
    pub fn tracer(&self) -> &Tracer {
        &self.inner.tracer
    }

    /// The endpoints ejected now (what a balancer skips).
    pub fn ejections(&self) -> &Arc<Ejections> {
        &self.inner.ejections
    }

    /// A layer measuring calls on `side` into this observer.
    pub fn layer(&self, side: Side) -> MeasureLayer {
        MeasureLayer::new(side, self.inner.metrics.clone(), self.inner.tracer.clone())
    }

    /// Anomalies in force.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.lock().detector.active()
    }

    /// Ejections of the last ten minutes, newest last: `(unix ms, ejection)`.
    pub fn recent_ejections(&self) -> Vec<(u64, Ejection)> {
        self.lock().recent_ejections.iter().cloned().collect()
    }

    /// Samples newer than `since` (Unix ms), oldest first.
    pub fn history(&self, since_unix_ms: u64) -> Vec<Sample> {
        self.lock()
            .history
            .iter()
            .filter(|s| s.unix_ms >= since_unix_ms)
            .cloned()
            .collect()
    }

    /// Samples newer than `since` merged into at most `points` (each merged sample sums
    /// its seconds' calls and errors and keeps their highest percentiles and mean
    /// latency weighted by calls), oldest first: an hour fits a report.
    pub fn history_merged(&self, since_unix_ms: u64, points: usize) -> Vec<Sample> {
        let all = self.history(since_unix_ms);
        let step = all.len().div_ceil(points.max(1)).max(1);
        if step == 1 {
            return all;
        }
        all.chunks(step).map(merge).collect()
    }

    /// Follows the dashboard's events: each a JSON object with a `type` (`sample`,
    /// `anomaly`, `cleared`, `ejected`, and whatever [`Observer::publish`] sends).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.events.subscribe()
    }

    /// Sends an event to every dashboard following (a state transition…).
    pub fn publish(&self, event: &serde_json::Value) {
        let _ = self.inner.events.send(Arc::from(event.to_string()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SamplerState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the one-second sampler on the current tokio runtime; it stops when the
    /// last clone of the observer is dropped.
    pub fn start_sampler(&self, source: Option<Arc<dyn Source>>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let observer = Observer { inner };
                let endpoints = source.as_ref().map(|s| s.endpoints()).unwrap_or_default();
                // A bug in one sample must not end sampling for good.
                let took = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    observer.sample(Instant::now(), SystemTime::now(), &endpoints)
                }));
                if took.is_err() {
                    tracing::error!("the metrics sampler panicked; skipping this sample");
                }
            }
        });
    }

    /// Takes one sample: what happened since the previous one. The sampler calls it
    /// every second; tests may call it directly.
    pub fn sample(
        &self,
        now: Instant,
        wall: SystemTime,
        endpoints: &[(Arc<str>, u64, EndpointSnapshot)],
    ) {
        let resources = ResourceUsage::read();
        let mut events = Vec::new();
        let mut st = self.lock();
        let mut methods = Vec::new();
        for (side, name, stats) in self.inner.metrics.all() {
            let now_h = stats.latency.snapshot();
            let errors = stats.errors();
            let (prev, prev_errors) = st
                .last_methods
                .insert((side, name.clone()), (now_h, errors))
                .unwrap_or_default();
            let d = now_h.since(&prev);
            let calls = d.count();
            if calls == 0 {
                continue;
            }
            let ms = |q: f64| d.quantile(q).map_or(0.0, |v| v.as_secs_f64() * 1e3);
            methods.push(MethodSample {
                method: name.to_string(),
                side: side.as_str(),
                calls,
                errors: errors.saturating_sub(prev_errors).min(calls),
                p50_ms: ms(0.5),
                p90_ms: ms(0.9),
                p99_ms: ms(0.99),
                mean_ms: d.mean().map_or(0.0, |v| v.as_secs_f64() * 1e3),
            });
        }
        for m in methods.iter().filter(|m| m.side == "server") {
            let w = Window {
                calls: m.calls,
                errors: m.errors,
                mean_latency: Duration::from_secs_f64(m.mean_ms / 1e3),
            };
            for change in st.detector.observe(wall, &m.method, w) {
                match change {
                    Change::Raised(a) => {
                        tracing::warn!(method = %a.method, kind = ?a.kind, "anomaly: {}", a.evidence());
                        events.push(
                            json!({"type": "anomaly", "anomaly": a, "evidence": a.evidence()}),
                        );
                    }
                    Change::Cleared(a) => {
                        tracing::info!(method = %a.method, kind = ?a.kind, "anomaly cleared");
                        events.push(json!({"type": "cleared", "anomaly": a}));
                    }
                }
            }
        }
        let mut windows = Vec::with_capacity(endpoints.len());
        for (m, e, snap) in endpoints {
            let prev = st
                .last_endpoints
                .insert((m.clone(), *e), *snap)
                .unwrap_or_default();
            windows.push((m.clone(), *e, snap.since(&prev)));
        }
        let SamplerState { outliers, .. } = &mut *st;
        let ejected = outliers.observe(now, &windows, &self.inner.ejections);
        for e in ejected {
            tracing::warn!(method = %e.method, endpoint = e.endpoint, for_ms = e.for_ms, "endpoint ejected: {}", e.evidence);
            events.push(json!({"type": "ejected", "ejection": e}));
            st.recent_ejections.push_back((unix_ms(wall), e));
        }
        let horizon = unix_ms(wall).saturating_sub(600_000);
        while st
            .recent_ejections
            .front()
            .is_some_and(|(t, _)| *t < horizon)
        {
            st.recent_ejections.pop_front();
        }
        let cpu_cores = st.last_resources.map_or(0.0, |(t, r)| {
            resources.cpu_share_since(&r, now.duration_since(t))
        });
        st.last_resources = Some((now, resources));
        let sample = Sample {
            unix_ms: unix_ms(wall),
            methods,
            resources,
            cpu_cores,
        };
        events.insert(0, json!({"type": "sample", "sample": sample}));
        st.history.push_back(sample);
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
        drop(st);
        for e in events {
            self.publish(&e);
        }
    }
}
