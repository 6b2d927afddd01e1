//! Anomaly detection per method: an online baseline of latency and error rate.
//!
//! Every second (one *window*) each method's mean latency and error ratio are compared
//! with its baseline: an exponentially weighted moving average (EWMA, weight
//! [`DetectorConfig::alpha`] per window) of the value and, as its spread, an EWMA of the
//! absolute deviation from it (the mean absolute deviation is far less moved by a single
//! wild window than a variance). A window is anomalous when its value exceeds
//! `baseline + max(k × deviation, relative × baseline, floor)`, with enough calls to mean
//! something. A method becomes anomalous at its first anomalous window — within a
//! second or two of the change — and is cleared after [`DetectorConfig::clear_after`]
//! normal windows in a row. While anomalous, the baseline learns ten times slower, so a
//! lasting shift becomes the new normal after a minute or so rather than never.
//!
//! The detector is a pure state machine: the caller hands it windows and `now`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How sensitive the detector is.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct DetectorConfig {
    /// EWMA weight of a new window (0..1).
    pub alpha: f64,
    /// Deviations above the baseline that count as anomalous.
    pub k: f64,
    /// Windows a method needs before it is judged.
    pub warmup: u32,
    /// Calls a window needs to be judged.
    pub min_calls: u64,
    /// Smallest latency rise that counts, however steady the baseline.
    pub latency_floor: Duration,
    /// Smallest relative latency rise that counts (0.5: 50 % above the baseline).
    pub relative: f64,
    /// Smallest error-ratio rise that counts (0.05: five points).
    pub error_floor: f64,
    /// Normal windows in a row that clear an anomaly.
    pub clear_after: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            alpha: 0.2,
            k: 4.0,
            warmup: 3,
            min_calls: 5,
            latency_floor: Duration::from_millis(2),
            relative: 0.5,
            error_floor: 0.05,
            clear_after: 3,
        }
    }
}

/// One method's calls over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Calls finished.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their mean latency.
    pub mean_latency: Duration,
}

/// A value's baseline: EWMA and EWMA of the absolute deviation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Baseline {
    /// The expected value.
    pub mean: f64,
    /// Its usual spread.
    pub deviation: f64,
    /// Windows learned from.
    pub windows: u32,
}

impl Baseline {
    fn learn(&mut self, x: f64, alpha: f64) {
        if self.windows == 0 {
            self.mean = x;
            self.deviation = 0.0;
        } else {
            let d = (x - self.mean).abs();
            self.deviation += alpha * (d - self.deviation);
            self.mean += alpha * (x - self.mean);
        }
        self.windows = self.windows.saturating_add(1);
    }

    fn threshold(&self, k: f64, relative: f64, floor: f64) -> f64 {
        self.mean + (k * self.deviation).max(relative * self.mean).max(floor)
    }
}

/// What is anomalous about a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Calls take longer than usual.
    Latency,
    /// More calls fail than usual.
    Errors,
}

/// An anomaly in force, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// `service.method`.
    pub method: String,
    /// What is off.
    pub kind: AnomalyKind,
    /// Since when (Unix milliseconds).
    pub since_unix_ms: u64,
    /// The value in the window that raised it (seconds, or a ratio).
    pub observed: f64,
    /// The baseline it was compared with.
    pub baseline: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// Calls in that window.
    pub calls: u64,
}

impl Anomaly {
    /// One sentence for people (`sys.health`, logs).
    pub fn evidence(&self) -> String {
        match self.kind {
            AnomalyKind::Latency => format!(
                "{}: mean latency {:.1} ms over {} calls against a baseline of {:.1} ms (threshold {:.1} ms)",
                self.method,
                self.observed * 1e3,
                self.calls,
                self.baseline * 1e3,
                self.threshold * 1e3
            ),
            AnomalyKind::Errors => format!(
                "{}: {:.0}% of {} calls failed against a baseline of {:.1}% (threshold {:.1}%)",
                self.method,
                self.observed * 100.0,
                self.calls,
                self.baseline * 100.0,
                self.threshold * 100.0
            ),
        }
    }
}

#[derive(Debug, Default)]
struct MethodState {
    latency: Baseline,
    errors: Baseline,
    active: Vec<Anomaly>,
    normal: u32,
}

/// What changed in one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A method became anomalous.
    Raised(Anomaly),
    /// A method's anomaly cleared.
    Cleared(Anomaly),
}

/// The per-method detector.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use polycall_observe::anomaly::{AnomalyDetector, Window};
/// let mut d = AnomalyDetector::default();
/// let w = |ms| Window { calls: 100, errors: 0, mean_latency: Duration::from_millis(ms) };
/// for _ in 0..10 { d.observe(SystemTime::now(), "a.b", w(1)); }
/// let changes = d.observe(SystemTime::now(), "a.b", w(40));
/// assert_eq!(changes.len(), 1);
/// assert_eq!(d.active().len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    config: DetectorConfig,
    methods: HashMap<String, MethodState>,
}

