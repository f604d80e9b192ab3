//! Prometheus metrics (prometheus-client). Per-variant handles are resolved once when a config is
//! compiled, so the request path only touches atomics and histograms, never a label lookup.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::tokens::{Counted, OUTCOMES, Tally};

pub(crate) mod window;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
    pub(crate) model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
    pub(crate) model: String,
    pub(crate) gen_ai_token_type: &'static str,
    /// `usage` (the server's count) or `events` (events that carried output).
    pub(crate) counted: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FinishLabels {
    pub(crate) service: String,
    pub(crate) variant: String,
    pub(crate) model: String,
    pub(crate) finish_reason: &'static str,
}

type Hist = Family<ModelLabels, Histogram, fn() -> Histogram>;

// Bucket boundaries recommended by the OpenTelemetry GenAI semantic conventions (the `/stats`
// window keeps the same ones).
pub(crate) const TTFT_BOUNDS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
pub(crate) const TPOT_BOUNDS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BOUNDS)
}
fn tpot_histogram() -> Histogram {
    Histogram::new(TPOT_BOUNDS)
}
fn generation_duration_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ])
}
fn token_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

/// The status classes of `infermesh_requests_total`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The reasons of `infermesh_engine_metrics_errors_total` (as `serving::scrape` names them).
pub(crate) const ENGINE_ERROR_REASONS: [&str; 5] = [
    "unreachable",
    "status",
    "malformed",
    "no-load",
    "unknown-engine",
];

/// Model names kept as labels per variant; more fold into `other` (the names come from the
/// model server's responses).
pub(crate) const MAX_MODELS: usize = 16;

/// The token metrics' families (OpenTelemetry GenAI names, no `infermesh_` prefix).
#[derive(Clone, Debug)]
pub(crate) struct TokenFamilies {
    ttft: Hist,
    tpot: Hist,
    duration: Hist,
    usage: Family<TokenLabels, Histogram, fn() -> Histogram>,
    finished: Family<FinishLabels, Counter>,
    cached: Family<ModelLabels, Counter>,
}

impl Default for TokenFamilies {
    fn default() -> Self {
        Self {
            ttft: Family::new_with_constructor(ttft_histogram as fn() -> Histogram),
            tpot: Family::new_with_constructor(tpot_histogram as fn() -> Histogram),
            duration: Family::new_with_constructor(
                generation_duration_histogram as fn() -> Histogram,
            ),
            usage: Family::new_with_constructor(token_histogram as fn() -> Histogram),
            finished: Family::default(),
            cached: Family::default(),
        }
    }
}

impl TokenFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first response event that carries output \
             (OpenAI-style streams)",
            self.ttft.clone(),
        );
        r.register(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first (streams of two tokens or more)",
            self.tpot.clone(),
        );
        r.register(
            "gen_ai_server_request_duration_seconds",
            "Time from the request to the end of an OpenAI-style response",
            self.duration.clone(),
        );
        r.register(
            "gen_ai_client_token_usage",
            "Tokens per response, by gen_ai_token_type (input, output); counted: usage (the \
             server's count) or events (output events, when the response has no usage)",
            self.usage.clone(),
        );
        r.register(
            "infermesh_llm_responses",
            "OpenAI-style responses by finish_reason (stop, length, tool_calls, \
             content_filter, other), or aborted (the client left), cut (an upstream failure \
             or a timeout after the head), unfinished (ended without a finish reason)",
            self.finished.clone(),
        );
        r.register(
            "infermesh_llm_cached_input_tokens",
            "Prompt tokens the model server found in its prefix cache (from usage)",
            self.cached.clone(),
        );
    }
}

/// One model's token series of one variant, each resolved the first time it is recorded (so a
/// series exists only once it has a sample, as before the handles were kept), then kept: a
/// response touches atomics, no label.
#[derive(Debug, Default)]
struct ModelSeries {
    model: String,
    ttft: Option<Histogram>,
    tpot: Option<Histogram>,
    duration: Option<Histogram>,
    cached: Option<Counter>,
    input: Option<Histogram>,
    output_usage: Option<Histogram>,
    output_events: Option<Histogram>,
    /// By [`OUTCOMES`] index.
    outcomes: [Option<Counter>; OUTCOMES.len()],
}

/// One variant's token metrics, by the model names seen so far, and its recent requests (the
/// `/stats` window); kept across configs.
#[derive(Debug)]
pub(crate) struct VariantTokens {
    service: String,
    variant: String,
    families: TokenFamilies,
    /// At most [`MAX_MODELS`] names, and `unknown` and `other`.
    models: Mutex<Vec<ModelSeries>>,
    pub(crate) recent: window::Window,
}

impl VariantTokens {
    fn model_labels(&self, model: &str) -> ModelLabels {
        ModelLabels {
            service: self.service.clone(),
            variant: self.variant.clone(),
            model: model.to_owned(),
        }
    }

