//! Mesh config generation: a ModelService spec plus its resolved endpoints becomes the
//! [`ServiceConfig`] the sidecars enforce. A namespace's entries become one config through
//! `MeshConfig::new` (in `infermesh_crds::mesh`), which sorts them and stamps the revision, so the
//! operator and the sidecar share one definition of both.

use infermesh_crds::{
    ModelService,
    duration::Duration,
    mesh::{
        self, ConcurrencyConfig, HeaderMatch, HeaderValueMatch, LoadBalancingConfig,
        OutlierDetectionConfig, RetryConfig, RouteConfig, ServiceConfig, TimeoutConfig,
        VariantConfig,
    },
    model_service::{self as api, ModelServiceSpec},
};
use kube::ResourceExt;

use crate::endpoints::ResolvedVariant;

/// The balancing a ModelService asks for; with an engine and no policy of its own,
/// InferenceAware.
fn load_balancing(spec: &ModelServiceSpec) -> LoadBalancingConfig {
    let Some(lb) = &spec.load_balancing else {
        return LoadBalancingConfig {
            policy: if spec.engine.is_some() {
                mesh::LoadBalancingPolicy::InferenceAware
            } else {
                mesh::LoadBalancingPolicy::LeastRequest
            },
            ..Default::default()
        };
    };
    let default = mesh::InferenceScoring::default();
    let weight = |v: Option<i32>, d: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(d);
    LoadBalancingConfig {
        policy: match lb.policy {
            api::LoadBalancingPolicy::LeastRequest => mesh::LoadBalancingPolicy::LeastRequest,
            api::LoadBalancingPolicy::PeakEwma => mesh::LoadBalancingPolicy::PeakEwma,
            api::LoadBalancingPolicy::RoundRobin => mesh::LoadBalancingPolicy::RoundRobin,
            api::LoadBalancingPolicy::ConsistentHash => mesh::LoadBalancingPolicy::ConsistentHash,
            api::LoadBalancingPolicy::InferenceAware => mesh::LoadBalancingPolicy::InferenceAware,
        },
        hash_on: lb.hash_on.clone(),
        inference: lb.inference.as_ref().map(|i| mesh::InferenceScoring {
            queue_weight: weight(i.queue_weight, default.queue_weight),
            kv_cache_weight: weight(i.kv_cache_weight, default.kv_cache_weight),
            prefix_weight: weight(i.prefix_weight, default.prefix_weight),
            lora_weight: weight(i.lora_weight, default.lora_weight),
            max_queue: weight(i.max_queue, default.max_queue),
            max_kv_cache_percent: weight(i.max_kv_cache_percent, default.max_kv_cache_percent),
        }),
    }
}

/// The data-plane view of one ModelService. `resolved` comes from [`crate::endpoints::resolve`].
pub fn service_config(ms: &ModelService, resolved: &[ResolvedVariant]) -> ServiceConfig {
    let spec = &ms.spec;
    ServiceConfig {
        name: ms.name_any(),
        namespace: ms.namespace().unwrap_or_default(),
        port: u16::try_from(spec.port).unwrap_or(0),
        protocol: protocol(spec.protocol),
        variants: resolved
            .iter()
            .map(|v| VariantConfig {
                name: v.name.clone(),
                weight: u32::try_from(v.weight).unwrap_or(0),
                endpoints: v.endpoints.clone(),
                model_rewrite: spec
                    .variants
                    .iter()
                    .find(|sv| sv.name == v.name)
                    .and_then(|sv| sv.model_rewrite.clone()),
            })
            .collect(),
        routes: spec.routes.iter().map(route).collect(),
        sticky_header: spec.stickiness.as_ref().map(|s| s.header.clone()),
        retries: retries(spec),
        timeouts: spec
            .timeouts
            .as_ref()
            .map(|t| TimeoutConfig {
                request_ms: millis(t.request.as_ref()),
                idle_ms: millis(t.idle.as_ref()),
                first_byte_ms: millis(t.first_byte.as_ref()),
            })
            .unwrap_or_default(),
        load_balancing: load_balancing(spec),
        concurrency: spec
            .concurrency
            .as_ref()
            .map(|c| ConcurrencyConfig {
                max_in_flight_per_endpoint: c
                    .max_in_flight_per_endpoint
                    .and_then(|n| u32::try_from(n).ok()),
                max_queue: u32::try_from(c.max_queue).unwrap_or(0),
                queue_timeout_ms: millis(c.queue_timeout.as_ref()),
            })
            .unwrap_or_default(),
        outlier_detection: spec
            .outlier_detection
            .as_ref()
            .map(|o| OutlierDetectionConfig {
                consecutive_failures: o.consecutive_failures.and_then(|n| u32::try_from(n).ok()),
                base_ejection_ms: millis(o.base_ejection_time.as_ref()),
                max_ejection_ms: millis(o.max_ejection_time.as_ref()),
            })
            .unwrap_or_default(),
        engine: spec.engine.map(|e| match e {
            api::Engine::Vllm => mesh::Engine::Vllm,
            api::Engine::Sglang => mesh::Engine::Sglang,
            api::Engine::LlamaCpp => mesh::Engine::LlamaCpp,
            api::Engine::TrtLlm => mesh::Engine::TrtLlm,
            api::Engine::Auto => mesh::Engine::Auto,
            api::Engine::Generic => mesh::Engine::Generic,
        }),
    }
}

