//! The status's sidecar parts: whether the serving sidecars enforce the ModelService's revision
//! (`Ready=False`, reason `Propagating`, while some do not), and which selected pods run no
//! sidecar (the `SidecarsInjected` condition, saying how to mesh them).

use infermesh_crds::{
    INJECT_ANNOTATION,
    model_service::{LaggingSidecar, UnmeshedPod},
};

use crate::{
    meshing::{NOT_INJECTED, NOT_LABELLED, OPTED_OUT},
    sidecars::{Enforcement, LISTED, UNKNOWN},
};

/// Reason of `Ready=False` while some serving sidecars do not enforce the revision yet.
pub const PROPAGATING: &str = "Propagating";
/// Condition type: every pod the variants select runs the sidecar and gets Service traffic.
pub const SIDECARS_INJECTED: &str = "SidecarsInjected";
/// Reasons of [`SIDECARS_INJECTED`].
pub const ALL_MESHED: &str = "AllMeshed";
pub const UNMESHED_PODS: &str = "UnmeshedPods";
/// Every unmeshed pod opted out: what its owner asked for, told apart from a pod the webhook
/// missed.
pub const PODS_OPTED_OUT: &str = "PodsOptedOut";

fn pods_named<T>(items: &[T], name: impl Fn(&T) -> String) -> String {
    let mut listed: Vec<String> = items.iter().take(LISTED).map(name).collect();
    if items.len() > LISTED {
        listed.push(format!("and {} more", items.len() - LISTED));
    }
    listed.join(", ")
}

/// `Ready`'s message while `e` has lagging sidecars, for the entry of config revision `revision`.
pub fn propagating_message(e: &Enforcement, revision: &str) -> String {
    let named = pods_named(&e.lagging, |l: &LaggingSidecar| {
        if l.revision == UNKNOWN {
            format!("{} (admin port did not name a revision)", l.pod)
        } else {
            format!("{} (runs {})", l.pod, l.revision)
        }
    });
    format!(
        "{} of {} sidecar(s) do not enforce mesh config revision {revision} yet: {named}",
        e.lagging.len(),
        e.total
    )
}

/// The `SidecarsInjected` condition (status, reason, message) for `unmeshed` pods of `namespace`.
pub fn injected_condition(
    unmeshed: &[UnmeshedPod],
    namespace: &str,
) -> (&'static str, &'static str, String) {
    if unmeshed.is_empty() {
        return (
            "True",
            ALL_MESHED,
            "every pod the variants select runs the infermesh sidecar".to_string(),
        );
    }
    let named = pods_named(unmeshed, |u: &UnmeshedPod| {
        format!("{} ({})", u.name, u.reason)
    });
    let mut fixes = vec![];
    let first = |reason: &str| {
        unmeshed
            .iter()
            .find(|u| u.reason == reason)
            .map(|u| u.name.clone())
    };
    if let Some(pod) = first(NOT_INJECTED).or_else(|| first(NOT_LABELLED)) {
        fixes.push(format!(
            "delete a NotInjected or NotLabelled pod so that it is recreated with the sidecar (e.g. \
             kubectl delete pod {pod} -n {namespace}), after checking that namespace {namespace} \
             has annotation {INJECT_ANNOTATION}=enabled and that the infermesh webhook is up"
        ));
    }
    if first(OPTED_OUT).is_some() {
        fixes.push(format!(
            "an OptedOut pod has annotation {INJECT_ANNOTATION}=disabled: remove it from the pod \
             template to mesh the pod"
        ));
    }
    let reason = if unmeshed.iter().all(|u| u.reason == OPTED_OUT) {
        PODS_OPTED_OUT
    } else {
        UNMESHED_PODS
    };
    (
        "False",
        reason,
        format!(
            "{} selected pod(s) run no infermesh sidecar, so the Service does not send to them \
             (other sidecars still send to them directly): {named}; {}",
            unmeshed.len(),
            fixes.join("; ")
        ),
    )
}
