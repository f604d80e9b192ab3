//! The mesh config: what the operator generates and every sidecar enforces.
//!
//! One `ConfigMap` per namespace ([`CONFIG_MAP_NAME`], key [`CONFIG_MAP_KEY`]) holds a JSON
//! [`MeshConfig`] with every `ModelService` of that namespace, its policies and its resolved ready
//! endpoints. The sidecar may also read the same JSON from a file (`--config-file`). These types are
//! the wire contract between control and data plane: plain data, durations in milliseconds, and
//! defaults that let a hand-written file stay short.

use serde::{Deserialize, Serialize};

/// Name of the generated ConfigMap in each namespace that has a ModelService.
pub const CONFIG_MAP_NAME: &str = "infermesh-mesh-config";
/// Key of the JSON document inside that ConfigMap.
pub const CONFIG_MAP_KEY: &str = "mesh.json";
/// Header a sidecar sets when it forwards to a peer sidecar: `<modelservice>/<variant>`.
/// The peer then delivers to its local model without routing again.
pub const ROUTED_HEADER: &str = "x-infermesh-routed";

/// Everything a sidecar enforces, for one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Content revision (a hash of the services), so a sidecar can tell what it enforces.
    #[serde(default)]
    pub revision: String,
    /// The ModelServices, each addressed by `name` (and `name.namespace...` host forms).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// One ModelService as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct VariantConfig {
    pub name: String,
    /// Share of unrouted traffic, 0-100; the weights of a service sum to 100.
    pub weight: u32,
    /// Ready endpoints of the variant.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// All header matches must hold (AND).
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancingConfig {
    #[serde(default)]
    pub policy: LoadBalancingPolicy,
    /// Header hashed by `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
