//! The `ModelService` custom resource: one served model, its variants and how traffic reaches them.
//!
//! Every field's doc comment becomes its `description` in the CRD, so `kubectl explain msvc.spec...`
//! shows it. Validation lives in the schema (OpenAPI bounds and enums, plus CEL rules whose messages
//! say what to fix), so `kubectl apply` refuses a bad object before any controller sees it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Most variants a ModelService may have (keeps CEL rule cost bounded).
pub const MAX_VARIANTS: usize = 16;
/// Most routes a ModelService may have.
pub const MAX_ROUTES: usize = 32;

/// A served model: its variants (e.g. `stable` and `canary` deployments), how unrouted traffic is split
/// between them, which requests go to a given variant, and the resilience policies the mesh sidecars
/// apply (retries, timeouts, load balancing, concurrency limits). The operator publishes it to every
/// sidecar of the namespace and fronts it with a Service of the same name (port 80).
// Several printer columns share `type_ = "string"`, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "infermesh.io",
    version = "v1alpha1",
    kind = "ModelService",
    namespaced,
    shortname = "msvc",
    category = "infermesh",
    status = "ModelServiceStatus",
    derive = "PartialEq",
    doc = "A served model: variants, traffic split, routes and resilience policies enforced by the infermesh sidecars.",
    // The operator names the fronting Service after the ModelService, so the name must be one a
    // Service can take (a DNS-1035 label); refused here rather than as a failed Service write later.
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label of at most 63 characters (lowercase letters, digits and '-', starting with a letter), since the ModelService's Service takes the same name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the mesh config is published, every weighted variant has ready endpoints, and the serving sidecars enforce it"
    ),
    printcolumn(
        name = "Variants",
        type_ = "string",
        json_path = ".status.variantWeights",
        description = "Traffic split by variant, e.g. stable=90,canary=10"
    ),
    printcolumn(
        name = "Endpoints",
        type_ = "integer",
        json_path = ".status.readyEndpoints",
        description = "Ready endpoints over all variants"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "integer",
        json_path = ".status.sidecarsOnRevision",
        description = "Sidecars of the serving pods that report this ModelService's mesh config revision"
    ),
    printcolumn(
        name = "Sidecars",
        type_ = "integer",
        json_path = ".status.sidecarsTotal",
        description = "Serving pods that run the infermesh sidecar"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.revision",
        priority = 1,
        description = "Revision of the mesh config that carries this ModelService"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!(self.port in [15001, 15006, 15020])")
        .message("port must be the model container's own port, not one of the sidecar's (15001 outbound, 15006 inbound, 15020 admin)")
        .field_path(".port"),
    validation = Rule::new("self.variants.map(v, v.weight).sum() == 100")
        .message("variant weights must sum to 100 (spec.variants[*].weight)")
        .field_path(".variants"),
    validation = Rule::new("self.variants.all(v, self.variants.exists_one(w, w.name == v.name))")
        .message("variant names must be unique (spec.variants[*].name)")
        .field_path(".variants"),
    validation = Rule::new("!has(self.routes) || self.routes.all(r, self.variants.exists(v, v.name == r.variant))")
        .message("every route must name a variant listed in spec.variants (spec.routes[*].variant)")
        .field_path(".routes"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelServiceSpec {
    /// Port the model container listens on (1-65535, not 15001, 15006 or 15020, which the sidecar
    /// holds). The sidecar delivers requests to 127.0.0.1:<port> in the pod; pods without a sidecar
    /// are reached at <podIP>:<port>.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Application protocol spoken by the model container: HTTP (HTTP/1.1, default), HTTP2 or GRPC.
    #[serde(default)]
    pub protocol: Protocol,

    /// The variants of the model (e.g. stable and canary). At least one, at most 16; names are
    /// unique DNS labels and weights sum to 100.
    #[schemars(length(min = 1, max = 16))]
    pub variants: Vec<Variant>,

    /// Routes checked in order before weights: the first route whose match holds sends the request
    /// to its variant. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub routes: Vec<Route>,

    /// Sticky variant choice for A/B cohorts: callers sending the same value of this header get the
    /// same variant (among the weighted choice), so a user stays on one side of an experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,

    /// Retry policy applied by the sidecar that receives the request. Default: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// Request timeouts. Default: none (long streams are allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// How an endpoint is picked inside the chosen variant. Default: LeastRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,

    /// Per-endpoint concurrency limit and queue. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,

    /// Passive health checking: an endpoint that fails several tries in a row is taken out of
    /// rotation for a while. Default: after 7 failures, for 1s doubling up to 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// The model server: vLLM, SGLang, LlamaCpp (llama-server, run with --metrics), TensorRTLLM,
    /// Auto (told from its metrics' names) or Generic (no metrics). The sidecar next to each
    /// model reads the engine's load (queue, KV-cache usage, prefix-cache hits) from its
    /// /metrics and reports it to the sidecars that route to it. Setting it makes
    /// loadBalancing.policy default to InferenceAware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// The model server behind a ModelService.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Engine {
    #[serde(rename = "vLLM")]
    Vllm,
    #[serde(rename = "SGLang")]
    Sglang,
    #[serde(rename = "LlamaCpp")]
    LlamaCpp,
    #[serde(rename = "TensorRTLLM")]
    TrtLlm,
    Auto,
    Generic,
}

/// Application protocol of the model container.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Protocol {
    /// HTTP/1.1 (HTTP/2 with prior knowledge is also accepted by the sidecar).
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    #[serde(rename = "HTTP2")]
    Http2,
    /// gRPC over HTTP/2.
    #[serde(rename = "GRPC")]
    Grpc,
}

/// One variant of the model: a set of pods chosen by a label selector, and its share of traffic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// Variant name, unique within the ModelService: a DNS label (lowercase letters, digits and '-',
    /// starting and ending with a letter or digit, at most 63 characters).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("variant name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. stable, canary-2)"))]
    pub name: String,

    /// Label selector of the variant's pods in the ModelService's namespace. Must not be empty
    /// (an empty selector would select every pod of the namespace).
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)")
        .message("variant selector must not be empty: give matchLabels or matchExpressions that pick this variant's pods"))]
    pub selector: LabelSelector,

    /// Share of unrouted traffic sent to this variant, 0-100. The weights of all variants sum to 100;
    /// a variant with weight 0 only receives traffic through routes.
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,

    /// Sets the `model` of OpenAI-shaped JSON requests sent to this variant, e.g. the name of a
    /// LoRA adapter its engine serves (as the Gateway API Inference Extension's model rewrite).
    /// Bodies over 256 KiB, or not JSON, go unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model_rewrite: Option<String>,
}

