//! The rules one [`ServiceConfig`] must satisfy before a sidecar enforces it. The sidecar checks
//! them when it compiles a config (and leaves out a service that breaks one); the operator runs
//! the same code before it publishes a ModelService, so what it publishes is what every sidecar
//! accepts, and a refusal lands on the ModelService that caused it.

use std::collections::HashSet;
use std::net::SocketAddr;

use regex::{Regex, RegexBuilder};

use super::{HeaderValueMatch, LoadBalancingPolicy, ServiceConfig};
use crate::ports;

/// A regex may not compile to more than this (guards against pathological patterns).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Retries allowed per request, tries included.
pub const MAX_ATTEMPTS: u32 = 10;

/// A route's header regex, anchored at both ends: what the sidecar matches header values with.
pub fn header_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// RFC 9110 §5.6.2 `token`: what a header name may be made of.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A ModelService or variant name as it appears in hosts, headers and metric labels.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ServiceConfig {
    /// Every rule of the mesh contract for this service; the error says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !is_name(&self.name) {
            return Err(format!(
                "name {:?} must be 1-63 letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.port == 0 {
            return Err("port must be 1-65535".into());
        }
        if [ports::INBOUND, ports::OUTBOUND, ports::ADMIN].contains(&self.port) {
            return Err(format!(
                "port {} is one of the sidecar's own ports (15001, 15006, 15020): use the model container's port",
                self.port
            ));
        }
        if self.variants.is_empty() {
            return Err("needs at least one variant".into());
        }
        if self.variants.len() > usize::from(u16::MAX) {
            return Err("too many variants".into());
        }
        let mut seen = HashSet::new();
        for v in &self.variants {
            if !is_name(&v.name) || !seen.insert(v.name.as_str()) {
                return Err(format!(
                    "variant name {:?} is empty, repeated, or not made of letters, digits, '-' or '_'",
                    v.name
                ));
            }
            for e in &v.endpoints {
                e.address.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "variant {:?}: endpoint address {:?} is not ip:port",
                        v.name, e.address
                    )
                })?;
            }
        }
        if self.variants.iter().all(|v| v.weight == 0) && self.routes.is_empty() {
            return Err(
                "every variant has weight 0 and there is no route: no request could be served"
                    .into(),
            );
        }
        let r = &self.retries;
        if !(0.0..=1.0).contains(&r.budget_ratio) || !(0.0..=1.0).contains(&r.backoff_jitter) {
            return Err(
                "retries.budgetRatio and retries.backoffJitter must be within 0.0-1.0".into(),
            );
        }
        if r.attempts > MAX_ATTEMPTS {
            return Err(format!("retries.attempts must be at most {MAX_ATTEMPTS}"));
        }
        let t = &self.timeouts;
        for (what, ms) in [
            ("retries.perTryTimeoutMs", r.per_try_timeout_ms),
            ("timeouts.requestMs", t.request_ms),
            ("timeouts.idleMs", t.idle_ms),
            ("timeouts.firstByteMs", t.first_byte_ms),
            (
                "concurrency.queueTimeoutMs",
                self.concurrency.queue_timeout_ms,
            ),
        ] {
            if ms == Some(0) {
                return Err(format!(
                    "{what} is 0: a zero timeout fails every request; leave it out for no limit"
                ));
            }
        }
        let header = |what: &str, h: &str| {
            if is_header_name(h) {
                Ok(())
            } else {
                Err(format!("{what} {h:?} is not a valid header name"))
            }
        };
        if let Some(h) = &self.sticky_header {
            header("stickyHeader", h)?;
        }
        if let Some(h) = &self.load_balancing.hash_on {
            header("loadBalancing.hashOn", h)?;
        }
        if self.load_balancing.policy == LoadBalancingPolicy::ConsistentHash
            && self.load_balancing.hash_on.is_none()
        {
            return Err("loadBalancing.hashOn is required with ConsistentHash".into());
        }
        if let Some(i) = &self.load_balancing.inference {
            if self.load_balancing.policy != LoadBalancingPolicy::InferenceAware {
                return Err("loadBalancing.inference applies to policy InferenceAware only".into());
            }
            if i.queue_weight + i.kv_cache_weight + i.prefix_weight == 0 {
                return Err("loadBalancing.inference: at least one weight must be above 0".into());
            }
            if i.queue_weight.max(i.kv_cache_weight).max(i.prefix_weight) > 100 {
                return Err("loadBalancing.inference: weights are 0-100".into());
            }
            if i.max_kv_cache_percent > 100 {
                return Err("loadBalancing.inference.maxKvCachePercent is 0-100".into());
            }
        }
        if self.concurrency.max_in_flight_per_endpoint == Some(0) {
            return Err("concurrency.maxInFlightPerEndpoint must be at least 1".into());
        }
        for route in &self.routes {
            if !self.variants.iter().any(|v| v.name == route.variant) {
                return Err(format!("a route names unknown variant {:?}", route.variant));
            }
            for hm in &route.headers {
                header("route header", &hm.name)?;
                if let HeaderValueMatch::Regex(re) = &hm.value {
                    header_regex(re).map_err(|e| {
                        format!(
                            "route header {:?}: regex {re:?} does not compile: {e}",
                            hm.name
                        )
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::MeshConfig;

    const BASE: &str = r#"{"services":[{"name":"llm","port":8000,
      "variants":[{"name":"stable","weight":90,"endpoints":[{"address":"10.0.0.1:15006"}]},
                  {"name":"canary","weight":10}],
      "routes":[{"headers":[{"name":"X-User","regex":"beta-.*"}],"variant":"canary"}]}]}"#;

    fn check(json: &str) -> Result<(), String> {
        let cfg: MeshConfig = serde_json::from_str(json).unwrap();
        cfg.services[0].validate()
    }

    #[test]
    fn a_valid_service_passes() {
        check(BASE).unwrap();
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases = [
            (BASE.replace("beta-.*", "([a-z"), "does not compile"),
            (BASE.replace("\"stable\"", "\"llm.v3\""), "variant name"),
            (BASE.replace("8000", "15006"), "sidecar's own ports"),
            (BASE.replace("8000", "0"), "port must be"),
            (BASE.replace("\"canary\"", "\"stable\""), "repeated"),
            (BASE.replace("10.0.0.1:15006", "nowhere"), "not ip:port"),
            (BASE.replace("X-User", "X User"), "not a valid header name"),
            (
                BASE.replace(
                    "\"port\":8000",
                    "\"port\":8000,\"timeouts\":{\"firstByteMs\":0}",
                ),
                "timeouts.firstByteMs is 0",
            ),
            (
                BASE.replace(
                    "\"port\":8000",
                    "\"port\":8000,\"retries\":{\"attempts\":11}",
                ),
                "at most 10",
            ),
            (
                BASE.replace(
                    "\"name\":\"llm\"",
                    &format!("\"name\":\"{}\"", "a".repeat(64)),
                ),
                "1-63",
            ),
            (
                BASE.replace("\"variant\":\"canary\"", "\"variant\":\"nope\""),
                "unknown variant",
            ),
        ];
        for (json, want) in cases {
            let err = check(&json).unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    #[test]
    fn header_regexes_match_whole_values() {
        let re = super::header_regex("beta-.*").unwrap();
        assert!(re.is_match("beta-1"));
        assert!(!re.is_match("xbeta-1"));
        assert!(
            super::header_regex("(a{1000}){1000}").is_err(),
            "size limit"
        );
    }
}
