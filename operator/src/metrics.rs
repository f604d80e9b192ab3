//! Prometheus metrics of the operator (prefix `infermesh_operator`): reconciles, failures by
//! reason, reconcile duration, leadership.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: String,
}

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("infermesh_operator");
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "ModelService reconciles started",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "ModelService reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one ModelService reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica holds the leader lease (1) or stands by (0)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self) -> DurationGuard<'_> {
        self.reconciles.inc();
        DurationGuard {
            histogram: &self.duration,
            start: Instant::now(),
        }
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Observes the elapsed time into the duration histogram on drop.
pub struct DurationGuard<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_failures_and_histogram() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.failed("kube_api");
        let text = m.render();
        assert!(
            text.contains("infermesh_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("infermesh_operator_reconcile_failures_total{reason=\"kube_api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("infermesh_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
