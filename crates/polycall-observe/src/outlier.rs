//! Outlier endpoints: one provider of a method much slower, or failing much more, than
//! its peers is ejected from balancing for a while.
//!
//! Each window (a second), every endpoint of a method with at least two endpoints
//! judged is compared with the median of the *others*: it is an outlier when its mean
//! latency exceeds `max(factor × median, median + floor)` or its error ratio exceeds
//! the others' by [`OutlierConfig::error_margin`]. An outlier is ejected for
//! [`OutlierConfig::base_ejection`] times the number of its ejections so far (capped),
//! so an endpoint that stays bad returns less and less often; never more than half of a
//! method's endpoints are out at once, so ejection cannot take a method down.
//!
//! Pure: [`OutlierDetector::observe`] takes the windows and `now`; [`Ejections`] is what
//! the balancer reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What one endpoint of one method has done (cumulative, lock-free).
#[derive(Debug, Default)]
pub struct EndpointStats {
    calls: AtomicU64,
    errors: AtomicU64,
    latency_ns: AtomicU64,
}

/// A copy of [`EndpointStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// Calls finished.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their latencies summed, nanoseconds.
    pub latency_ns: u64,
}

impl EndpointStats {
    /// Records one finished call.
    pub fn record(&self, took: Duration, failed: bool) {
        self.calls.fetch_add(1, Relaxed);
        self.errors.fetch_add(u64::from(failed), Relaxed);
        self.latency_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            calls: self.calls.load(Relaxed),
            errors: self.errors.load(Relaxed),
            latency_ns: self.latency_ns.load(Relaxed),
        }
    }
}

impl EndpointSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &EndpointSnapshot) -> EndpointSnapshot {
        EndpointSnapshot {
            calls: self.calls.saturating_sub(earlier.calls),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_ns: self.latency_ns.saturating_sub(earlier.latency_ns),
        }
    }

    fn mean(&self) -> f64 {
        self.latency_ns as f64 / self.calls.max(1) as f64 / 1e9
    }

    fn error_ratio(&self) -> f64 {
        self.errors as f64 / self.calls.max(1) as f64
    }
}

/// How outliers are found and how long they stay out.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Calls an endpoint needs in a window to be judged.
    pub min_calls: u64,
    /// How many times the others' median latency makes an outlier.
    pub factor: f64,
    /// And by at least this much.
    pub floor: Duration,
    /// Error ratio above the others' that makes an outlier (0.3: thirty points).
    pub error_margin: f64,
    /// First ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            min_calls: 3,
            factor: 3.0,
            floor: Duration::from_millis(5),
            error_margin: 0.3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(120),
        }
    }
}

/// An endpoint ejected, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ejection {
    /// `service.method`.
    pub method: String,
    /// The endpoint (for the runtime: the provider id).
    pub endpoint: u64,
    /// Why, for people.
    pub evidence: String,
    /// How long it stays out.
    pub for_ms: u64,
}

/// Endpoints ejected now, as the balancer reads them: a check per pick is one relaxed
/// load while nothing is ejected.
#[derive(Debug, Default)]
pub struct Ejections {
    any: AtomicBool,
    set: RwLock<HashSet<(Arc<str>, u64)>>,
}

impl Ejections {
    /// Whether `endpoint` is ejected from `method` (`service.method`).
    pub fn is_ejected(&self, service: &str, method: &str, endpoint: u64) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        set.iter().any(|(m, e)| {
            *e == endpoint
                && m.len() == service.len() + 1 + method.len()
                && m.starts_with(service)
                && m.ends_with(method)
        })
    }

    fn replace(&self, now: HashSet<(Arc<str>, u64)>) {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        self.any.store(!now.is_empty(), Relaxed);
        *set = now;
    }

    /// Every ejected `(method, endpoint)`.
    pub fn list(&self) -> Vec<(String, u64)> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = set.iter().map(|(m, e)| (m.to_string(), *e)).collect();
        v.sort();
        v
    }
}

/// The pure detector behind [`Ejections`].
#[derive(Debug, Default)]
pub struct OutlierDetector {
    config: OutlierConfig,
    /// (method, endpoint) → (ejected until, times ejected).
    out: HashMap<(Arc<str>, u64), (Option<Instant>, u32)>,
}