/// A route: requests matching `match` go to `variant`, before the weighted split.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Optional name, shown in sidecar metrics and logs. A DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("route name must be a DNS label: lowercase letters, digits and '-'"))]
    pub name: Option<String>,

    /// What a request must look like to take this route. All given conditions must hold.
    #[serde(rename = "match")]
    pub match_: RouteMatch,

    /// Name of the variant (from spec.variants) that takes matching requests.
    #[schemars(length(min = 1, max = 63))]
    pub variant: String,
}

/// Conditions of a route; all must hold (AND). At least one header match or a path prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.headers) && size(self.headers) > 0) || has(self.pathPrefix) || has(self.model)")
    .message("a route match needs at least one header match, a pathPrefix or a model"))]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Header conditions, all of which must hold. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,

    /// Request path prefix, starting with '/', e.g. /v1/chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path_prefix: Option<String>,

    /// The `model` of an OpenAI-shaped JSON request body equals this, e.g. summarizer. Bodies
    /// over 256 KiB, or not JSON, match no model route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
}

/// A condition on one request header: exactly one of `exact`, `prefix` or `regex`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1")
    .message("a header match needs exactly one of exact, prefix or regex"))]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive), e.g. x-user-cohort.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// The header value equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub exact: Option<String>,
    /// The header value starts with this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub prefix: Option<String>,
    /// The header value matches this regular expression (RE2 syntax, whole value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

/// Sticky cohorts: the value of `header` is hashed to a stable variant choice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stickiness {
    /// Header whose value identifies a caller, e.g. x-user-id.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: String,
}

