//! The mesh config: what the operator generates and every sidecar enforces.
//!
//! One `ConfigMap` per namespace ([`CONFIG_MAP_NAME`], key [`CONFIG_MAP_KEY`]) holds a JSON
//! [`MeshConfig`] with every `ModelService` of that namespace, its policies and its resolved ready
//! endpoints. The sidecar may also read the same JSON from a file (`--config-file`). These types are
//! the wire contract between control and data plane: plain data, durations in milliseconds, and
//! defaults that let a hand-written file stay short.
//!
//! Parsing is strict: an unknown field (a typo such as `retires`) is an error that names it, never
//! silently ignored, while a partial object (`"retries": {"attempts": 3}`) takes the defaults of
//! what it leaves out. So that a sidecar of the previous release still reads what a newer operator
//! writes, a field added to the contract is written only when the ModelService sets it
//! (`skip_serializing_if`).

use serde::{Deserialize, Serialize};

mod validate;

pub use validate::{MAX_ATTEMPTS, header_regex, is_header_name};

/// Name of the generated ConfigMap in each namespace that has a ModelService.
pub const CONFIG_MAP_NAME: &str = "infermesh-mesh-config";
/// Key of the JSON document inside that ConfigMap.
pub const CONFIG_MAP_KEY: &str = "mesh.json";
/// Header a sidecar sets when it forwards to a peer sidecar:
/// `<modelservice>/<variant>;hop=<n>;t=<unix seconds>;sig=<proof>`. The peer then delivers to its
/// local model without routing again, if the proof holds (see [`MESH_KEY_SECRET`]).
pub const ROUTED_HEADER: &str = "x-infermesh-routed";
/// Name of the generated Secret in each namespace that has a ModelService: the keys its sidecars
/// prove a routed marker with (HMAC-SHA256), so a pod of another namespace, which cannot read it,
/// cannot make a sidecar skip routing, limits and budgets.
pub const MESH_KEY_SECRET: &str = "infermesh-mesh-key";
/// Key of the Secret holding the newest key (32 random bytes).
pub const MESH_KEY_CURRENT: &str = "current";
/// Key of the Secret holding the key it replaced, still accepted.
pub const MESH_KEY_PREVIOUS: &str = "previous";
/// Annotation of the Secret: when `current` was minted (RFC 3339). Sidecars keep signing with
/// `previous` for a grace period after it, so peers that have not read the new Secret yet still
/// accept their markers.
pub const MESH_KEY_ROTATED_AT: &str = "infermesh.io/rotated-at";

/// Everything a sidecar enforces, for one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Content revision (a hash of the services), so a sidecar can tell what it enforces.
    #[serde(default)]
    pub revision: String,
    /// The ModelServices, each addressed by `name` (and `name.namespace...` host forms).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

impl MeshConfig {
    /// One namespace's config: services sorted by name, revision = [`MeshConfig::revision_of`] them.
    pub fn new(mut services: Vec<ServiceConfig>) -> Self {
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let revision = Self::revision_of(&services);
        Self { revision, services }
    }

    /// FNV-1a (64 bit) of the services' JSON, as 16 hex digits: stable across processes and
    /// releases. The operator stamps it; a sidecar given a config without one computes the same.
    pub fn revision_of(services: &[ServiceConfig]) -> String {
        let bytes = serde_json::to_vec(services).unwrap_or_default();
        format!("{:016x}", fnv1a(&bytes))
    }
}

/// FNV-1a's 64-bit offset basis: the state before any byte.
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bit) of `bytes`: the one hash the mesh contract names (revisions, and the sidecar's
/// cohort and config-key hashing build on it).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV1A_OFFSET, bytes)
}

