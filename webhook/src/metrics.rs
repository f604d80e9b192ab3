//! Prometheus metrics of the webhook: reviews by decision, review latency, certificate expiry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: String,
}

pub struct Metrics {
    registry: Registry,
    reviews: Family<DecisionLabels, Counter>,
    latency: Histogram,
    cert_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("infermesh_webhook");
        let reviews = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by decision",
            reviews.clone(),
        );
        // 100 µs .. ~1.6 s: the work is in-memory, the tail is what matters.
        let latency = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time to answer one AdmissionReview, from body read to response",
            latency.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the serving certificate in use (Unix time)",
            cert_expiry.clone(),
        );
        Self {
            registry,
            reviews,
            latency,
            cert_expiry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, decision: &str, seconds: f64) {
        self.reviews
            .get_or_create(&DecisionLabels {
                decision: decision.to_string(),
            })
            .inc();
        self.latency.observe(seconds);
    }

    pub fn set_cert_expiry(&self, t: std::time::SystemTime) {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.cert_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reviews_by_decision_and_latency() {
        let m = Metrics::default();
        m.observe("injected", 0.0002);
        m.observe("injected", 0.0003);
        m.observe("skipped_opted_out", 0.002);
        let text = m.encode();
        assert!(
            text.contains("infermesh_webhook_reviews_total{decision=\"injected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("infermesh_webhook_reviews_total{decision=\"skipped_opted_out\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("infermesh_webhook_review_duration_seconds_count 3"),
            "{text}"
        );
    }
}
