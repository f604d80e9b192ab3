//! The compiled routing table: what a [`MeshConfig`](infermesh_crds::mesh::MeshConfig) becomes once
//! validated. Regexes are compiled, header names parsed, weighted schedules and hash rings built, so
//! the request path only reads. A table is immutable; a reload builds a new one (see `compile`).
//! It is made of the lower folders' types: a [`Router`] per service, a [`Balancer`] and
//! [`Endpoint`]s per variant.

use std::sync::Arc;
use std::time::Duration;

use infermesh_crds::mesh::{Engine, MeshConfig, OutlierDetectionConfig, Protocol, RetryOn};

use crate::endpoint::Endpoint;
use crate::endpoint::backoff::Backoff;
use crate::endpoint::budget::RetryBudget;
use crate::hash::ConfigMap;
use crate::metrics::{ServiceMetrics, VariantMetrics};
use crate::routing::balancer::Balancer;
use crate::routing::router::Router;
use crate::upstream::pool::ConnPool;

#[derive(Debug)]
pub(crate) struct RoutingTable {
    pub(crate) revision: String,
    /// The config as received, for `/config`.
    pub(crate) config: MeshConfig,
    pub(crate) services: Vec<Arc<Service>>,
    /// Lower-cased service name → index in `services`.
    pub(crate) by_name: ConfigMap<String, usize>,
    /// Lower-cased name → why the service was left out (it broke a rule of the mesh contract).
    pub(crate) refused: ConfigMap<String, String>,
}

impl RoutingTable {
    /// The table before any config arrived: every request is refused with a reason.
    pub(crate) fn empty() -> Self {
        Self {
            revision: String::new(),
            config: MeshConfig::default(),
            services: Vec::new(),
            by_name: ConfigMap::default(),
            refused: ConfigMap::default(),
        }
    }

    pub(crate) fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).map(|i| &self.services[*i])
    }
}

#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) protocol: Protocol,
    /// Connections to `127.0.0.1:<port>`: where local delivery goes.
    pub(crate) local: Arc<ConnPool>,
    pub(crate) variants: Vec<Variant>,
    /// Which variant a request goes to.
    pub(crate) router: Router,
    pub(crate) retry: RetryPolicy,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) timeouts: Timeouts,
    /// Overrides of the sidecar's ejection policy.
    pub(crate) outlier_detection: OutlierDetectionConfig,
    pub(crate) metrics: ServiceMetrics,
    /// Routes match on the body's `model` or variants rewrite it: the body is read before the
    /// variant is chosen.
    pub(crate) reads_model: bool,
    /// This pod is an endpoint of the service: its model's load is read and reported here.
    pub(crate) serves_locally: bool,
    /// The model server, whose metrics give the load.
    pub(crate) engine: Option<Engine>,
    /// Responses to peers carry this pod's load (an engine is named, or a caller balances by
    /// load reports).
    pub(crate) reports_load: bool,
}

#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) name: String,
    pub(crate) endpoints: Vec<Endpoint>,
    /// Which endpoint a try goes to.
    pub(crate) balancer: Balancer,
    /// The target named in the `x-infermesh-routed` marker sent to meshed peers:
    /// `<service>/<variant>` (DNS labels, so header-safe).
    pub(crate) routed: String,
    /// The `model` JSON bodies sent to this variant get.
    pub(crate) model_rewrite: Option<String>,
    pub(crate) metrics: VariantMetrics,
}

#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    /// Total tries including the first.
    pub(crate) attempts: u32,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) on_connect_failure: bool,
    pub(crate) on_reset: bool,
    pub(crate) on_5xx: bool,
    pub(crate) on_gateway_error: bool,
    /// gRPC UNAVAILABLE / RESOURCE_EXHAUSTED in a trailers-only answer.
    pub(crate) on_unavailable: bool,
    pub(crate) on_resource_exhausted: bool,
    pub(crate) statuses: Vec<u16>,
    /// Non-idempotent requests are retried like idempotent ones (`retryNonIdempotent`).
    pub(crate) non_idempotent: bool,
    pub(crate) backoff: Backoff,
}

impl RetryPolicy {
    pub(crate) fn from_config(c: &infermesh_crds::mesh::RetryConfig) -> Self {
        let has = |r| c.retry_on.contains(&r);
        Self {
            attempts: c.attempts.max(1),
            per_try_timeout: c.per_try_timeout_ms.map(Duration::from_millis),
            on_connect_failure: has(RetryOn::ConnectFailure),
            on_reset: has(RetryOn::Reset),
            on_5xx: has(RetryOn::ServerError),
            on_gateway_error: has(RetryOn::GatewayError),
            on_unavailable: has(RetryOn::Unavailable),
            on_resource_exhausted: has(RetryOn::ResourceExhausted),
            statuses: if has(RetryOn::RetriableStatusCodes) {
                c.retriable_status_codes.clone()
            } else {
                Vec::new()
            },
            non_idempotent: c.retry_non_idempotent,
            backoff: Backoff {
                base: Duration::from_millis(c.backoff_base_ms),
                max: Duration::from_millis(c.backoff_max_ms),
                jitter: c.backoff_jitter,
            },
        }
    }

    /// Whether a response with this status may be retried (see `request::attempts` for which
    /// methods).
    pub(crate) fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }

    /// Whether a gRPC answer with `code` in its head may be retried.
    pub(crate) fn retries_grpc(&self, code: u32) -> bool {
        use crate::upstream::grpc::{RESOURCE_EXHAUSTED, UNAVAILABLE};
        (self.on_unavailable && code == UNAVAILABLE)
            || (self.on_resource_exhausted && code == RESOURCE_EXHAUSTED)
    }

    /// A per-try timeout counts as a retriable failure when any failure-class condition is set.
    pub(crate) fn retries_timeout(&self) -> bool {
        self.on_5xx || self.on_gateway_error || self.on_reset
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timeouts {
    pub(crate) request: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) first_byte: Option<Duration>,
}