    fn token_labels(&self, model: &str, kind: &'static str, counted: &'static str) -> TokenLabels {
        TokenLabels {
            service: self.service.clone(),
            variant: self.variant.clone(),
            model: model.to_owned(),
            gen_ai_token_type: kind,
            counted,
        }
    }

    fn finish_labels(&self, model: &str, finish_reason: &'static str) -> FinishLabels {
        FinishLabels {
            service: self.service.clone(),
            variant: self.variant.clone(),
            model: model.to_owned(),
            finish_reason,
        }
    }

    /// The index in `known` of the series of `model`: its own while fewer than [`MAX_MODELS`]
    /// names are known, else `other`; `unknown` when the server named none.
    fn series_of(&self, known: &mut Vec<ModelSeries>, model: Option<&str>) -> usize {
        let named = |n: &str| n != "unknown" && n != "other";
        let label = match model {
            None => "unknown",
            Some(m) if known.iter().any(|s| s.model == m) => m,
            Some(m) if known.iter().filter(|s| named(&s.model)).count() < MAX_MODELS => m,
            Some(_) => "other",
        };
        if let Some(i) = known.iter().position(|s| s.model == label) {
            return i;
        }
        known.push(ModelSeries {
            model: label.to_owned(),
            ..Default::default()
        });
        known.len() - 1
    }

    /// Removes every series of this variant.
    fn forget(&self) {
        let f = &self.families;
        let known = self.models.lock().unwrap_or_else(|e| e.into_inner());
        for s in known.iter() {
            let l = self.model_labels(&s.model);
            f.ttft.remove(&l);
            f.tpot.remove(&l);
            f.duration.remove(&l);
            f.cached.remove(&l);
            let (usage, events) = (Counted::Usage.label(), Counted::Events.label());
            for (kind, counted) in [("input", usage), ("output", usage), ("output", events)] {
                f.usage.remove(&self.token_labels(&s.model, kind, counted));
            }
            for o in OUTCOMES {
                f.finished.remove(&self.finish_labels(&s.model, o));
            }
        }
    }

