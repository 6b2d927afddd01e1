//! Per-method call metrics: counters, errors by code, latency histograms, bytes.
//!
//! The hot path touches only atomics: a call finds its method's [`MethodStats`] once
//! (a read lock and a hash of the name; [`CallMetrics::method`]) and adds to relaxed
//! counters. Nothing is formatted until a scrape, when [`CallMetrics`] writes its
//! families through `prometheus-client`'s collector interface.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use polycall_core::{Code, Priority};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the latency buckets, in seconds (50 µs … 10 s, then +Inf).
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Which side of a call a measurement is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The call was served here (a runtime routing it, a server answering it).
    Server,
    /// The call was made from here.
    Client,
}

impl Side {
    /// `server` or `client`, the `side` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

fn class_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// A latency histogram over [`LATENCY_BUCKETS`], lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of a [`LatencyHistogram`] at one moment (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative), the last one +Inf.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|&b| b < s);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot {
            sum_ns: self.sum_ns.load(Relaxed),
            ..Default::default()
        };
        for (o, b) in s.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Relaxed);
        }
        s
    }
}

impl HistogramSnapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut d = HistogramSnapshot {
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            ..Default::default()
        };
        for ((o, a), b) in d
            .buckets
            .iter_mut()
            .zip(&self.buckets)
            .zip(&earlier.buckets)
        {
            *o = a.saturating_sub(*b);
        }
        d
    }

    /// Mean latency, `None` without observations.
    pub fn mean(&self) -> Option<Duration> {
        let n = self.count();
        (n > 0).then(|| Duration::from_nanos(self.sum_ns / n))
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket; `None` without
    /// observations. Observations past the last bound count as that bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).max(1.0);
        let mut seen = 0.0;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let next = seen + c as f64;
            if next >= rank {
                let lo = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                // Past the last bound: count as that bound.
                let hi = LATENCY_BUCKETS.get(i).copied().unwrap_or(lo);
                let within = (rank - seen) / c as f64;
                return Some(Duration::from_secs_f64(lo + (hi - lo) * within));
            }
            seen = next;
        }
        None
    }
}

/// What one method's calls did, on one side.
#[derive(Debug, Default)]
pub struct MethodStats {
    calls: [AtomicU64; 4],
    in_flight: AtomicU64,
    errors: Box<[AtomicU64]>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Latency of every call, failed ones included.
    pub latency: LatencyHistogram,
}