/// Continues an FNV-1a state over more bytes (a streaming [`std::hash::Hasher`] builds on this).
#[inline]
pub fn fnv1a_extend(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// One ModelService as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// The model container's port (local delivery goes to `127.0.0.1:port`).
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub variants: Vec<VariantConfig>,
    /// Checked in order before weights; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Header whose value hashes a caller to a stable variant (A/B cohorts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    #[serde(default)]
    pub retries: RetryConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub load_balancing: LoadBalancingConfig,
    #[serde(default)]
    pub concurrency: ConcurrencyConfig,
    /// Unset fields take the sidecar's defaults (its `--eject-*` flags).
    #[serde(default, skip_serializing_if = "OutlierDetectionConfig::is_unset")]
    pub outlier_detection: OutlierDetectionConfig,
    /// The model server's engine: the sidecar next to the model reads its load from the engine's
    /// metrics. Unset: no metrics are read, the sidecars' own counts are the load signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// A model server whose `/metrics` the sidecar knows how to read for load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    #[serde(rename = "vLLM")]
    Vllm,
    #[serde(rename = "SGLang")]
    Sglang,
    #[serde(rename = "LlamaCpp")]
    LlamaCpp,
    #[serde(rename = "TensorRTLLM")]
    TrtLlm,
    /// Whichever of the above the metrics' names show.
    Auto,
    /// No metrics: the sidecar's own counts of requests and prompt bytes in flight.
    Generic,
}

