//! Validating a [`MeshConfig`] and compiling it into a [`RoutingTable`]. Endpoint state (in-flight
//! counts, latency estimates, ejections), concurrency limiters and retry budgets are carried over
//! from the previous table for everything that survives the reload.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::Authority;
use infermesh_crds::mesh::{
    HeaderValueMatch, LoadBalancingPolicy, MeshConfig, ServiceConfig, VariantConfig, header_regex,
};
use tokio::time::Instant;

use super::table::{RetryPolicy, RoutingTable, Service, Timeouts, Variant};
use crate::endpoint::Endpoint;
use crate::endpoint::budget::RetryBudget;
use crate::endpoint::limit::Limiter;
use crate::endpoint::state::{EndpointState, EwmaPolicy};
use crate::hash::{ConfigMap, stable_hash};
use crate::metrics::Metrics;
use crate::routing::balancer::Balancer;
use crate::routing::router::{Route, Router, ValueMatch};
use crate::upstream::pool::ConnPool;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("mesh config is not valid JSON for MeshConfig: {0}; fix the document (key mesh.json)")]
    Parse(#[from] serde_json::Error),
}

/// What compiling needs besides the config.
pub(crate) struct CompileContext<'a> {
    pub(crate) metrics: &'a Metrics,
    /// This pod's IP: endpoints at this IP are delivered to locally.
    pub(crate) pod_ip: Option<IpAddr>,
    /// Where the local model listens (127.0.0.1 in a pod).
    pub(crate) model_host: IpAddr,
    pub(crate) ewma: EwmaPolicy,
    pub(crate) now: Instant,
}

/// Compiles every service of `config` on its own: one that breaks a rule of the mesh contract is
/// left out of the table with its reason (its requests get 503 saying why), and never keeps the
/// others from taking effect.
pub(crate) fn compile(
    config: MeshConfig,
    previous: &RoutingTable,
    cx: &CompileContext<'_>,
) -> RoutingTable {
    let mut services = Vec::with_capacity(config.services.len());
    let mut by_name = ConfigMap::default();
    let mut refused = ConfigMap::default();
    for s in &config.services {
        let key = s.name.to_ascii_lowercase();
        if by_name.contains_key(&key) || refused.contains_key(&key) {
            // The first entry of a name stays in force; a second one cannot be told apart by host.
            tracing::warn!(service = %s.name, "ModelService appears twice in the mesh config; the second entry is left out");
            continue;
        }
        match s.validate().and_then(|()| compile_service(s, previous, cx)) {
            Ok(svc) => {
                by_name.insert(key, services.len());
                services.push(Arc::new(svc));
            }
            Err(reason) => {
                tracing::warn!(service = %s.name, %reason, "ModelService left out of the mesh config in force");
                refused.insert(key, reason);
            }
        }
    }
    RoutingTable {
        revision: config.revision.clone(),
        config,
        services,
        by_name,
        refused,
    }
}