    /// Records one metered response.
    pub(crate) fn record(&self, t: &Tally) {
        self.recent.tokens(
            tokio::time::Instant::now(),
            t.ttft,
            t.tpot,
            t.output.map(|(n, _)| n),
        );
        let mut known = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.series_of(&mut known, t.model.as_deref());
        let s = &mut known[i];
        let f = &self.families;
        let l = || self.model_labels(&s.model);
        let observe = |slot: &mut Option<Histogram>, fam: &Hist, v: f64| {
            slot.get_or_insert_with(|| fam.get_or_create_owned(&l()))
                .observe(v);
        };
        observe(&mut s.duration, &f.duration, t.duration.as_secs_f64());
        if let Some(d) = t.ttft {
            observe(&mut s.ttft, &f.ttft, d.as_secs_f64());
        }
        if let Some(d) = t.tpot {
            observe(&mut s.tpot, &f.tpot, d.as_secs_f64());
        }
        if let Some(n) = t.cached {
            s.cached
                .get_or_insert_with(|| f.cached.get_or_create_owned(&l()))
                .inc_by(n);
        }
        let tokens = |slot: &mut Option<Histogram>, kind, counted: Counted, n: u64| {
            slot.get_or_insert_with(|| {
                f.usage
                    .get_or_create_owned(&self.token_labels(&s.model, kind, counted.label()))
            })
            .observe(n as f64);
        };
        if let Some(n) = t.input {
            tokens(&mut s.input, "input", Counted::Usage, n);
        }
        match t.output {
            Some((n, Counted::Usage)) => tokens(&mut s.output_usage, "output", Counted::Usage, n),
            Some((n, Counted::Events)) => {
                tokens(&mut s.output_events, "output", Counted::Events, n)
            }
            None => {}
        }
        if let Some(o) = OUTCOMES.iter().position(|o| *o == t.outcome) {
            s.outcomes[o]
                .get_or_insert_with(|| {
                    f.finished
                        .get_or_create_owned(&self.finish_labels(&s.model, OUTCOMES[o]))
                })
                .inc();
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    tokens: TokenFamilies,
    /// Each variant's token handles, kept across configs (with the model names it has seen).
    variant_tokens: Mutex<HashMap<VariantLabels, Arc<VariantTokens>>>,
    requests: Family<RequestLabels, Counter>,
    routed: Family<RequestLabels, Counter>,
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
    /// Requests counted once in the mesh, by the sidecar their client called.
    pub(crate) routed: [Counter; 5],
    pub(crate) latency: Histogram,
    pub(crate) ttfb: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) queue_depth: Gauge,
    pub(crate) ejections: Counter,
    pub(crate) streams_cut: Counter,
    pub(crate) tokens: Arc<VariantTokens>,
}

/// The index in [`CLASSES`] of `status`'s class.
fn class_of(status: http::StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

impl VariantMetrics {
    /// Counts a finished request by its status class.
    pub(crate) fn count(&self, status: http::StatusCode) {
        self.requests[class_of(status)].inc();
    }

    /// Counts a finished request that this sidecar routed first (its client called it).
    pub(crate) fn count_routed(&self, status: http::StatusCode) {
        self.routed[class_of(status)].inc();
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
        let mut registry = Registry::default();
        let tokens = TokenFamilies::default();
        tokens.register(&mut registry);
        // Everything else is infermesh's own.
        let inf = registry.sub_registry_with_prefix("infermesh");
        let requests = Family::<RequestLabels, Counter>::default();
        let routed = Family::<RequestLabels, Counter>::default();
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
        inf.register(
            "endpoint_load",
            "What InferenceAware balancing believes of each endpoint, refreshed every second \
             (signal: requests, waiting, kv_usage, report_age_seconds; at most 64 endpoints \
             per variant)",
            endpoint_load.clone(),
        );
        inf.register(
            "engine_metrics_errors",
            "Reads of the local model's metrics that failed (reason: unreachable, status, \
             malformed, no-load, unknown-engine); the load is then the sidecar's own counts",
            engine_metrics_errors.clone(),
        );
        let config_reloads = Counter::default();
        let config_rejections = Counter::default();
        let config_services_refused = Gauge::default();
        inf.register(
            "requests",
            "Requests by ModelService, variant and status class, counted by every sidecar on \
             the way (the client's and the model's; see routed_requests)",
            requests.clone(),
        );
        inf.register(
            "routed_requests",
            "Requests by ModelService, variant and status class, counted once in the mesh: by \
             the sidecar the client called (sum it over pods for a variant's traffic)",
            routed.clone(),
        );
        inf.register(
            "request_duration_seconds",
            "Request latency, first byte in to last byte out",
            latency.clone(),
        );
        inf.register(
            "time_to_first_byte_seconds",
            "Time to the upstream response head; not to the first token, which a streaming \
             server sends after its head (see gen_ai_server_time_to_first_token_seconds)",
            ttfb.clone(),
        );
        inf.register("in_flight", "Requests in flight", in_flight.clone());
        inf.register(
            "queue_depth",
            "Requests waiting for a concurrency slot",
            queue_depth.clone(),
        );
        inf.register(
            "endpoint_ejections",
            "Endpoints ejected after consecutive failures",
            ejections.clone(),
        );
        inf.register(
            "streams_cut",
            "Responses cut after their head by a timeout or an upstream failure (also counted as 5xx)",
            streams_cut.clone(),
        );
        inf.register("retries", "Retries sent", retries.clone());
        inf.register(
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was exhausted",
            budget_exhausted.clone(),
        );
        inf.register(
            "replay_pool_full",
            "Requests sent once, without retries, because the sidecar's replay buffers were full",
            replay_pool_full.clone(),
        );
        inf.register(
            "config_revision",
            "Mesh config in force (1 for the current revision)",
            revision.clone(),
        );
        inf.register(
            "routed_markers_refused",
            "Peers' x-infermesh-routed markers not honoured, by reason (unsigned, malformed, \
             expired, bad-proof, no-key: routed again here; loop: refused with 508)",
            markers_refused.clone(),
        );
        inf.register(
            "config_reloads",
            "Mesh configs accepted",
            config_reloads.clone(),
        );
        inf.register(
            "config_rejections",
            "Mesh configs refused as invalid",
            config_rejections.clone(),
        );
        inf.register(
            "config_services_refused",
            "ModelServices of the config in force left out for breaking a rule (see /config)",
            config_services_refused.clone(),
        );
        Self {
            registry,
            tokens,
            variant_tokens: Mutex::default(),
            requests,
            routed,
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
        debug_assert_eq!(CLASSES.len(), 5);
        let l = VariantLabels {
            service: service.to_owned(),
            variant: variant.to_owned(),
        };
        let labels = |c: &str| RequestLabels {
            service: service.to_owned(),
            variant: variant.to_owned(),
            class: c.to_owned(),
        };
        VariantMetrics {
            requests: CLASSES.map(|c| self.requests.get_or_create_owned(&labels(c))),
            routed: CLASSES.map(|c| self.routed.get_or_create_owned(&labels(c))),
            latency: self.latency.get_or_create_owned(&l),
            ttfb: self.ttfb.get_or_create_owned(&l),
            in_flight: self.in_flight.get_or_create_owned(&l),
            queue_depth: self.queue_depth.get_or_create_owned(&l),
            ejections: self.ejections.get_or_create_owned(&l),
            streams_cut: self.streams_cut.get_or_create_owned(&l),
            tokens: self
                .variant_tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(l.clone())
                .or_insert_with(|| {
                    Arc::new(VariantTokens {
                        service: service.to_owned(),
                        variant: variant.to_owned(),
                        families: self.tokens.clone(),
                        models: Mutex::default(),
                        recent: window::Window::new(tokio::time::Instant::now()),
                    })
                })
                .clone(),
        }
    }

    /// Removes the series of a variant that left the config (a request still streaming
    /// through it counts on, unseen).
    pub(crate) fn forget_variant(&self, service: &str, variant: &str) {
        let l = VariantLabels {
            service: service.to_owned(),
            variant: variant.to_owned(),
        };
        for class in CLASSES {
            let labels = RequestLabels {
                service: service.to_owned(),
                variant: variant.to_owned(),
                class: class.to_owned(),
            };
            self.requests.remove(&labels);
            self.routed.remove(&labels);
        }
        self.latency.remove(&l);
        self.ttfb.remove(&l);
        self.in_flight.remove(&l);
        self.queue_depth.remove(&l);
        self.ejections.remove(&l);
        self.streams_cut.remove(&l);
        let tokens = self
            .variant_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&l);
        if let Some(t) = tokens {
            t.forget();
        }
    }

    /// Removes the series of a service that left the config.
    pub(crate) fn forget_service(&self, service: &str) {
        let l = ServiceLabels {
            service: service.to_owned(),
        };
        self.retries.remove(&l);
        self.budget_exhausted.remove(&l);
        self.replay_pool_full.remove(&l);
        for reason in ENGINE_ERROR_REASONS {
            self.engine_metrics_errors.remove(&ServiceReasonLabels {
                service: service.to_owned(),
                reason,
            });
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

    /// The dashboard users import reads these names; a rename here must not leave it blank.
    #[test]
    fn every_metric_the_dashboard_queries_is_one_the_sidecar_exports() {
        let dashboard = include_str!("../../../deploy/observability/grafana-dashboard.json");
        // Every family with a series (one without is not written).
        let m = Metrics::new();
        let v = m.variant("llm", "v1");
        v.count_routed(http::StatusCode::OK);
        v.tokens.record(&Tally {
            model: None,
            ttft: Some(std::time::Duration::from_millis(300)),
            tpot: Some(std::time::Duration::from_millis(40)),
            input: Some(10),
            output: Some((4, Counted::Usage)),
            cached: Some(2),
            duration: std::time::Duration::from_secs(1),
            outcome: "stop",
        });
        let _ = m.service("llm");
        m.set_revision("r1");
        m.set_endpoint_load(vec![(
            EndpointSignalLabels {
                service: "llm".into(),
                variant: "v1".into(),
                endpoint: "10.0.0.1:8080".into(),
                signal: "waiting",
            },
            1.0,
        )]);
        let text = m.encode();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let mut queried = std::collections::BTreeSet::new();
        for start in ["infermesh_", "gen_ai_"] {
            for (i, _) in dashboard.match_indices(start) {
                let name: String = dashboard[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // A label matcher (`gen_ai_token_type="output"`) names a label, not a metric.
                if !dashboard[i + name.len()..].starts_with(['=', '!']) {
                    queried.insert(name);
                }
            }
        }
        assert!(queried.len() >= 10, "{queried:?}");
        for name in &queried {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                families.contains(&family),
                "the dashboard queries {name}, which the sidecar does not export"
            );
        }
    }

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

    #[test]
    fn token_series_carry_the_model_up_to_a_cap_then_other() {
        let m = Metrics::new();
        let v = m.variant("llm", "v1");
        let tally = |model: &str| Tally {
            model: Some(model.to_owned()),
            ttft: Some(std::time::Duration::from_millis(300)),
            tpot: None,
            input: Some(10),
            output: Some((4, crate::tokens::Counted::Events)),
            cached: None,
            duration: std::time::Duration::from_secs(1),
            outcome: "stop",
        };
        for i in 0..MAX_MODELS + 3 {
            v.tokens.record(&tally(&format!("m{i}")));
        }
        // The handles outlive a recompile of the same variant: still capped.
        m.variant("llm", "v1").tokens.record(&tally("late"));
        let text = m.encode();
        assert!(text.contains(r#"model="m15""#) && !text.contains(r#"model="m16""#));
        assert!(!text.contains(r#"model="late""#));
        assert!(
            text.contains(
                r#"infermesh_llm_responses_total{service="llm",variant="v1",model="other",finish_reason="stop"} 4"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"gen_ai_client_token_usage_sum{service="llm",variant="v1",model="m0",gen_ai_token_type="output",counted="events"} 4.0"#
        ), "{text}");
        m.forget_variant("llm", "v1");
        assert!(!m.encode().contains("model="));
    }
}