impl MethodStats {
    fn new() -> Self {
        Self {
            errors: Code::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    /// Records one finished call: its class, how long it took, the bytes of its request
    /// and reply, and its error code when it failed.
    pub fn record(
        &self,
        class: Priority,
        took: Duration,
        bytes_in: usize,
        bytes_out: usize,
        error: Option<Code>,
    ) {
        self.calls[class as usize].fetch_add(1, Relaxed);
        self.latency.record(took);
        self.bytes_in.fetch_add(bytes_in as u64, Relaxed);
        self.bytes_out.fetch_add(bytes_out as u64, Relaxed);
        if let Some(code) = error {
            let i = Code::ALL.iter().position(|c| *c == code).unwrap_or(0);
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Marks a call started; the returned guard marks it finished when dropped (also
    /// when the caller gave up on it).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Calls started and not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Calls so far, every class.
    pub fn calls(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Failed calls so far, every code.
    pub fn errors(&self) -> u64 {
        self.errors.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Failed calls so far by code (codes seen at least once).
    pub fn errors_by_code(&self) -> Vec<(Code, u64)> {
        Code::ALL
            .iter()
            .zip(self.errors.iter())
            .map(|(c, n)| (*c, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Request and reply payload bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_in.load(Relaxed), self.bytes_out.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets_at_both_ends() {
        let h = LatencyHistogram::default();
        for _ in 0..10 {
            h.record(Duration::from_micros(3)); // first bucket
        }
        let s = h.snapshot();
        assert!(s.quantile(0.5).unwrap() <= Duration::from_micros(50));
        let h = LatencyHistogram::default();
        h.record(Duration::from_secs(30)); // past the last bound
        assert_eq!(h.snapshot().quantile(0.99), Some(Duration::from_secs(10)));
        let h = LatencyHistogram::default();
        for ms in [1, 2, 3, 4, 100] {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.mean(), Some(Duration::from_millis(22)));
        let p50 = s.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_millis(1) && p50 <= Duration::from_millis(5),
            "{p50:?}"
        );
        assert!(s.quantile(1.0).unwrap() > Duration::from_millis(50));
        assert_eq!(LatencyHistogram::default().snapshot().quantile(0.5), None);
    }
}

/// One call in flight; dropping it ends it (see [`MethodStats::start`]).
#[derive(Debug)]
pub struct InFlight(Arc<MethodStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

type MethodKey = (Side, Box<str>, Box<str>);

/// Looks a `(Side, Box<str>, Box<str>)` key up by `(Side, &str, &str)` without allocating: both hash
/// and compare through this view.
trait KeyRef {
    fn key(&self) -> (Side, &str, &str);
}

impl KeyRef for MethodKey {
    fn key(&self) -> (Side, &str, &str) {
        (self.0, &self.1, &self.2)
    }
}

impl KeyRef for (Side, &str, &str) {
    fn key(&self) -> (Side, &str, &str) {
        (self.0, self.1, self.2)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyRef + 'a> for MethodKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for dyn KeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn KeyRef + '_ {}

/// Every method's [`MethodStats`], both sides.
///
/// ```
/// use std::time::Duration;
/// use polycall_observe::metrics::{CallMetrics, Side};
/// let m = CallMetrics::default();
/// m.method(Side::Server, "greeter", "hello").record(Default::default(), Duration::from_millis(2), 10, 20, None);
/// let text = m.encode_text();
/// assert!(text.contains(r#"polycall_calls_total{side="server",method="greeter.hello",class="normal"} 1"#));
/// ```
#[derive(Debug, Default)]
pub struct CallMetrics {
    methods: RwLock<HashMap<MethodKey, Arc<MethodStats>>>,
}

/// Most distinct methods one side tracks; calls to further names (a client probing
/// random names) share the `other` entry, so memory stays bounded.
pub const MAX_METHODS: usize = 4096;

impl CallMetrics {
    /// The stats of `service.method` on `side`, created at first use.
    pub fn method(&self, side: Side, service: &str, method: &str) -> Arc<MethodStats> {
        {
            let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = m.get(&(side, service, method) as &dyn KeyRef) {
                return s.clone();
            }
        }
        let mut m = self.methods.write().unwrap_or_else(|e| e.into_inner());
        let key: MethodKey = if m.len() >= MAX_METHODS {
            (side, "other".into(), "other".into())
        } else {
            (side, service.into(), method.into())
        };
        m.entry(key)
            .or_insert_with(|| Arc::new(MethodStats::new()))
            .clone()
    }

    /// Every method's stats, sorted by side and name.
    pub fn all(&self) -> Vec<(Side, Arc<str>, Arc<MethodStats>)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m
            .iter()
            .map(|((side, service, method), s)| {
                (*side, Arc::from(format!("{service}.{method}")), s.clone())
            })
            .collect();
        v.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        v
    }

    /// The families in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode_text(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(CallCollector(self.all())));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn collector(&self) -> CallCollector {
        CallCollector(self.all())
    }
}

/// A scrape's copy of the method table, written as metric families.
#[derive(Debug)]
pub(crate) struct CallCollector(Vec<(Side, Arc<str>, Arc<MethodStats>)>);

type Labels = Vec<(&'static str, String)>;

impl CallCollector {
    /// Writes one counter family: `rows` gives each method's series (extra labels, value).
    fn counter(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        rows: impl Fn(&MethodStats) -> Vec<(Labels, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (side, method, stats) in &self.0 {
            for (extra, n) in rows(stats) {
                let mut labels: Labels = vec![
                    ("side", side.as_str().into()),
                    ("method", method.to_string()),
                ];
                labels.extend(extra);
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(&n, None)?;
            }
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for CallCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.counter(
            &mut encoder,
            "polycall_calls",
            "Calls finished, by side, method and priority class.",
            |s| {
                Priority::ALL
                    .iter()
                    .map(|p| (*p, s.calls[*p as usize].load(Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .map(|(p, n)| (vec![("class", class_name(p).into())], n))
                    .collect()
            },
        )?;
        self.counter(
            &mut encoder,
            "polycall_call_errors",
            "Calls that failed, by side, method and status code.",
            |s| {
                s.errors_by_code()
                    .into_iter()
                    .map(|(code, n)| (vec![("code", code.name().into())], n))
                    .collect()
            },
        )?;
        self.counter(
            &mut encoder,
            "polycall_request_bytes",
            "Request payload bytes (before compression), by side and method.",
            |s| vec![(vec![], s.bytes().0)],
        )?;
        self.counter(
            &mut encoder,
            "polycall_reply_bytes",
            "Reply payload bytes (before compression), by side and method.",
            |s| vec![(vec![], s.bytes().1)],
        )?;
        let mut family = encoder.encode_descriptor(
            "polycall_calls_in_flight",
            "Calls started and not finished, by side and method.",
            None,
            MetricType::Gauge,
        )?;
        for (side, method, stats) in &self.0 {
            let labels: Labels = vec![
                ("side", side.as_str().into()),
                ("method", method.to_string()),
            ];
            family
                .encode_family(&labels)?
                .encode_gauge(&(stats.in_flight() as i64))?;
        }
        let mut family = encoder.encode_descriptor(
            "polycall_call_duration_seconds",
            "Call latency (failed calls included), by side and method.",
            None,
            MetricType::Histogram,
        )?;
        for (side, method, stats) in &self.0 {
            let labels: Labels = vec![
                ("side", side.as_str().into()),
                ("method", method.to_string()),
            ];
            let snap = stats.latency.snapshot();
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(snap.buckets)
                .collect();
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    snap.sum_ns as f64 / 1e9,
                    snap.count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}
