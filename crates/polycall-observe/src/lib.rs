//! # polycall-observe
//!
//! What polycall measures and how it shows it:
//!
//! - [`MeasureLayer`] (`measure.rs`): the tower layer that counts, times and traces each
//!   call, on the server or the client side;
//! - [`metrics`]: per-method counters, errors by code, latency histograms and bytes,
//!   written as OpenMetrics text;
//! - [`trace`]: call spans continuing W3C trace context from call metadata, sampling
//!   and a batching export queue ([`otlp`] sends them over OTLP/gRPC, feature `otlp`);
//! - [`anomaly`]: an online latency and error-rate baseline per method;
//! - [`outlier`]: ejection of a provider much worse than its peers;
//! - [`families`]: circuit-breaker and retry-budget families for clients that use those
//!   layers ([`Observer::report`]);
//! - [`resources`]: RSS, CPU, open files and threads from `/proc/self`;
//! - [`Observer`] (`observer.rs`): the one-second sampler tying them together, with
//!   an hour of history and the dashboard's event feed;
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`,
//!   `/dashboard`, `/events`);
//! - [`logs`]: JSON log lines carrying the current call's `trace_id` and `span_id`, and
//!   libpolycall's telemetry line shape.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use polycall_core::{handler_fn, Call, MethodInfo, Payload, Reply, Router};
//! use polycall_observe::{Observer, metrics::Side, trace::Tracer};
//! use tower::{Layer, ServiceExt};
//! let observer = Observer::new(Tracer::off());
//! let echo = handler_fn(|c: Call| async move { Ok::<_, polycall_core::Status>(Reply::new(c.payload)) });
//! let router = Router::new().route("greeter.hello", MethodInfo::new("echo"), echo).unwrap();
//! let served = observer.layer(Side::Server).layer(router);
//! served.oneshot(Call::new("greeter.hello", Payload::json(&"hi").unwrap()).unwrap()).await.unwrap();
//! assert!(observer.encode_text(&[]).contains("polycall_calls_total"));
//! # }
//! ```

pub mod admin;
pub mod anomaly;
pub mod families;
pub mod logs;
mod measure;
pub mod metrics;
mod observer;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod outlier;
pub mod resources;
pub mod trace;

pub use measure::{Measure, MeasureLayer, ResponseFuture};
pub use observer::{HISTORY, MethodSample, NotReady, Observer, Sample, Source};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// A metric family a [`Source`] reports at each scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// Its name (`polycall_providers`); counters without the `_total` suffix.
    pub name: String,
    /// What it measures.
    pub help: String,
    /// Gauge or counter.
    pub kind: FamilyKind,
    /// Each series: its labels and its value.
    pub series: Vec<(Vec<(String, String)>, f64)>,
}

/// The type of a [`MetricFamily`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only goes up.
    Counter,
}

impl MetricFamily {
    /// A family with one unlabelled series.
    pub fn single(name: &str, help: &str, kind: FamilyKind, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            series: vec![(vec![], value)],
        }
    }
}

#[derive(Debug)]
struct Families(Vec<MetricFamily>);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match f.kind {
                FamilyKind::Gauge => MetricType::Gauge,
                FamilyKind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            for (labels, v) in &f.series {
                let m = family.encode_family(labels)?;
                match f.kind {
                    FamilyKind::Gauge => {
                        let mut m = m;
                        m.encode_gauge(v)?
                    }
                    FamilyKind::Counter => {
                        let mut m = m;
                        m.encode_counter::<NoLabelSet, _, f64>(v, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

impl Observer {
    /// Everything measured, in the OpenMetrics text format: the call families, the
    /// process's resources, the tracer's counts, anomalies and ejections in force, and
    /// `extra` (what the embedding process adds).
    pub fn encode_text(&self, extra: &[MetricFamily]) -> String {
        let r = resources::ResourceUsage::read();
        let t = self.tracer().stats();
        let mut own = vec![
            MetricFamily::single(
                "process_resident_memory_bytes",
                "Resident memory.",
                FamilyKind::Gauge,
                r.rss_bytes as f64,
            ),
            MetricFamily::single(
                "process_cpu_seconds",
                "CPU time used (user and system).",
                FamilyKind::Counter,
                r.cpu_seconds,
            ),
            MetricFamily::single(
                "process_open_fds",
                "Open file descriptors.",
                FamilyKind::Gauge,
                r.open_fds as f64,
            ),
            MetricFamily::single(
                "process_threads",
                "Threads.",
                FamilyKind::Gauge,
                r.threads as f64,
            ),
            MetricFamily::single(
                "polycall_spans_exported",
                "Spans handed to the exporter.",
                FamilyKind::Counter,
                t.exported as f64,
            ),
            MetricFamily::single(
                "polycall_spans_dropped",
                "Spans dropped: the export queue was full.",
                FamilyKind::Counter,
                t.dropped as f64,
            ),
            MetricFamily::single(
                "polycall_spans_failed",
                "Spans in batches the exporter could not send.",
                FamilyKind::Counter,
                t.failed as f64,
            ),
        ];
        let anomalies = self.anomalies();
        own.push(MetricFamily {
            name: "polycall_anomaly".into(),
            help: "1 while a method's latency or error rate is anomalous.".into(),
            kind: FamilyKind::Gauge,
            series: anomalies
                .iter()
                .map(|a| {
                    let kind = serde_json::to_value(a.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    (
                        vec![("method".into(), a.method.clone()), ("kind".into(), kind)],
                        1.0,
                    )
                })
                .collect(),
        });
        own.push(MetricFamily {
            name: "polycall_endpoint_ejected".into(),
            help: "1 while an endpoint is ejected from a method's balancing as an outlier.".into(),
            kind: FamilyKind::Gauge,
            series: self
                .ejections()
                .list()
                .into_iter()
                .map(|(m, e)| {
                    (
                        vec![("method".into(), m), ("endpoint".into(), e.to_string())],
                        1.0,
                    )
                })
                .collect(),
        });
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.metrics().collector()));
        own.extend(extra.iter().cloned());
        own.extend(self.reported());
        registry.register_collector(Box::new(Families(own)));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
