//! Prometheus metrics (prometheus-client). Per-variant handles are resolved once when a config is
//! compiled, so the request path only touches atomics and histograms, never a label lookup.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VariantLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
    pub(crate) class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceReasonLabels {
    pub(crate) service: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointSignalLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
    pub(crate) endpoint: String,
    pub(crate) signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RevisionLabels {
    pub(crate) revision: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~15 s
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VariantLabels, Histogram, fn() -> Histogram>,
    ttfb: Family<VariantLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<VariantLabels, Gauge>,
    queue_depth: Family<VariantLabels, Gauge>,
    ejections: Family<VariantLabels, Counter>,
    streams_cut: Family<VariantLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    replay_pool_full: Family<ServiceLabels, Counter>,
    revision: Family<RevisionLabels, Gauge>,
    markers_refused: Family<ReasonLabels, Counter>,
    engine_metrics_errors: Family<ServiceReasonLabels, Counter>,
    endpoint_load: Family<EndpointSignalLabels, Gauge<f64, AtomicU64>>,
    pub(crate) config_reloads: Counter,
    pub(crate) config_rejections: Counter,
    pub(crate) config_services_refused: Gauge,
}

/// Handles for one variant of one service (status classes 1xx..5xx).
#[derive(Clone, Debug)]
pub(crate) struct VariantMetrics {
    pub(crate) requests: [Counter; 5],
    pub(crate) latency: Histogram,
    pub(crate) ttfb: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) queue_depth: Gauge,
    pub(crate) ejections: Counter,
    pub(crate) streams_cut: Counter,
}