fn protocol(p: api::Protocol) -> mesh::Protocol {
    match p {
        api::Protocol::Http => mesh::Protocol::Http,
        api::Protocol::Http2 => mesh::Protocol::Http2,
        api::Protocol::Grpc => mesh::Protocol::Grpc,
    }
}

fn millis(d: Option<&Duration>) -> Option<u64> {
    d.and_then(Duration::parse)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn route(r: &api::Route) -> RouteConfig {
    RouteConfig {
        name: r.name.clone(),
        headers: r
            .match_
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                // The CRD guarantees exactly one is set; an empty prefix means "header present".
                value: if let Some(v) = &h.exact {
                    HeaderValueMatch::Exact(v.clone())
                } else if let Some(v) = &h.prefix {
                    HeaderValueMatch::Prefix(v.clone())
                } else if let Some(v) = &h.regex {
                    HeaderValueMatch::Regex(v.clone())
                } else {
                    HeaderValueMatch::Prefix(String::new())
                },
            })
            .collect(),
        path_prefix: r.match_.path_prefix.clone(),
        model: r.match_.model.clone(),
        variant: r.variant.clone(),
    }
}

fn retries(spec: &ModelServiceSpec) -> RetryConfig {
    let mut cfg = RetryConfig::default();
    let Some(r) = &spec.retries else {
        return cfg;
    };
    cfg.attempts = u32::try_from(r.attempts).unwrap_or(1).max(1);
    cfg.per_try_timeout_ms = millis(r.per_try_timeout.as_ref());
    cfg.retry_non_idempotent = r.retry_non_idempotent.unwrap_or(false);
    if !r.retry_on.is_empty() {
        cfg.retry_on = r
            .retry_on
            .iter()
            .map(|c| match c {
                api::RetryOn::ConnectFailure => mesh::RetryOn::ConnectFailure,
                api::RetryOn::Reset => mesh::RetryOn::Reset,
                api::RetryOn::ServerError => mesh::RetryOn::ServerError,
                api::RetryOn::GatewayError => mesh::RetryOn::GatewayError,
                api::RetryOn::RetriableStatusCodes => mesh::RetryOn::RetriableStatusCodes,
                api::RetryOn::Unavailable => mesh::RetryOn::Unavailable,
                api::RetryOn::ResourceExhausted => mesh::RetryOn::ResourceExhausted,
            })
            .collect();
    }
    cfg.retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .filter_map(|c| u16::try_from(*c).ok())
        .collect();
    if let Some(b) = &r.backoff {
        if let Some(base) = millis(Some(&b.base)) {
            cfg.backoff_base_ms = base;
        }
        if let Some(max) = millis(Some(&b.max)) {
            cfg.backoff_max_ms = max;
        }
        if let Some(j) = b.jitter {
            cfg.backoff_jitter = j.clamp(0.0, 1.0);
        }
    }
    if let Some(b) = &r.budget {
        cfg.budget_ratio = b.ratio.clamp(0.0, 1.0);
        cfg.budget_min_per_second = u32::try_from(b.min_per_second).unwrap_or(0);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::resolve;
    use crate::fixtures::{model_service, pod, spec_with};
    use infermesh_crds::mesh::MeshConfig;
    use infermesh_crds::model_service::{
        Backoff, HeaderMatch as ApiHeaderMatch, LoadBalancing, LoadBalancingPolicy,
        OutlierDetection, Retries, RetryBudget, RetryOn, Route, RouteMatch, Timeouts,
    };

    fn full_spec() -> ModelServiceSpec {
        let mut spec = spec_with(&[("stable", 90, "v1"), ("canary", 10, "v2")]);
        spec.routes = vec![Route {
            name: Some("beta".into()),
            match_: RouteMatch {
                headers: vec![ApiHeaderMatch {
                    name: "X-Cohort".into(),
                    exact: Some("beta".into()),
                    prefix: None,
                    regex: None,
                }],
                path_prefix: Some("/v1".into()),
                model: None,
            },
            variant: "canary".into(),
        }];
        spec.retries = Some(Retries {
            attempts: 3,
            per_try_timeout: Some("2s".into()),
            retry_on: vec![RetryOn::GatewayError, RetryOn::RetriableStatusCodes],
            retriable_status_codes: vec![429],
            retry_non_idempotent: Some(true),
            backoff: Some(Backoff {
                base: "50ms".into(),
                max: "2s".into(),
                jitter: Some(0.25),
            }),
            budget: Some(RetryBudget {
                ratio: 0.1,
                min_per_second: 5,
            }),
        });
        spec.timeouts = Some(Timeouts {
            request: Some("1m".into()),
            idle: Some("30s".into()),
            first_byte: Some("1500ms".into()),
        });
        spec.load_balancing = Some(LoadBalancing {
            policy: LoadBalancingPolicy::ConsistentHash,
            hash_on: Some("x-session".into()),
            inference: None,
        });
        spec.outlier_detection = Some(OutlierDetection {
            consecutive_failures: Some(3),
            base_ejection_time: Some("500ms".into()),
            max_ejection_time: None,
        });
        spec
    }

    #[test]
    fn spec_and_endpoints_become_the_service_config() {
        let ms = model_service("llm", "ns", full_spec());
        let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, true)];
        let cfg = service_config(&ms, &resolve(&ms.spec, "ns", &pods));
        assert_eq!(
            (cfg.name.as_str(), cfg.namespace.as_str(), cfg.port),
            ("llm", "ns", 8080)
        );
        assert_eq!(cfg.variants[0].weight, 90);
        assert_eq!(cfg.variants[0].endpoints[0].address, "198.18.64.5:15006");
        assert!(cfg.variants[1].endpoints.is_empty());
        let route = &cfg.routes[0];
        assert_eq!(route.headers[0].name, "x-cohort");
        assert_eq!(
            route.headers[0].value,
            HeaderValueMatch::Exact("beta".into())
        );
        assert_eq!(route.path_prefix.as_deref(), Some("/v1"));
        assert_eq!(cfg.retries.attempts, 3);
        assert_eq!(cfg.retries.per_try_timeout_ms, Some(2000));
        assert_eq!(
            cfg.retries.retry_on,
            [
                mesh::RetryOn::GatewayError,
                mesh::RetryOn::RetriableStatusCodes
            ]
        );
        assert_eq!(cfg.retries.retriable_status_codes, [429]);
        assert!(cfg.retries.retry_non_idempotent);
        assert_eq!(
            (cfg.retries.backoff_base_ms, cfg.retries.backoff_max_ms),
            (50, 2000)
        );
        assert_eq!(cfg.retries.budget_min_per_second, 5);
        assert_eq!(cfg.timeouts.request_ms, Some(60_000));
        assert_eq!(cfg.timeouts.first_byte_ms, Some(1500));
        assert_eq!(
            cfg.load_balancing.policy,
            mesh::LoadBalancingPolicy::ConsistentHash
        );
        assert_eq!(cfg.load_balancing.hash_on.as_deref(), Some("x-session"));
        assert_eq!(
            cfg.outlier_detection,
            OutlierDetectionConfig {
                consecutive_failures: Some(3),
                base_ejection_ms: Some(500),
                max_ejection_ms: None,
            }
        );
    }

    #[test]
    fn unset_policies_take_the_mesh_defaults() {
        let ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let cfg = service_config(&ms, &resolve(&ms.spec, "ns", &[]));
        assert_eq!(cfg.retries, RetryConfig::default());
        assert_eq!(cfg.timeouts, TimeoutConfig::default());
        assert_eq!(cfg.concurrency, ConcurrencyConfig::default());
        assert!(cfg.outlier_detection.is_unset());
        let json = serde_json::to_value(&cfg).unwrap();
        assert!(
            json.get("outlierDetection").is_none(),
            "left out, so existing revisions stay as they were"
        );
    }

    #[test]
    fn an_engine_makes_inference_aware_the_default_and_unset_weights_take_theirs() {
        let mut ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        ms.spec.engine = Some(api::Engine::Vllm);
        let cfg = service_config(&ms, &resolve(&ms.spec, "ns", &[]));
        assert_eq!(cfg.engine, Some(mesh::Engine::Vllm));
        assert_eq!(
            cfg.load_balancing.policy,
            mesh::LoadBalancingPolicy::InferenceAware
        );
        assert_eq!(cfg.load_balancing.inference, None);
        ms.spec.load_balancing = Some(LoadBalancing {
            policy: LoadBalancingPolicy::InferenceAware,
            hash_on: None,
            inference: Some(api::InferenceScoring {
                queue_weight: None,
                kv_cache_weight: Some(0),
                prefix_weight: Some(5),
                lora_weight: None,
                max_queue: Some(10),
                max_kv_cache_percent: None,
            }),
        });
        let cfg = service_config(&ms, &resolve(&ms.spec, "ns", &[]));
        assert_eq!(
            cfg.load_balancing.inference,
            Some(mesh::InferenceScoring {
                queue_weight: 2,
                kv_cache_weight: 0,
                prefix_weight: 5,
                lora_weight: 2,
                max_queue: 10,
                max_kv_cache_percent: 80,
            })
        );
        // The LoRA weight is written only when set apart from its default, so a sidecar that
        // predates it still reads this service's config.
        let json = serde_json::to_value(&cfg).unwrap();
        assert!(
            json["loadBalancing"]["inference"]
                .get("loraWeight")
                .is_none()
        );
        let mut lora = cfg.load_balancing.inference.unwrap();
        lora.lora_weight = 7;
        let json = serde_json::to_value(lora).unwrap();
        assert_eq!(json["loraWeight"], 7);
        assert_eq!(
            serde_json::from_value::<mesh::InferenceScoring>(json).unwrap(),
            lora
        );
        // Without an engine nothing changes: LeastRequest, and no field the old sidecars lack.
        let plain = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let json =
            serde_json::to_value(service_config(&plain, &resolve(&plain.spec, "ns", &[]))).unwrap();
        assert!(json.get("engine").is_none());
        assert!(json["loadBalancing"].get("inference").is_none());
    }

    #[test]
    fn mesh_config_is_sorted_and_its_revision_follows_content() {
        let a = model_service("a", "ns", spec_with(&[("stable", 100, "v1")]));
        let b = model_service("b", "ns", spec_with(&[("stable", 100, "v1")]));
        let sa = service_config(&a, &resolve(&a.spec, "ns", &[]));
        let sb = service_config(&b, &resolve(&b.spec, "ns", &[]));
        let one = MeshConfig::new(vec![sb.clone(), sa.clone()]);
        let two = MeshConfig::new(vec![sa.clone(), sb.clone()]);
        assert_eq!(one.services[0].name, "a");
        assert_eq!(one, two, "order of input must not matter");
        assert_eq!(one.revision.len(), 16);

        let pods = [pod("p", "ns", "v1", Some("198.18.64.5"), true, false)];
        let sa2 = service_config(&a, &resolve(&a.spec, "ns", &pods));
        let three = MeshConfig::new(vec![sa2, sb]);
        assert_ne!(
            three.revision, one.revision,
            "a new endpoint is a new revision"
        );
    }

    #[test]
    fn config_round_trips_through_the_sidecar_contract() {
        let ms = model_service("llm", "ns", full_spec());
        let cfg = MeshConfig::new(vec![service_config(&ms, &resolve(&ms.spec, "ns", &[]))]);
        let json = serde_json::to_string(&cfg).unwrap();
        let back: MeshConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
