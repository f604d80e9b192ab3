//! Endpoint resolution: which pods serve each variant of a ModelService, and at which address.
//!
//! A pod is an endpoint of a variant when it is in the ModelService's namespace, matches the
//! variant's selector, is Ready, has an IP and is not terminating. A meshed pod (one that runs the
//! infermesh sidecar) is reached at its sidecar's inbound port; any other pod at the model port.

use infermesh_crds::{
    SIDECAR_CONTAINER,
    mesh::Endpoint,
    model_service::{ModelServiceSpec, Variant},
    ports,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
};

/// The endpoints of one variant, or why its selector could not be used.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedVariant {
    pub name: String,
    pub weight: i32,
    /// Sorted by address, so equal pod sets give equal configs.
    pub endpoints: Vec<Endpoint>,
    /// Set when the selector is invalid; `endpoints` is then empty.
    pub selector_error: Option<String>,
}

/// The variant's selector as a kube `Selector`, refusing selectors that would match every pod.
pub fn variant_selector(variant: &Variant) -> Result<Selector, String> {
    let selector = Selector::try_from(variant.selector.clone())
        .map_err(|e| format!("variant {:?} has an invalid selector: {e}", variant.name))?;
    if selector.selects_all() {
        return Err(format!(
            "variant {:?} has an empty selector, which would select every pod: give matchLabels or matchExpressions",
            variant.name
        ));
    }
    Ok(selector)
}

/// The pod runs the infermesh sidecar (as a native sidecar init container or a plain container).
pub fn is_meshed(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
            || spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The endpoint a ready, addressed, non-terminating pod offers, else `None`.
pub fn pod_endpoint(pod: &Pod, model_port: u16) -> Option<Endpoint> {
    if pod.metadata.deletion_timestamp.is_some() || !is_ready(pod) {
        return None;
    }
    let ip = pod
        .status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())?;
    let meshed = is_meshed(pod);
    let port = if meshed { ports::INBOUND } else { model_port };
    let address = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Some(Endpoint {
        address,
        pod: pod.metadata.name.clone(),
        meshed,
    })
}

/// Resolves every variant of `spec` (a ModelService in `namespace`) against `pods`.
pub fn resolve<'a>(
    spec: &ModelServiceSpec,
    namespace: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<ResolvedVariant> {
    let model_port = u16::try_from(spec.port).unwrap_or(0);
    let selectors: Vec<Result<Selector, String>> =
        spec.variants.iter().map(variant_selector).collect();
    let mut resolved: Vec<ResolvedVariant> = spec
        .variants
        .iter()
        .zip(&selectors)
        .map(|(v, sel)| ResolvedVariant {
            name: v.name.clone(),
            weight: v.weight,
            endpoints: vec![],
            selector_error: sel.as_ref().err().cloned(),
        })
        .collect();
    for pod in pods {
        if pod.namespace().as_deref() != Some(namespace) {
            continue;
        }
        let labels = pod.labels();
        for (slot, sel) in resolved.iter_mut().zip(&selectors) {
            if let Ok(sel) = sel
                && sel.matches(labels)
                && let Some(ep) = pod_endpoint(pod, model_port)
            {
                slot.endpoints.push(ep);
            }
        }
    }
    for slot in &mut resolved {
        slot.endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        slot.endpoints.dedup_by(|a, b| a.address == b.address);
    }
    resolved
}

/// The pod is selected by some variant of `spec` (used to map pod events to ModelServices).
pub fn selects_pod(spec: &ModelServiceSpec, pod: &Pod) -> bool {
    let labels = pod.labels();
    spec.variants
        .iter()
        .filter_map(|v| variant_selector(v).ok())
        .any(|sel| sel.matches(labels))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fixtures::{pod, spec_with};

    #[test]
    fn ready_pods_with_ip_become_endpoints_on_the_model_port() {
        let spec = spec_with(&[("stable", 90, "v1"), ("canary", 10, "v2")]);
        let pods = [
            pod("a", "ns", "v1", Some("198.18.64.5"), true, false),
            pod("b", "ns", "v2", Some("198.18.64.6"), true, false),
        ];
        let r = resolve(&spec, "ns", &pods);
        assert_eq!(r[0].name, "stable");
        assert_eq!(r[0].endpoints.len(), 1);
        assert_eq!(r[0].endpoints[0].address, "198.18.64.5:8080");
        assert_eq!(r[0].endpoints[0].pod.as_deref(), Some("a"));
        assert!(!r[0].endpoints[0].meshed);
        assert_eq!(r[1].endpoints[0].address, "198.18.64.6:8080");
    }

    #[test]
    fn meshed_pods_are_reached_on_the_sidecar_inbound_port() {
        let spec = spec_with(&[("stable", 100, "v1")]);
        let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, true)];
        let ep = &resolve(&spec, "ns", &pods)[0].endpoints[0];
        assert_eq!(ep.address, "198.18.64.5:15006");
        assert!(ep.meshed);
    }

    #[test]
    fn unready_unaddressed_terminating_and_foreign_pods_are_skipped() {
        let spec = spec_with(&[("stable", 100, "v1")]);
        let mut terminating = pod("t", "ns", "v1", Some("198.18.64.9"), true, false);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let pods = [
            pod("unready", "ns", "v1", Some("198.18.64.7"), false, false),
            pod("noip", "ns", "v1", None, true, false),
            pod(
                "other-ns",
                "elsewhere",
                "v1",
                Some("198.18.64.8"),
                true,
                false,
            ),
            pod(
                "other-variant",
                "ns",
                "v9",
                Some("198.18.64.10"),
                true,
                false,
            ),
            terminating,
        ];
        assert!(resolve(&spec, "ns", &pods)[0].endpoints.is_empty());
    }

    #[test]
    fn endpoints_are_sorted_so_configs_are_stable() {
        let spec = spec_with(&[("stable", 100, "v1")]);
        let pods = [
            pod("b", "ns", "v1", Some("198.18.64.20"), true, false),
            pod("a", "ns", "v1", Some("198.18.64.3"), true, false),
        ];
        let addrs: Vec<_> = resolve(&spec, "ns", &pods)[0]
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect();
        assert_eq!(addrs, ["198.18.64.20:8080", "198.18.64.3:8080"]);
    }

    #[test]
    fn invalid_and_empty_selectors_are_reported_not_matched() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let mut spec = spec_with(&[("stable", 50, "v1"), ("canary", 50, "v2")]);
        spec.variants[0].selector = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "version".into(),
                operator: "Near".into(),
                values: Some(vec!["v1".into()]),
            }]),
            match_labels: None,
        };
        spec.variants[1].selector = LabelSelector::default();
        let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
        let r = resolve(&spec, "ns", &pods);
        assert!(
            r[0].selector_error
                .as_deref()
                .unwrap()
                .contains("invalid selector")
        );
        assert!(
            r[1].selector_error
                .as_deref()
                .unwrap()
                .contains("empty selector")
        );
        assert!(r.iter().all(|v| v.endpoints.is_empty()));
        assert!(!selects_pod(&spec, &pods[0]));
    }

    #[test]
    fn selects_pod_follows_variant_selectors() {
        let spec = spec_with(&[("stable", 100, "v1")]);
        assert!(selects_pod(
            &spec,
            &pod("a", "ns", "v1", None, false, false)
        ));
        assert!(!selects_pod(
            &spec,
            &pod("a", "ns", "v2", None, false, false)
        ));
    }
}
