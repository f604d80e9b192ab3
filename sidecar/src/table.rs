//! The compiled routing table: what a [`MeshConfig`](infermesh_crds::mesh::MeshConfig) becomes once
//! validated. Regexes are compiled, header names parsed, weighted schedules and hash rings built, so
//! the request path only reads. A table is immutable; a reload builds a new one (see `compile`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;
use infermesh_crds::mesh::{
    LoadBalancingPolicy, MeshConfig, OutlierDetectionConfig, Protocol, RetryOn,
};

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::endpoint::EndpointState;
use crate::hash::ConfigMap;
use crate::limit::Limiter;
use crate::metrics::{ServiceMetrics, VariantMetrics};
use crate::pool::ConnPool;
use crate::route::{Route, Schedule};

#[derive(Debug)]
pub struct RoutingTable {
    pub revision: String,
    /// The config as received, for `/config`.
    pub config: MeshConfig,
    pub services: Vec<Arc<Service>>,
    /// Lower-cased service name → index in `services`.
    pub(crate) by_name: ConfigMap<String, usize>,
}

impl RoutingTable {
    /// The table before any config arrived: every request is refused with a reason.
    pub fn empty() -> Self {
        Self {
            revision: String::new(),
            config: MeshConfig::default(),
            services: Vec::new(),
            by_name: ConfigMap::default(),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).map(|i| &self.services[*i])
    }
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Connections to `127.0.0.1:<port>`: where local delivery goes.
    pub local: Arc<ConnPool>,
    pub variants: Vec<Variant>,
    pub routes: Vec<Route>,
    pub sticky_header: Option<HeaderName>,
    pub schedule: Schedule,
    pub retry: RetryPolicy,
    pub budget: Arc<RetryBudget>,
    pub timeouts: Timeouts,
    pub balancer: LoadBalancingPolicy,
    pub hash_on: Option<HeaderName>,
    /// Overrides of the sidecar's ejection policy.
    pub outlier_detection: OutlierDetectionConfig,
    pub metrics: ServiceMetrics,
}

#[derive(Debug)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
    pub endpoints: Vec<Endpoint>,
    /// `x-infermesh-routed` value sent to meshed peers: `<service>/<variant>`.
    pub routed: HeaderValue,
    /// Consistent-hash ring: (point, endpoint index), sorted by point.
    pub ring: Vec<(u64, u32)>,
    pub rr: AtomicUsize,
    pub metrics: VariantMetrics,
}

#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    /// Where to connect, and the connections kept there: the endpoint itself, or the service's
    /// local pool (`127.0.0.1:<service port>`) when the endpoint is this pod.
    pub conns: Arc<ConnPool>,
    /// Send the request with `x-infermesh-routed` (the peer's sidecar delivers it).
    pub meshed: bool,
    pub state: Arc<EndpointState>,
    pub limiter: Option<Arc<Limiter>>,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub statuses: Vec<u16>,
    pub backoff: Backoff,
}

impl RetryPolicy {
    pub fn from_config(c: &infermesh_crds::mesh::RetryConfig) -> Self {
        let has = |r| c.retry_on.contains(&r);
        Self {
            attempts: c.attempts.max(1),
            per_try_timeout: c.per_try_timeout_ms.map(Duration::from_millis),
            on_connect_failure: has(RetryOn::ConnectFailure),
            on_reset: has(RetryOn::Reset),
            on_5xx: has(RetryOn::ServerError),
            on_gateway_error: has(RetryOn::GatewayError),
            statuses: if has(RetryOn::RetriableStatusCodes) {
                c.retriable_status_codes.clone()
            } else {
                Vec::new()
            },
            backoff: Backoff {
                base: Duration::from_millis(c.backoff_base_ms),
                max: Duration::from_millis(c.backoff_max_ms),
                jitter: c.backoff_jitter,
            },
        }
    }

    /// Whether a response with this status may be retried (idempotent requests only).
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }

    /// A per-try timeout counts as a retriable failure when any failure-class condition is set.
    pub fn retries_timeout(&self) -> bool {
        self.on_5xx || self.on_gateway_error || self.on_reset
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub idle: Option<Duration>,
    pub first_byte: Option<Duration>,
}

/// Monotonic counter helper for round robin.
pub(crate) fn next(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Relaxed)
}