/// When a failed try is retried, how often, how fast and within which budget.
///
/// What is retried, on another endpoint, while tries, the budget and the request timeout last:
/// - for every method, a try that failed before any request byte reached a model: the
///   connection could not be made (`connect-failure`), a peer sidecar answered that its local
///   model is unreachable (`connect-failure`), or the endpoint answered 503 (`gateway-error`,
///   `5xx`) or a listed status such as 429 (`retriable-status-codes`), with or without
///   `Retry-After`;
/// - for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), and for every method when
///   `retryNonIdempotent` is true: a reset (`reset`), another listed 5xx, or a per-try timeout
///   before the response head;
/// - never once a response byte has reached the client, and never a body over 1 MiB (it streams).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.retryOn) || !self.retryOn.exists(c, c == 'retriable-status-codes') || (has(self.retriableStatusCodes) && size(self.retriableStatusCodes) > 0)")
    .message("retryOn lists retriable-status-codes: give the codes in retriableStatusCodes"))]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Total tries including the first, 1-10 (1 disables retries).
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,
    /// Timeout of each try, e.g. 2s. Default: none (the request timeout still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Failures that may be retried: connect-failure, reset, 5xx, gateway-error (502/503/504),
    /// retriable-status-codes (the codes in retriableStatusCodes), and for gRPC unavailable and
    /// resource-exhausted (that grpc-status in a trailers-only answer). Default: connect-failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub retry_on: Vec<RetryOn>,
    /// HTTP status codes (100-599) retried when retryOn lists retriable-status-codes. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub retriable_status_codes: Vec<i32>,
    /// Exponential backoff between tries. Default: 25ms doubling up to 1s, 50% jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Also retry non-idempotent requests (POST: inference calls) on a reset, a 5xx or a per-try
    /// timeout before the response head. Safe when a repeated request only costs compute (an
    /// LLM completion), not when it has effects. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
    /// Cap on retries relative to traffic, so retries cannot amplify an outage.
    /// Default: 20% of requests plus 10 retries per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// A failure class that may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection was reset before a response arrived.
    #[serde(rename = "reset")]
    Reset,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// A status code listed in retriableStatusCodes.
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
    /// A gRPC answer with grpc-status UNAVAILABLE (14) in its head (a trailers-only response):
    /// the server did not take the call, so it is retried whatever the method.
    #[serde(rename = "unavailable")]
    Unavailable,
    /// A gRPC answer with grpc-status RESOURCE_EXHAUSTED (8) in its head: the server refused
    /// the call for want of capacity, so it is retried whatever the method.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
}

/// Exponential backoff: the n-th retry waits min(base * 2^n, max), randomised by `jitter`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.base) <= duration(self.max)")
    .message("backoff base must not exceed backoff max"))]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// First backoff, e.g. 25ms.
    pub base: Duration,
    /// Longest backoff, e.g. 1s.
    pub max: Duration,
    /// Fraction of each backoff that is random, 0.0-1.0. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: Option<f64>,
}

/// Retry budget: retries may add at most `ratio` x requests plus `minPerSecond` per second.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed per request, 0.0-1.0 (0.2 = 20%).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: f64,
    /// Retries always allowed per second, whatever the traffic, 0-10000.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_per_second: i32,
}

/// Timeouts. Durations are written like 500ms, 30s, 5m or 1h30m.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, from the first byte sent to the last byte received. Leave unset for long
    /// streams and use `idle` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Longest silence between two chunks of a streamed response (e.g. tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// Longest wait for the response head (time to first byte / first token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<Duration>,
}

/// Endpoint choice inside a variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.policy != 'ConsistentHash' || has(self.hashOn)")
        .message("hashOn (the header to hash) is required when policy is ConsistentHash"),
    validation = Rule::new("!has(self.inference) || self.policy == 'InferenceAware'")
        .message("inference (scoring weights) applies to policy InferenceAware only; set policy: InferenceAware or remove inference"),
)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// LeastRequest (power of two choices over in-flight requests, default), PeakEwma (latency
    /// weighted), RoundRobin, ConsistentHash (on the `hashOn` header), or InferenceAware (load
    /// reports, KV-cache usage and prompt-prefix affinity; the default when spec.engine is set).
    #[serde(default)]
    pub policy: LoadBalancingPolicy,
    /// Header hashed by ConsistentHash, e.g. x-session-id (keeps a session on one endpoint and its
    /// KV cache warm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub hash_on: Option<String>,
    /// Weights and thresholds of InferenceAware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceScoring>,
}

/// How InferenceAware scores endpoints: saturated ones (more than maxQueue requests waiting at
/// the engine, or KV cache above maxKvCachePercent) are passed over while others remain, then
/// the weighted sum of three scores picks. Defaults as the llm-d router: queue 2, KV cache 2,
/// prefix 3, saturated at 5 waiting or 80 %.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.queueWeight) ? self.queueWeight : 2) + (has(self.kvCacheWeight) ? self.kvCacheWeight : 2) + (has(self.prefixWeight) ? self.prefixWeight : 3) + (has(self.loraWeight) ? self.loraWeight : 2) > 0")
    .message("inference: at least one of queueWeight, kvCacheWeight, prefixWeight, loraWeight must be above 0"))]