impl VariantMetrics {
    /// Counts a finished request by its status class.
    pub(crate) fn count(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ServiceMetrics {
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) replay_pool_full: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("infermesh");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let ttfb = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let in_flight = Family::<VariantLabels, Gauge>::default();
        let queue_depth = Family::<VariantLabels, Gauge>::default();
        let ejections = Family::<VariantLabels, Counter>::default();
        let streams_cut = Family::<VariantLabels, Counter>::default();
        let retries = Family::<ServiceLabels, Counter>::default();
        let budget_exhausted = Family::<ServiceLabels, Counter>::default();
        let replay_pool_full = Family::<ServiceLabels, Counter>::default();
        let revision = Family::<RevisionLabels, Gauge>::default();
        let markers_refused = Family::<ReasonLabels, Counter>::default();
        let engine_metrics_errors = Family::<ServiceReasonLabels, Counter>::default();
        let endpoint_load = Family::<EndpointSignalLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "endpoint_load",
            "What InferenceAware balancing believes of each endpoint, refreshed every second \
             (signal: requests, waiting, kv_usage, report_age_seconds; at most 64 endpoints \
             per variant)",
            endpoint_load.clone(),
        );
        registry.register(
            "engine_metrics_errors",
            "Reads of the local model's metrics that failed (reason: unreachable, status, \
             malformed, no-load, unknown-engine); the load is then the sidecar's own counts",
            engine_metrics_errors.clone(),
        );
        let config_reloads = Counter::default();
        let config_rejections = Counter::default();
        let config_services_refused = Gauge::default();
        registry.register(
            "requests",
            "Requests by ModelService, variant and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency, first byte in to last byte out",
            latency.clone(),
        );
        registry.register(
            "time_to_first_byte_seconds",
            "Time to the upstream response head (TTFT for streams)",
            ttfb.clone(),
        );
        registry.register("in_flight", "Requests in flight", in_flight.clone());
        registry.register(
            "queue_depth",
            "Requests waiting for a concurrency slot",
            queue_depth.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected after consecutive failures",
            ejections.clone(),
        );
        registry.register(
            "streams_cut",
            "Responses cut after their head by a timeout or an upstream failure (also counted as 5xx)",
            streams_cut.clone(),
        );
        registry.register("retries", "Retries sent", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was exhausted",
            budget_exhausted.clone(),
        );
        registry.register(
            "replay_pool_full",
            "Requests sent once, without retries, because the sidecar's replay buffers were full",
            replay_pool_full.clone(),
        );
        registry.register(
            "config_revision",
            "Mesh config in force (1 for the current revision)",
            revision.clone(),
        );
        registry.register(
            "routed_markers_refused",
            "Peers' x-infermesh-routed markers not honoured, by reason (unsigned, malformed, \
             expired, bad-proof, no-key: routed again here; loop: refused with 508)",
            markers_refused.clone(),
        );
        registry.register(
            "config_reloads",
            "Mesh configs accepted",
            config_reloads.clone(),
        );
        registry.register(
            "config_rejections",
            "Mesh configs refused as invalid",
            config_rejections.clone(),
        );
        registry.register(
            "config_services_refused",
            "ModelServices of the config in force left out for breaking a rule (see /config)",
            config_services_refused.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            ttfb,
            in_flight,
            queue_depth,
            ejections,
            streams_cut,
            retries,
            budget_exhausted,
            replay_pool_full,
            revision,
            markers_refused,
            engine_metrics_errors,
            endpoint_load,
            config_reloads,
            config_rejections,
            config_services_refused,
        }
    }

    /// A read of the local model's metrics for `service` failed.
    pub(crate) fn engine_metrics_error(&self, service: &str, reason: &'static str) {
        self.engine_metrics_errors
            .get_or_create(&ServiceReasonLabels {
                service: service.to_owned(),
                reason,
            })
            .inc();
    }

    /// Replaces the endpoint load gauges with `samples`.
    pub(crate) fn set_endpoint_load(&self, samples: Vec<(EndpointSignalLabels, f64)>) {
        self.endpoint_load.clear();
        for (labels, v) in samples {
            self.endpoint_load.get_or_create(&labels).set(v);
        }
    }

    /// A peer's routed marker was not honoured (`reason`: see `routed_markers_refused`).
    pub(crate) fn marker_refused(&self, reason: &'static str) {
        self.markers_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn variant(&self, service: &str, variant: &str) -> VariantMetrics {
        let l = VariantLabels {
            service: service.to_owned(),
            variant: variant.to_owned(),
        };
        let class = |c: &str| {
            self.requests.get_or_create_owned(&RequestLabels {
                service: service.to_owned(),
                variant: variant.to_owned(),
                class: c.to_owned(),
            })
        };
        VariantMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: self.latency.get_or_create_owned(&l),
            ttfb: self.ttfb.get_or_create_owned(&l),
            in_flight: self.in_flight.get_or_create_owned(&l),
            queue_depth: self.queue_depth.get_or_create_owned(&l),
            ejections: self.ejections.get_or_create_owned(&l),
            streams_cut: self.streams_cut.get_or_create_owned(&l),
        }
    }

    pub(crate) fn service(&self, service: &str) -> ServiceMetrics {
        let l = ServiceLabels {
            service: service.to_owned(),
        };
        ServiceMetrics {
            retries: self.retries.get_or_create_owned(&l),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&l),
            replay_pool_full: self.replay_pool_full.get_or_create_owned(&l),
        }
    }

    /// Marks `revision` as the config in force.
    pub(crate) fn set_revision(&self, revision: &str) {
        self.revision.clear();
        self.revision
            .get_or_create(&RevisionLabels {
                revision: revision.to_owned(),
            })
            .set(1);
    }

    /// Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_the_registered_series() {
        let m = Metrics::new();
        let v = m.variant("llm", "canary");
        v.count(http::StatusCode::OK);
        v.count(http::StatusCode::SERVICE_UNAVAILABLE);
        m.variant("llm", "canary").count(http::StatusCode::OK);
        m.set_revision("r2");
        let text = m.encode();
        assert!(
            text.contains(
                r#"infermesh_requests_total{service="llm",variant="canary",class="2xx"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"class="5xx"} 1"#));
        assert!(text.contains(r#"infermesh_config_revision{revision="r2"} 1"#));
    }
}