impl Engine {
    /// Where the engine serves its metrics, on the model's own port.
    pub fn metrics_path(self) -> &'static str {
        match self {
            Engine::TrtLlm => "/prometheus/metrics",
            _ => "/metrics",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    /// Share of unrouted traffic, 0-100; the weights of a service sum to 100.
    pub weight: u32,
    /// Ready endpoints of the variant.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The `model` of a JSON request body is set to this before it goes to the variant (e.g. a
    /// LoRA adapter's name), so one ModelService can serve a base model and adapters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_rewrite: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` to connect to: the pod's sidecar inbound port when `meshed`, else the model port.
    pub address: String,
    /// Pod name, for metrics and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The endpoint runs an infermesh sidecar: send it the request with [`ROUTED_HEADER`] set.
    #[serde(default)]
    pub meshed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// All header matches must hold (AND).
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The request body's `model` (OpenAI-shaped JSON) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Variant that takes matching requests.
    pub variant: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: HeaderValueMatch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderValueMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// Conditions a failed try may be retried on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    #[serde(rename = "5xx")]
    ServerError,
    GatewayError,
    RetriableStatusCodes,
    /// gRPC UNAVAILABLE in a trailers-only answer.
    Unavailable,
    /// gRPC RESOURCE_EXHAUSTED in a trailers-only answer.
    ResourceExhausted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Fields left out take the defaults below, so `{"attempts": 3}` is a whole policy.
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total tries including the first; 1 disables retries.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry_on: Vec<RetryOn>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Fraction of the backoff that is randomised, 0.0-1.0.
    pub backoff_jitter: f64,
    /// Retries may add at most `budget_ratio` x requests ...
    pub budget_ratio: f64,
    /// ... plus this many retries per second.
    pub budget_min_per_second: u32,
    /// Retry non-idempotent requests (POST: inference) on a reset, a 5xx or a timeout before the
    /// first response byte, as idempotent ones are. Failures that happen before any request byte
    /// reached a model are retried for every method regardless.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
}

impl Default for RetryConfig {
    /// linkerd2-proxy's settled defaults: budget 20 % + 10/s, backoff 25 ms to 1 s.
    fn default() -> Self {
        Self {
            attempts: 1,
            per_try_timeout_ms: None,
            retry_on: vec![RetryOn::ConnectFailure],
            retriable_status_codes: vec![],
            backoff_base_ms: 25,
            backoff_max_ms: 1000,
            backoff_jitter: 0.5,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            retry_non_idempotent: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Whole request, first byte sent to last byte received; `None` means no cap (long streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// Longest gap between two body chunks of a response stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Longest wait for the response head (time to first byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancingPolicy {
    /// Power of two choices over in-flight requests.
    #[default]
    LeastRequest,
    PeakEwma,
    RoundRobin,
    ConsistentHash,
    /// Load reports, KV-cache usage and prompt-prefix affinity (see [`InferenceScoring`]).
    InferenceAware,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancingConfig {
    #[serde(default)]
    pub policy: LoadBalancingPolicy,
    /// Header hashed by `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Weights and thresholds of `InferenceAware`; unset: [`InferenceScoring::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceScoring>,
}

/// How `InferenceAware` scores an endpoint: endpoints over a threshold (saturated) are left out
/// unless all are, then a weighted sum of scores in 0..=1 picks. The defaults are the llm-d
/// router's (queue 2, KV cache 2, prefix 3; saturated at 5 waiting or 80 % KV), with LoRA
/// adapter affinity at 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceScoring {
    #[serde(default = "InferenceScoring::default_queue_weight")]
    pub queue_weight: u32,
    #[serde(default = "InferenceScoring::default_kv_cache_weight")]
    pub kv_cache_weight: u32,
    #[serde(default = "InferenceScoring::default_prefix_weight")]
    pub prefix_weight: u32,
    /// Written only when not the default, so a sidecar that predates it still reads the
    /// config of a service that leaves it alone.
    #[serde(
        default = "InferenceScoring::default_lora_weight",
        skip_serializing_if = "InferenceScoring::is_default_lora_weight"
    )]
    pub lora_weight: u32,
    /// Requests waiting at an endpoint's engine beyond which it is saturated.
    #[serde(default = "InferenceScoring::default_max_queue")]
    pub max_queue: u32,
    /// KV-cache usage (percent) beyond which an endpoint is saturated.
    #[serde(default = "InferenceScoring::default_max_kv_cache_percent")]
    pub max_kv_cache_percent: u32,
}

impl InferenceScoring {
    fn default_queue_weight() -> u32 {
        2
    }
    fn default_kv_cache_weight() -> u32 {
        2
    }
    fn default_prefix_weight() -> u32 {
        3
    }
    fn default_lora_weight() -> u32 {
        2
    }
    fn is_default_lora_weight(w: &u32) -> bool {
        *w == Self::default_lora_weight()
    }
    fn default_max_queue() -> u32 {
        5
    }
    fn default_max_kv_cache_percent() -> u32 {
        80
    }
}

impl Default for InferenceScoring {
    fn default() -> Self {
        Self {
            queue_weight: Self::default_queue_weight(),
            kv_cache_weight: Self::default_kv_cache_weight(),
            prefix_weight: Self::default_prefix_weight(),
            lora_weight: Self::default_lora_weight(),
            max_queue: Self::default_max_queue(),
            max_kv_cache_percent: Self::default_max_kv_cache_percent(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_endpoint: Option<u32>,
    /// Requests allowed to wait for a slot; beyond it they are shed with 503 + `Retry-After`.
    #[serde(default)]
    pub max_queue: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// Failed tries in a row that eject an endpoint; 0 turns ejection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; doubles per ejection in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_ms: Option<u64>,
    /// Longest ejection time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_ms: Option<u64>,
}

impl OutlierDetectionConfig {
    /// What an unset `consecutiveFailures` means when the sidecar's flag is not given either.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 7;
    /// What an unset `baseEjectionMs` means when the sidecar's flag is not given either.
    pub const DEFAULT_BASE_EJECTION_MS: u64 = 1_000;
    /// What an unset `maxEjectionMs` means when the sidecar's flag is not given either.
    pub const DEFAULT_MAX_EJECTION_MS: u64 = 60_000;

    /// Nothing set: the field is left out of the JSON, so configs without it keep their revision.
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hand_written_config_fills_defaults() {
        let json = r#"{"services":[{"name":"llm","port":8000,
            "variants":[{"name":"stable","weight":90,"endpoints":[{"address":"127.0.0.1:9000"}]},
                        {"name":"canary","weight":10}],
            "routes":[{"headers":[{"name":"x-user","exact":"beta"}],"variant":"canary"}]}]}"#;
        let cfg: MeshConfig = serde_json::from_str(json).unwrap();
        let svc = &cfg.services[0];
        assert_eq!(svc.protocol, Protocol::Http);
        assert_eq!(svc.retries.attempts, 1);
        assert_eq!(svc.load_balancing.policy, LoadBalancingPolicy::LeastRequest);
        assert!(!svc.variants[0].endpoints[0].meshed);
        assert_eq!(
            svc.routes[0].headers[0].value,
            HeaderValueMatch::Exact("beta".into())
        );
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a" and "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_extend(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
    }

    #[test]
    fn a_config_is_sorted_and_its_revision_follows_its_content() {
        let svc = |name: &str, port| ServiceConfig {
            port,
            ..serde_json::from_str(&format!(r#"{{"name":"{name}","port":1,"variants":[]}}"#))
                .unwrap()
        };
        let one = MeshConfig::new(vec![svc("b", 1), svc("a", 1)]);
        let two = MeshConfig::new(vec![svc("a", 1), svc("b", 1)]);
        assert_eq!(one, two);
        assert_eq!(one.services[0].name, "a");
        assert_eq!(one.revision.len(), 16);
        assert_eq!(one.revision, MeshConfig::revision_of(&one.services));
        assert_ne!(
            one.revision,
            MeshConfig::new(vec![svc("a", 2), svc("b", 1)]).revision
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let typo =
            r#"{"services":[{"name":"llm","port":8000,"variants":[],"retires":{"attempts":3}}]}"#;
        let err = serde_json::from_str::<MeshConfig>(typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `retires`"), "{err}");
        let nested = r#"{"services":[{"name":"llm","port":8000,
            "variants":[{"name":"v","weight":100,"endpoints":[{"adress":"127.0.0.1:1"}]}]}]}"#;
        let err = serde_json::from_str::<MeshConfig>(nested)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `adress`"), "{err}");
        let top = r#"{"revison":"r1","services":[]}"#;
        assert!(serde_json::from_str::<MeshConfig>(top).is_err());
    }

    #[test]
    fn a_partial_retry_policy_takes_the_defaults_of_what_it_leaves_out() {
        let json = r#"{"services":[{"name":"llm","port":8000,"variants":[],
            "retries":{"attempts":3,"retryOn":["5xx"]}}]}"#;
        let cfg: MeshConfig = serde_json::from_str(json).unwrap();
        let r = &cfg.services[0].retries;
        assert_eq!(r.attempts, 3);
        assert_eq!(r.retry_on, [RetryOn::ServerError]);
        let d = RetryConfig::default();
        assert_eq!(
            (
                r.backoff_base_ms,
                r.backoff_max_ms,
                r.budget_ratio,
                r.budget_min_per_second
            ),
            (
                d.backoff_base_ms,
                d.backoff_max_ms,
                d.budget_ratio,
                d.budget_min_per_second
            )
        );
    }