impl OutlierDetector {
    /// A detector with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            out: HashMap::new(),
        }
    }

    /// Judges one window: `windows` holds every endpoint's calls of every method over
    /// it. Updates `ejections` and returns the new ejections.
    pub fn observe(
        &mut self,
        now: Instant,
        windows: &[(Arc<str>, u64, EndpointSnapshot)],
        ejections: &Ejections,
    ) -> Vec<Ejection> {
        let c = self.config;
        let mut by_method: HashMap<&Arc<str>, Vec<(u64, EndpointSnapshot)>> = HashMap::new();
        for (m, e, w) in windows {
            by_method.entry(m).or_default().push((*e, *w));
        }
        let mut new = Vec::new();
        for (method, endpoints) in &by_method {
            let judged: Vec<_> = endpoints
                .iter()
                .filter(|(_, w)| w.calls >= c.min_calls)
                .collect();
            if judged.len() < 2 {
                continue;
            }
            let out_now = endpoints
                .iter()
                .filter(|(e, _)| self.is_out(method, *e, now))
                .count();
            let mut allowed = (endpoints.len() / 2).saturating_sub(out_now);
            for (endpoint, w) in &judged {
                if allowed == 0 {
                    break;
                }
                let others: Vec<_> = judged.iter().filter(|(e, _)| e != endpoint).collect();
                let median_latency = median(others.iter().map(|(_, o)| o.mean()).collect());
                let median_errors = median(others.iter().map(|(_, o)| o.error_ratio()).collect());
                let slow_at =
                    (c.factor * median_latency).max(median_latency + c.floor.as_secs_f64());
                let evidence = if w.mean() > slow_at {
                    format!(
                        "mean latency {:.1} ms over {} calls against {:.1} ms for its peers",
                        w.mean() * 1e3,
                        w.calls,
                        median_latency * 1e3
                    )
                } else if w.error_ratio() > median_errors + c.error_margin {
                    format!(
                        "{:.0}% of {} calls failed against {:.0}% for its peers",
                        w.error_ratio() * 100.0,
                        w.calls,
                        median_errors * 100.0
                    )
                } else {
                    continue;
                };
                let entry = self
                    .out
                    .entry(((*method).clone(), *endpoint))
                    .or_insert((None, 0));
                entry.1 += 1;
                let length = (c.base_ejection * entry.1).min(c.max_ejection);
                entry.0 = Some(now + length);
                allowed -= 1;
                new.push(Ejection {
                    method: method.to_string(),
                    endpoint: *endpoint,
                    evidence,
                    for_ms: length.as_millis() as u64,
                });
            }
        }
        // Endpoints whose time is up come back (their count stays: a relapse is longer).
        let current: HashSet<(Arc<str>, u64)> = self
            .out
            .iter()
            .filter(|(_, (until, _))| until.is_some_and(|u| u > now))
            .map(|(k, _)| k.clone())
            .collect();
        ejections.replace(current);
        new
    }

    fn is_out(&self, method: &Arc<str>, endpoint: u64, now: Instant) -> bool {
        self.out
            .get(&(method.clone(), endpoint))
            .is_some_and(|(u, _)| u.is_some_and(|u| u > now))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(calls: u64, errors: u64, ms: f64) -> EndpointSnapshot {
        EndpointSnapshot {
            calls,
            errors,
            latency_ns: (ms * 1e6) as u64 * calls,
        }
    }

    #[test]
    fn a_slow_endpoint_is_ejected_and_returns_later_for_longer() {
        let m: Arc<str> = Arc::from("a.b");
        let mut d = OutlierDetector::default();
        let ej = Ejections::default();
        let t0 = Instant::now();
        let w = vec![
            (m.clone(), 1, snap(20, 0, 1.0)),
            (m.clone(), 2, snap(20, 0, 50.0)),
        ];
        let new = d.observe(t0, &w, &ej);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].endpoint, 2);
        assert!(ej.is_ejected("a", "b", 2));
        assert!(!ej.is_ejected("a", "b", 1));
        assert!(!ej.is_ejected("a", "bb", 2));
        // Out for 10 s, then back; ejected again: 20 s.
        d.observe(t0 + Duration::from_secs(11), &[], &ej);
        assert!(!ej.is_ejected("a", "b", 2));
        let new = d.observe(t0 + Duration::from_secs(12), &w, &ej);
        assert_eq!(new[0].for_ms, 20_000);
    }

    #[test]
    fn never_more_than_half_and_peers_alike_stay() {
        let m: Arc<str> = Arc::from("a.b");
        let mut d = OutlierDetector::default();
        let ej = Ejections::default();
        let w = vec![
            (m.clone(), 1, snap(20, 0, 1.0)),
            (m.clone(), 2, snap(20, 0, 1.3)),
        ];
        assert!(d.observe(Instant::now(), &w, &ej).is_empty());
        // Two endpoints, both failing: the first found goes, never both.
        let w = vec![
            (m.clone(), 1, snap(20, 20, 1.0)),
            (m.clone(), 2, snap(20, 0, 1.0)),
        ];
        assert_eq!(d.observe(Instant::now(), &w, &ej).len(), 1);
        assert_eq!(ej.list(), vec![("a.b".to_owned(), 1)]);
    }
}
