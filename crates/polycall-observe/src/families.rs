//! Metric families of polycall's resilience layers, for programs that use them in
//! their clients: circuit-breaker state and openings, retry budgets.
//!
//! Register what to report with [`Observer::report`](crate::Observer::report); every
//! scrape reads the layers' counters then.
//!
//! ```
//! use polycall_layers::breaker::{BreakerConfig, CircuitBreakerLayer};
//! use polycall_observe::{Observer, families, trace::Tracer};
//! use tower::Layer;
//! let observer = Observer::new(Tracer::off());
//! let breakers = CircuitBreakerLayer::new(BreakerConfig::default());
//! let _client = breakers.layer(tower::service_fn(|_c: polycall_core::Call| async {
//!     Ok::<_, polycall_core::Status>(polycall_core::Reply::new(polycall_core::Payload::empty()))
//! }));
//! observer.report(move || families::breakers("inventory", &breakers.breakers()));
//! assert!(observer.encode_text(&[]).contains(r#"polycall_breaker_state{client="inventory",endpoint="0",state="closed"} 1"#));
//! ```

use polycall_layers::breaker::{BreakerHandle, BreakerState};
use polycall_layers::retry::RetryBudget;

use crate::{FamilyKind, MetricFamily};

/// `polycall_breaker_state` (1 for the state each breaker is in), `polycall_breaker_opened_total`
/// and `polycall_breaker_rejected_total`, each endpoint of `client` numbered in order.
pub fn breakers(client: &str, handles: &[BreakerHandle]) -> Vec<MetricFamily> {
    let labels = |i: usize| {
        vec![
            ("client".to_owned(), client.to_owned()),
            ("endpoint".to_owned(), i.to_string()),
        ]
    };
    let mut state = Vec::new();
    let mut opened = Vec::new();
    let mut rejected = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        let now = h.state();
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let mut l = labels(i);
            l.push(("state".to_owned(), s.name().to_owned()));
            state.push((l, f64::from(u8::from(s == now))));
        }
        opened.push((labels(i), h.opened() as f64));
        rejected.push((labels(i), h.rejected() as f64));
    }
    vec![
        MetricFamily {
            name: "polycall_breaker_state".into(),
            help: "1 for the state each circuit breaker is in (closed, open, half_open).".into(),
            kind: FamilyKind::Gauge,
            series: state,
        },
        MetricFamily {
            name: "polycall_breaker_opened".into(),
            help: "Times each circuit breaker opened.".into(),
            kind: FamilyKind::Counter,
            series: opened,
        },
        MetricFamily {
            name: "polycall_breaker_rejected".into(),
            help: "Calls a circuit breaker refused without sending.".into(),
            kind: FamilyKind::Counter,
            series: rejected,
        },
    ]
}

/// `polycall_retry_calls_total`, `polycall_retries_total`, `polycall_retries_refused_total`
/// and `polycall_retry_budget_available` of `client`'s retry budget.
pub fn retry_budget(client: &str, budget: &RetryBudget) -> Vec<MetricFamily> {
    let one = |name: &str, help: &str, kind, v: u64| MetricFamily {
        name: name.into(),
        help: help.into(),
        kind,
        series: vec![(vec![("client".to_owned(), client.to_owned())], v as f64)],
    };
    vec![
        one(
            "polycall_retry_calls",
            "First attempts deposited in the retry budget.",
            FamilyKind::Counter,
            budget.calls(),
        ),
        one(
            "polycall_retries",
            "Retries made.",
            FamilyKind::Counter,
            budget.retries(),
        ),
        one(
            "polycall_retries_refused",
            "Retries the budget refused (it was empty).",
            FamilyKind::Counter,
            budget.refused(),
        ),
        one(
            "polycall_retry_budget_available",
            "Whole retries the budget allows now.",
            FamilyKind::Gauge,
            budget.available(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use polycall_layers::retry::BudgetConfig;

    #[test]
    fn a_retry_budget_reports_its_counts() {
        let budget = RetryBudget::new(BudgetConfig::default());
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw());
        let f = retry_budget("orders", &budget);
        let value = |name: &str| {
            f.iter()
                .find(|m| m.name == name)
                .map(|m| (m.series[0].0.clone(), m.series[0].1))
                .unwrap()
        };
        assert_eq!(value("polycall_retry_calls").1, 2.0);
        assert_eq!(value("polycall_retries").1, 1.0);
        assert_eq!(
            value("polycall_retries").0,
            vec![("client".to_owned(), "orders".to_owned())]
        );
        assert_eq!(value("polycall_retries_refused").1, 0.0);
    }
}