/// Builds a service that passed [`ServiceConfig::validate`]; what remains to fail here are
/// conversions the contract's rules already exclude.
fn compile_service(
    s: &ServiceConfig,
    previous: &RoutingTable,
    cx: &CompileContext<'_>,
) -> Result<Service, String> {
    let name = s.name.as_str();
    let weights: Vec<u32> = s.variants.iter().map(|v| v.weight).collect();
    let r = &s.retries;
    let header = |what: &str, h: &str| {
        HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("{what} {h:?} is not a valid header name"))
    };
    let sticky_header = s
        .sticky_header
        .as_deref()
        .map(|h| header("stickyHeader", h))
        .transpose()?;
    let hash_on = s
        .load_balancing
        .hash_on
        .as_deref()
        .map(|h| header("loadBalancing.hashOn", h))
        .transpose()?;
    let c = &s.concurrency;
    let mut routes = Vec::with_capacity(s.routes.len());
    for rc in &s.routes {
        let variant = s
            .variants
            .iter()
            .position(|v| v.name == rc.variant)
            .ok_or_else(|| format!("a route names unknown variant {:?}", rc.variant))?;
        let mut headers = Vec::with_capacity(rc.headers.len());
        for hm in &rc.headers {
            let m = match &hm.value {
                HeaderValueMatch::Exact(v) => ValueMatch::Exact(v.as_bytes().to_vec()),
                HeaderValueMatch::Prefix(v) => ValueMatch::Prefix(v.as_bytes().to_vec()),
                HeaderValueMatch::Regex(re) => ValueMatch::Regex(
                    header_regex(re).map_err(|e| format!("route regex {re:?}: {e}"))?,
                ),
            };
            headers.push((header("route header", &hm.name)?, m));
        }
        routes.push(Route {
            headers,
            path_prefix: rc.path_prefix.clone(),
            model: rc.model.clone(),
            variant,
        });
    }

    let old = previous.service(&name.to_ascii_lowercase());
    let local_authority =
        Authority::try_from(SocketAddr::new(cx.model_host, s.port).to_string().as_str())
            .map_err(|e| format!("port: {e}"))?;
    // Idle connections survive a reload as long as their address does.
    let local = match old {
        Some(o) if *o.local.authority() == local_authority => o.local.clone(),
        _ => ConnPool::new(local_authority),
    };
    let limits = c.max_in_flight_per_endpoint.map(|max| {
        (
            max,
            c.max_queue,
            Duration::from_millis(c.queue_timeout_ms.unwrap_or(1000)),
        )
    });
    let mut variants = Vec::with_capacity(s.variants.len());
    for v in &s.variants {
        let old_v = old.and_then(|o| o.variants.iter().find(|ov| ov.name == v.name));
        variants.push(compile_variant(s, v, old_v, &local, limits, &hash_on, cx)?);
    }
    let variants_serve_locally = variants.iter().any(|v| v.endpoints.iter().any(|e| e.local));
    let budget = match old {
        Some(o)
            if o.budget.ratio == r.budget_ratio
                && o.budget.min_per_second == r.budget_min_per_second =>
        {
            o.budget.clone()
        }
        _ => Arc::new(RetryBudget::new(
            r.budget_ratio,
            r.budget_min_per_second,
            cx.now,
        )),
    };
    let t = &s.timeouts;
    Ok(Service {
        name: name.to_owned(),
        namespace: s.namespace.clone(),
        protocol: s.protocol,
        local,
        variants,
        router: Router::new(routes, sticky_header, &weights),
        retry: RetryPolicy::from_config(r),
        budget,
        timeouts: Timeouts {
            request: t.request_ms.map(Duration::from_millis),
            idle: t.idle_ms.map(Duration::from_millis),
            first_byte: t.first_byte_ms.map(Duration::from_millis),
        },
        outlier_detection: s.outlier_detection.clone(),
        metrics: cx.metrics.service(name),
        serves_locally: variants_serve_locally,
        reads_model: s.routes.iter().any(|r| r.model.is_some())
            || s.variants.iter().any(|v| v.model_rewrite.is_some()),
        engine: s.engine,
        reports_load: s.engine.is_some()
            || s.load_balancing.policy == LoadBalancingPolicy::InferenceAware,
    })
}

fn compile_variant(
    s: &ServiceConfig,
    v: &VariantConfig,
    old: Option<&Variant>,
    local: &Arc<ConnPool>,
    limits: Option<(u32, u32, Duration)>,
    hash_on: &Option<HeaderName>,
    cx: &CompileContext<'_>,
) -> Result<Variant, String> {
    let routed = format!("{}/{}", s.name, v.name);
    let mut endpoints = Vec::with_capacity(v.endpoints.len());
    let mut seen = HashSet::new();
    for e in &v.endpoints {
        let addr: SocketAddr = e
            .address
            .parse()
            .map_err(|_| format!("endpoint address {:?} is not ip:port", e.address))?;
        if !seen.insert(addr) {
            continue;
        }
        let old_e = old.and_then(|o| o.endpoints.iter().find(|oe| oe.address == e.address));
        let is_local = cx.pod_ip == Some(addr.ip());
        let conns = if is_local {
            local.clone()
        } else {
            let authority = Authority::try_from(addr.to_string().as_str())
                .map_err(|err| format!("endpoint {}: {err}", e.address))?;
            match old_e {
                Some(o) if *o.conns.authority() == authority => o.conns.clone(),
                _ => ConnPool::new(authority),
            }
        };
        let state = old_e
            .map(|o| o.state.clone())
            .unwrap_or_else(|| Arc::new(EndpointState::new(cx.now, cx.ewma)));
        let limiter =
            limits.map(
                |(max, queue, timeout)| match old_e.and_then(|o| o.limiter.as_ref()) {
                    Some(l)
                        if (l.max_in_flight, l.max_queue, l.queue_timeout)
                            == (max, queue, timeout) =>
                    {
                        l.clone()
                    }
                    _ => Arc::new(Limiter::new(max, queue, timeout)),
                },
            );
        endpoints.push(Endpoint {
            key: stable_hash(e.address.as_bytes()),
            address: e.address.clone(),
            conns,
            local: is_local,
            meshed: e.meshed && !is_local,
            state,
            limiter,
        });
    }
    Ok(Variant {
        name: v.name.clone(),
        balancer: Balancer::new(
            s.load_balancing.policy,
            hash_on.clone(),
            s.load_balancing.inference.unwrap_or_default(),
            &endpoints,
        ),
        endpoints,
        routed,
        model_rewrite: v.model_rewrite.clone(),
        metrics: cx.metrics.variant(&s.name, &v.name),
    })
}

#[cfg(test)]
mod tests;
