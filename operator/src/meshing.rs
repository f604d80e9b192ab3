//! Pods a ModelService's variants select that the fronting Service does not send to, and why.
//!
//! The Service targets the sidecar's inbound port (15006) and selects `infermesh.io/sidecar=
//! injected` besides `infermesh.io/modelservice=<name>`, so kube-proxy sends only to pods whose
//! sidecar listens there; the webhook sets that label when it injects. A selected pod without it
//! gets no Service traffic, and its ModelService lists it with the reason, so a person can mesh it
//! again (recreating the pod lets the webhook inject it). Such a pod stays a direct endpoint in the
//! mesh config (`endpoints`): sidecars reach its model port as they always did, so it keeps
//! serving mesh traffic; only the Service path, which would reach a closed 15006, skips it.

use infermesh_crds::{
    INJECT_ANNOTATION, ModelServiceSpec, SIDECAR_INJECTED, SIDECAR_LABEL,
    model_service::UnmeshedPod,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::endpoints::{is_meshed, selects_pod};

/// The pod has annotation `infermesh.io/inject=disabled`: the webhook was told to skip it.
pub const OPTED_OUT: &str = "OptedOut";
/// No sidecar and no opt-out: created while injection was off for the namespace, or while the
/// webhook was down.
pub const NOT_INJECTED: &str = "NotInjected";
/// Runs the sidecar but lacks the label the Service selects (created before the webhook labelled
/// pods, or the sidecar was added by hand).
pub const NOT_LABELLED: &str = "NotLabelled";

/// Why `pod` gets no traffic from the Service, or `None` when it does (or would, once Ready).
pub fn unmeshed_reason(pod: &Pod) -> Option<&'static str> {
    let labelled = pod.labels().get(SIDECAR_LABEL).map(String::as_str) == Some(SIDECAR_INJECTED);
    match (is_meshed(pod), labelled) {
        (true, true) => None,
        (true, false) => Some(NOT_LABELLED),
        (false, _) => Some(
            if pod.annotations().get(INJECT_ANNOTATION).map(String::as_str) == Some("disabled") {
                OPTED_OUT
            } else {
                NOT_INJECTED
            },
        ),
    }
}

/// The pods of `pods` (this ModelService's own) that some variant of `spec` selects and that get
/// no Service traffic, by name. Terminating and finished pods are left out.
pub fn unmeshed<'a>(
    spec: &ModelServiceSpec,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<UnmeshedPod> {
    let mut out: Vec<UnmeshedPod> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|p| selects_pod(spec, p))
        .filter_map(|p| {
            Some(UnmeshedPod {
                name: p.name_any(),
                reason: unmeshed_reason(p)?.to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, spec_with};

    #[test]
    fn selected_pods_without_the_sidecar_are_listed_with_why() {
        let spec = spec_with(&[("stable", 100, "v1")]);
        let mut opted_out = pod("b-opted", "ns", "v1", Some("198.18.64.7"), true, false);
        opted_out
            .annotations_mut()
            .insert(INJECT_ANNOTATION.into(), "disabled".into());
        let mut unlabelled = pod("c-old", "ns", "v1", Some("198.18.64.8"), true, true);
        unlabelled.labels_mut().remove(SIDECAR_LABEL);
        let mut done = pod("e-done", "ns", "v1", None, false, false);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [
            pod("d-meshed", "ns", "v1", Some("198.18.64.9"), true, true),
            pod("a-plain", "ns", "v1", None, false, false),
            opted_out,
            unlabelled,
            done,
            pod("f-other", "ns", "v9", Some("198.18.64.10"), true, false),
        ];
        let listed: Vec<(String, String)> = unmeshed(&spec, &pods)
            .into_iter()
            .map(|u| (u.name, u.reason))
            .collect();
        assert_eq!(
            listed,
            [
                ("a-plain".to_string(), NOT_INJECTED.to_string()),
                ("b-opted".to_string(), OPTED_OUT.to_string()),
                ("c-old".to_string(), NOT_LABELLED.to_string()),
            ]
        );
    }
}