    #[test]
    fn what_the_operator_writes_reads_back_unchanged() {
        let json = r#"{"revision":"r","services":[{"name":"llm","namespace":"ns","port":8000,
            "protocol":"HTTP2","variants":[{"name":"v","weight":100,
            "endpoints":[{"address":"10.0.0.1:15006","pod":"p","meshed":true}]}],
            "routes":[{"name":"beta","headers":[{"name":"x","regex":"b.*"}],"pathPrefix":"/v1","variant":"v"}],
            "stickyHeader":"x-user","timeouts":{"requestMs":1000,"idleMs":100,"firstByteMs":50},
            "loadBalancing":{"policy":"ConsistentHash","hashOn":"x-session"},
            "concurrency":{"maxInFlightPerEndpoint":4,"maxQueue":2,"queueTimeoutMs":10},
            "outlierDetection":{"consecutiveFailures":3}}]}"#;
        let cfg: MeshConfig = serde_json::from_str(json).unwrap();
        let again: MeshConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn retry_on_uses_the_crd_spelling() {
        let v: Vec<RetryOn> =
            serde_json::from_str(r#"["5xx","gateway-error","connect-failure"]"#).unwrap();
        assert_eq!(
            v,
            [
                RetryOn::ServerError,
                RetryOn::GatewayError,
                RetryOn::ConnectFailure
            ]
        );
    }
}