impl AnomalyDetector {
    /// A detector with `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            methods: HashMap::new(),
        }
    }

    /// Judges `method`'s window ending `now`, then learns from it.
    pub fn observe(&mut self, now: SystemTime, method: &str, w: Window) -> Vec<Change> {
        let c = self.config;
        let st = self.methods.entry(method.to_owned()).or_default();
        if w.calls < c.min_calls {
            return Vec::new(); // too few calls to judge or to learn from
        }
        let latency = w.mean_latency.as_secs_f64();
        let ratio = w.errors as f64 / w.calls as f64;
        let judged = st.latency.windows >= c.warmup;
        let mut found = Vec::new();
        if judged {
            let t = st
                .latency
                .threshold(c.k, c.relative, c.latency_floor.as_secs_f64());
            if latency > t {
                found.push((AnomalyKind::Latency, latency, st.latency.mean, t));
            }
            let t = st.errors.threshold(c.k, 0.0, c.error_floor);
            if ratio > t && w.errors >= 3 {
                found.push((AnomalyKind::Errors, ratio, st.errors.mean, t));
            }
        }
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut changes = Vec::new();
        for (kind, observed, baseline, threshold) in &found {
            if !st.active.iter().any(|a| a.kind == *kind) {
                let a = Anomaly {
                    method: method.to_owned(),
                    kind: *kind,
                    since_unix_ms: since,
                    observed: *observed,
                    baseline: *baseline,
                    threshold: *threshold,
                    calls: w.calls,
                };
                st.active.push(a.clone());
                changes.push(Change::Raised(a));
            } else if let Some(a) = st.active.iter_mut().find(|a| a.kind == *kind) {
                a.observed = *observed;
                a.calls = w.calls;
            }
        }
        if found.is_empty() && !st.active.is_empty() {
            st.normal += 1;
            if st.normal >= c.clear_after {
                changes.extend(st.active.drain(..).map(Change::Cleared));
                st.normal = 0;
            }
        } else {
            st.normal = 0;
        }
        // Learn: slowly while something is off, so a lasting shift becomes normal.
        let anomalous_latency = st.active.iter().any(|a| a.kind == AnomalyKind::Latency);
        let anomalous_errors = st.active.iter().any(|a| a.kind == AnomalyKind::Errors);
        st.latency.learn(
            latency,
            if anomalous_latency {
                c.alpha / 10.0
            } else {
                c.alpha
            },
        );
        st.errors.learn(
            ratio,
            if anomalous_errors {
                c.alpha / 10.0
            } else {
                c.alpha
            },
        );
        changes
    }

    /// Every anomaly in force.
    pub fn active(&self) -> Vec<Anomaly> {
        let mut v: Vec<Anomaly> = self
            .methods
            .values()
            .flat_map(|s| s.active.iter().cloned())
            .collect();
        v.sort_by(|a, b| a.method.cmp(&b.method));
        v
    }

    /// A method's latency baseline (seconds), once it has one.
    pub fn latency_baseline(&self, method: &str) -> Option<Baseline> {
        self.methods.get(method).map(|s| s.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(calls: u64, errors: u64, ms: f64) -> Window {
        Window {
            calls,
            errors,
            mean_latency: Duration::from_secs_f64(ms / 1e3),
        }
    }

    #[test]
    fn steady_noise_raises_nothing() {
        let mut d = AnomalyDetector::default();
        let now = SystemTime::now();
        for i in 0..200 {
            // 1 ms ± 0.3 ms, 1 % errors.
            let ms = 1.0 + 0.3 * ((i * 7919 % 13) as f64 / 6.0 - 1.0);
            assert!(
                d.observe(now, "a.b", w(200, 2, ms)).is_empty(),
                "window {i}"
            );
        }
    }

    #[test]
    fn a_latency_step_is_raised_at_once_and_cleared_after_recovery() {
        let mut d = AnomalyDetector::default();
        let now = SystemTime::now();
        for _ in 0..10 {
            d.observe(now, "a.b", w(100, 0, 1.0));
        }
        let c = d.observe(now, "a.b", w(100, 0, 26.0));
        assert!(matches!(&c[..], [Change::Raised(a)] if a.kind == AnomalyKind::Latency));
        assert!(d.active()[0].evidence().contains("mean latency 26.0 ms"));
        for _ in 0..2 {
            assert!(d.observe(now, "a.b", w(100, 0, 1.0)).is_empty());
        }
        let c = d.observe(now, "a.b", w(100, 0, 1.0));
        assert!(matches!(&c[..], [Change::Cleared(_)]));
        assert!(d.active().is_empty());
    }

    #[test]
    fn an_error_burst_is_raised_and_small_windows_are_not_judged() {
        let mut d = AnomalyDetector::default();
        let now = SystemTime::now();
        for _ in 0..10 {
            d.observe(now, "a.b", w(100, 1, 1.0));
        }
        assert!(
            d.observe(now, "a.b", w(2, 2, 1.0)).is_empty(),
            "2 calls mean nothing"
        );
        let c = d.observe(now, "a.b", w(100, 30, 1.0));
        assert!(matches!(&c[..], [Change::Raised(a)] if a.kind == AnomalyKind::Errors));
    }

    #[test]
    fn a_lasting_shift_becomes_the_new_normal() {
        let mut d = AnomalyDetector::default();
        let now = SystemTime::now();
        for _ in 0..10 {
            d.observe(now, "a.b", w(100, 0, 1.0));
        }
        let mut cleared_at = None;
        for i in 0..400 {
            if d.observe(now, "a.b", w(100, 0, 5.0))
                .iter()
                .any(|c| matches!(c, Change::Cleared(_)))
            {
                cleared_at = Some(i);
                break;
            }
        }
        let at = cleared_at.expect("the new level is learnt");
        assert!(at > 5, "not forgotten at once ({at})");
    }
}