#[serde(rename_all = "camelCase")]
pub struct InferenceScoring {
    /// Weight of the queue score (fewer requests at the endpoint is better), 0-100. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub queue_weight: Option<i32>,
    /// Weight of the KV-cache score (more free KV cache is better), 0-100. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub kv_cache_weight: Option<i32>,
    /// Weight of prefix affinity (the endpoint likely holds more of the prompt's prefix in its
    /// cache), 0-100. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub prefix_weight: Option<i32>,
    /// Weight of LoRA-adapter affinity, 0-100. Default 2. For a request whose `model` is an
    /// adapter some endpoint's engine holds (vLLM reports them): an endpoint holding it scores
    /// 1, one with a free adapter slot 0.5, others 0. Other requests are not scored for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub lora_weight: Option<i32>,
    /// Requests waiting at an endpoint's engine beyond which it is saturated, 0-100000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queue: Option<i32>,
    /// KV-cache usage in percent beyond which an endpoint is saturated, 1-100. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_kv_cache_percent: Option<i32>,
}

/// Load-balancing policy.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum LoadBalancingPolicy {
    /// Power of two choices over in-flight requests.
    #[default]
    LeastRequest,
    /// Peak exponentially weighted moving average of latency, times in-flight requests.
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Hash of the `hashOn` header picks the endpoint.
    ConsistentHash,
    /// Load reports from the engines, KV-cache usage and prompt-prefix affinity.
    InferenceAware,
}

/// Concurrency limit per endpoint: excess requests wait in a bounded queue, then are shed with
/// 503 and Retry-After (never silently dropped).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Requests in flight per endpoint, 1-100000. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight_per_endpoint: Option<i32>,
    /// Requests allowed to wait for a free slot, 0-100000 (default 0: shed at once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queue: i32,
    /// Longest wait in the queue before the request is shed, e.g. 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
}

/// Outlier ejection: which failures count and how long an ejected endpoint stays out. Every
/// sidecar judges the endpoints on its own, from the tries it sent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.baseEjectionTime) || !has(self.maxEjectionTime) || duration(self.baseEjectionTime) <= duration(self.maxEjectionTime)")
    .message("outlierDetection baseEjectionTime must not exceed maxEjectionTime"))]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failed tries in a row (connect failure, reset, timeout, 5xx) that eject an endpoint,
    /// 0-1000; 0 turns ejection off. Default 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// First ejection time, e.g. 1s; each ejection in a row doubles it (with jitter). Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Longest ejection time, e.g. 60s. Default 60s, or baseEjectionTime if that is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
}

/// What the operator observed and published for a ModelService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelServiceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, ConfigGenerated and EndpointsAvailable, following the Kubernetes condition convention.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Weight and ready endpoints of each variant.
    #[serde(default)]
    pub variants: Vec<VariantStatus>,
    /// Traffic split as text, e.g. stable=90,canary=10 (the Variants column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_weights: Option<String>,
    /// Ready endpoints over all variants (the Endpoints column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_endpoints: Option<i32>,
    /// Revision of the namespace's mesh config that carries this ModelService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When that revision was published to the sidecars (written to the mesh ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_published_at: Option<Time>,
    /// Serving pods (Ready endpoints) that run the infermesh sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars_total: Option<i32>,
    /// Of those, the sidecars that report enforcing a mesh config that carries this
    /// ModelService's current entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars_on_revision: Option<i32>,
    /// The first sidecars (by pod name, at most 10) that do not enforce it yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub lagging_sidecars: Vec<LaggingSidecar>,
    /// Pods the variants select that the Service does not send to because they lack the
    /// sidecar (first 10 by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub unmeshed_pods: Vec<UnmeshedPod>,
}

/// A sidecar that does not enforce the ModelService's revision yet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaggingSidecar {
    /// Pod name.
    pub pod: String,
    /// The revision its sidecar reports, or `unknown` when it could not be asked.
    pub revision: String,
}

/// A pod without the sidecar, and why it has none.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmeshedPod {
    /// Pod name.
    pub name: String,
    /// `OptedOut` (pod annotation infermesh.io/inject=disabled), `NotInjected` (created while
    /// injection was off or the webhook was down) or `NotLabelled` (runs the sidecar but lacks
    /// the infermesh.io/sidecar=injected label the Service selects).
    pub reason: String,
}

/// Observed state of one variant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    /// Variant name.
    pub name: String,
    /// Weight in effect.
    pub weight: i32,
    /// Pods of the variant that are Ready and have an IP.
    pub ready_endpoints: i32,
}

impl ModelServiceSpec {
    /// `stable=90,canary=10`: the traffic split in spec order.
    pub fn weights_summary(&self) -> String {
        self.variants
            .iter()
            .map(|v| format!("{}={}", v.name, v.weight))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Variant name → weight, for quick lookups.
    pub fn weights(&self) -> BTreeMap<&str, i32> {
        self.variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect()
    }
}
