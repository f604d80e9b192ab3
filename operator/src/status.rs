//! Status computation: from what a reconcile observed, the ModelService's status (conditions
//! Ready / ConfigGenerated / EndpointsAvailable, per-variant weights and endpoints, revision) and
//! the events worth telling a person (only on transitions). `Ready` gives the first problem in the
//! order a person must act on them: a name clash (an object of someone else's under a name the
//! operator writes), a spec the mesh refuses (`InvalidSpec`), an entry that does not fit in the
//! namespace's config (`ConfigTooLarge`), selectors reaching another ModelService's pods
//! (`OverlappingSelector`), then endpoints, then sidecars that do not enforce the ModelService's
//! revision yet (`Propagating`): `Ready=True` means the serving pods' sidecars enforce it, not only
//! that it was written. Each of the first four is a Warning event once per distinct message, and
//! so is a change in the set of selected pods that run no sidecar (`SidecarsInjected=False`).
//!
//! Events carry the numbers of the revision they announce, and each distinct note is its own
//! event series (`Notice::action`): the recorder folds events of one reason and action into a
//! series that keeps its first note, which would tell an older revision's weights and endpoints.

use infermesh_crds::{
    ModelServiceSpec, ModelServiceStatus,
    mesh::fnv1a,
    model_service::{UnmeshedPod, VariantStatus},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    endpoints::ResolvedVariant,
    overlap::Overlap,
    ownership::Clash,
    screening::Refusal,
    sidecars::{Enforcement, LISTED},
};

mod sidecars;
pub use sidecars::{PROPAGATING, SIDECARS_INJECTED, UNMESHED_PODS};

pub const READY: &str = "Ready";
pub const CONFIG_GENERATED: &str = "ConfigGenerated";
pub const ENDPOINTS_AVAILABLE: &str = "EndpointsAvailable";
/// Reason of `Ready=False` (and of the Warning event) when a name the operator writes is held by
/// an object it did not create.
pub const NAME_CLASH: &str = "NameClash";
/// Reason when the generated config entry breaks a rule of the mesh contract (e.g. a header regex
/// that does not compile).
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Reason when the entry does not fit in the namespace's config.
pub const CONFIG_TOO_LARGE: &str = "ConfigTooLarge";
/// Reason when a variant selects pods of another ModelService, or pods another one selects too.
pub const OVERLAPPING_SELECTOR: &str = "OverlappingSelector";
/// The `Ready=False` reasons told as a Warning event whenever their message changes.
const WARNED: [&str; 4] = [
    NAME_CLASH,
    INVALID_SPEC,
    CONFIG_TOO_LARGE,
    OVERLAPPING_SELECTOR,
];

/// The published config entry of a ModelService: the revision of the config that carried its
/// last change, and when.
#[derive(Clone, Debug)]
pub struct Entry {
    pub revision: String,
    pub at: Time,
}

/// What one reconcile saw and did.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub generation: Option<i64>,
    pub resolved: &'a [ResolvedVariant],
    /// This ModelService's entry in the namespace's mesh config; `None` when a name clash kept
    /// the config from being written (the status then keeps the revision it had), or when the
    /// config carries no entry of it (`refusal` says why; the status then has no revision).
    pub entry: Option<Entry>,
    /// Objects the operator left alone because someone else's object holds their name.
    pub clashes: &'a [Clash],
    /// Why the config does not carry this ModelService's generated entry, if it does not.
    pub refusal: Option<&'a Refusal>,
    /// Pods its variants select that another ModelService has too.
    pub overlaps: &'a [Overlap],
    /// The ModelService's namespace (the fixes the status suggests name it).
    pub namespace: &'a str,
    /// What the serving pods' sidecars enforce; `None` when they were not asked (no entry).
    pub sidecars: Option<&'a Enforcement>,
    /// Selected pods the Service does not send to, for lack of the sidecar.
    pub unmeshed: &'a [UnmeshedPod],
}

/// What the user reads about a refusal: what failed, what to do, and what is in force meanwhile.
fn refusal_message(refusal: &Refusal, entry: Option<&Entry>) -> (&'static str, String) {
    let in_force = match entry {
        Some(e) if refusal.kept() => format!(
            "the last valid config of this ModelService (mesh config revision {}) stays in force",
            e.revision
        ),
        _ => "it has no entry in the mesh config, so the mesh does not serve it".to_string(),
    };
    match refusal {
        Refusal::InvalidSpec { error, .. } => (
            INVALID_SPEC,
            format!("the mesh refuses this spec: {error}; fix the spec; until then {in_force}"),
        ),
        Refusal::TooLarge { bytes, cap, .. } => (
            CONFIG_TOO_LARGE,
            format!(
                "this ModelService's mesh config entry ({bytes} bytes) does not fit: ConfigMap {} \
                 must stay under {cap} bytes of JSON (the API server's 1 MiB object limit less a \
                 margin); use fewer endpoints or routes, or move ModelServices to another \
                 namespace; until then {in_force}",
                infermesh_crds::mesh::CONFIG_MAP_NAME
            ),
        ),
    }
}

/// A Kubernetes Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    /// The event's action: `Reconcile-` and a hash of the note. The recorder keys its series by
    /// reason and action (not note), so without it a second `ConfigRegenerated` within minutes
    /// would only count the first again, its note telling the first revision's numbers; with it
    /// each distinct note is its own event, and the same note repeated is one series.
    pub fn action(&self) -> String {
        format!("Reconcile-{:08x}", fnv1a(self.note.as_bytes()) as u32)
    }
}

/// Variants that can receive traffic: a positive weight, or named by a route.
fn serving(spec: &ModelServiceSpec, name: &str, weight: i32) -> bool {
    weight > 0 || spec.routes.iter().any(|r| r.variant == name)
}

/// The new status. Conditions keep their `lastTransitionTime` while their status is unchanged.
pub fn compute_status(
    spec: &ModelServiceSpec,
    prev: Option<&ModelServiceStatus>,
    obs: &Observation<'_>,
    now: &Time,
) -> ModelServiceStatus {
    let total: usize = obs.resolved.iter().map(|v| v.endpoints.len()).sum();
    let invalid: Vec<&str> = obs
        .resolved
        .iter()
        .filter_map(|v| v.selector_error.as_deref())
        .collect();
    let empty: Vec<&str> = obs
        .resolved
        .iter()
        .filter(|v| v.selector_error.is_none())
        .filter(|v| serving(spec, &v.name, v.weight) && v.endpoints.is_empty())
        .map(|v| v.name.as_str())
        .collect();

    let refused = obs.refusal.map(|r| refusal_message(r, obs.entry.as_ref()));
    let blocked = obs.clashes.iter().any(Clash::blocks_config);
    let config = match (&obs.entry, &refused) {
        (_, Some((reason, message))) if !blocked => ("False", *reason, message.clone()),
        (Some(entry), _) => (
            "True",
            "Published",
            format!(
                "mesh config revision {} carries this ModelService (ConfigMap {})",
                entry.revision,
                infermesh_crds::mesh::CONFIG_MAP_NAME
            ),
        ),
        (None, _) => {
            let blocking: Vec<String> = obs
                .clashes
                .iter()
                .filter(|c| c.blocks_config())
                .map(Clash::message)
                .collect();
            ("False", NAME_CLASH, blocking.join("; "))
        }
    };
    // Carried by no config (refused and not kept): no revision to report.
    let dropped = obs.entry.is_none() && obs.refusal.is_some();
    let revision = obs
        .entry
        .as_ref()
        .map(|e| e.revision.clone())
        .or_else(|| prev.and_then(|p| p.revision.clone()))
        .filter(|_| !dropped);
    let endpoints = if !invalid.is_empty() {
        ("False", "InvalidSelector", invalid.join("; "))
    } else if !empty.is_empty() {
        (
            "False",
            "NoReadyEndpoints",
            format!(
                "no Ready pod with an IP matches the selector of variant(s) {}; check the pods' labels and readiness",
                empty.join(", ")
            ),
        )
    } else {
        (
            "True",
            "EndpointsReady",
            format!(
                "{total} ready endpoint(s) across {} variant(s)",
                obs.resolved.len()
            ),
        )
    };
    let ready = if !obs.clashes.is_empty() {
        let messages: Vec<String> = obs.clashes.iter().map(Clash::message).collect();
        ("False", NAME_CLASH, messages.join("; "))
    } else if let Some((reason, message)) = refused {
        ("False", reason, message)
    } else if !obs.overlaps.is_empty() {
        let messages: Vec<String> = obs.overlaps.iter().map(Overlap::message).collect();
        ("False", OVERLAPPING_SELECTOR, messages.join("; "))
    } else if let Some(e) = obs.sidecars.filter(|e| !e.is_complete())
        && endpoints.0 == "True"
    {
        (
            "False",
            PROPAGATING,
            sidecars::propagating_message(e, revision.as_deref().unwrap_or_default()),
        )
    } else if endpoints.0 == "True" {
        let enforced = obs
            .sidecars
            .map(|e| format!(", enforced by {} sidecar(s)", e.total))
            .unwrap_or_default();
        (
            "True",
            "Ready",
            format!(
                "serving {} via revision {}{enforced}",
                spec.weights_summary(),
                revision.as_deref().unwrap_or_default()
            ),
        )
    } else {
        ("False", endpoints.1, endpoints.2.clone())
    };

    let prev_conditions = prev.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let cond = |type_: &str, (status, reason, message): (&str, &str, String)| {
        let last = prev_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: obs.generation,
            last_transition_time: last.unwrap_or_else(|| now.clone()),
        }
    };

    ModelServiceStatus {
        observed_generation: obs.generation,
        conditions: vec![
            cond(READY, ready),
            cond(CONFIG_GENERATED, config),
            cond(ENDPOINTS_AVAILABLE, endpoints),
            cond(
                SIDECARS_INJECTED,
                sidecars::injected_condition(obs.unmeshed, obs.namespace),
            ),
        ],
        variants: obs
            .resolved
            .iter()
            .map(|v| VariantStatus {
                name: v.name.clone(),
                weight: v.weight,
                ready_endpoints: i32::try_from(v.endpoints.len()).unwrap_or(i32::MAX),
            })
            .collect(),
        variant_weights: Some(spec.weights_summary()),
        ready_endpoints: Some(i32::try_from(total).unwrap_or(i32::MAX)),
        revision,
        config_published_at: obs
            .entry
            .as_ref()
            .map(|e| e.at.clone())
            .or_else(|| prev.and_then(|p| p.config_published_at.clone()))
            .filter(|_| !dropped),
        sidecars_total: obs.sidecars.map(|e| count(e.total)),
        sidecars_on_revision: obs.sidecars.map(|e| count(e.on_revision)),
        lagging_sidecars: obs
            .sidecars
            .map(|e| e.lagging.iter().take(LISTED).cloned().collect())
            .unwrap_or_default(),
        unmeshed_pods: obs.unmeshed.iter().take(LISTED).cloned().collect(),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Events for what changed between `prev` and `next`; nothing when nothing a person cares about did.
pub fn notices(
    spec: &ModelServiceSpec,
    prev: Option<&ModelServiceStatus>,
    next: &ModelServiceStatus,
    resolved: &[ResolvedVariant],
) -> Vec<Notice> {
    let mut out = vec![];
    if next.revision.is_some() && prev.and_then(|p| p.revision.as_ref()) != next.revision.as_ref() {
        out.push(Notice {
            warning: false,
            reason: "ConfigRegenerated",
            note: format!(
                "mesh config revision {} published: {}, {} ready endpoint(s)",
                next.revision.as_deref().unwrap_or(""),
                spec.weights_summary(),
                next.ready_endpoints.unwrap_or(0)
            ),
        });
    }
    let prev_endpoints = |name: &str| {
        prev.and_then(|p| p.variants.iter().find(|v| v.name == name))
            .map(|v| v.ready_endpoints)
    };
    let prev_invalid = prev
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == ENDPOINTS_AVAILABLE))
        .is_some_and(|c| c.reason == "InvalidSelector");
    for v in resolved {
        if let Some(err) = &v.selector_error {
            if !prev_invalid {
                out.push(Notice {
                    warning: true,
                    reason: "InvalidSelector",
                    note: err.clone(),
                });
            }
            continue;
        }
        let was = prev_endpoints(&v.name);
        if serving(spec, &v.name, v.weight) && v.endpoints.is_empty() && was != Some(0) {
            out.push(Notice {
                warning: true,
                reason: "NoEndpoints",
                note: format!(
                    "variant {} (weight {}) has no ready endpoints: no Ready pod with an IP matches its selector",
                    v.name, v.weight
                ),
            });
        }
    }
    let ready_of = |s: Option<&ModelServiceStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = ready_of(Some(next))
        && let Some(warned) = WARNED.into_iter().find(|w| *w == reason)
        && ready_of(prev) != Some((reason, message.clone()))
    {
        out.push(Notice {
            warning: true,
            reason: warned,
            note: message,
        });
    }
    let was_ready = prev
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.status == "True");
    let is_ready = next
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    if is_ready && !was_ready {
        let enforced = next
            .sidecars_total
            .map(|n| format!(", enforced by {n} sidecar(s)"))
            .unwrap_or_default();
        out.push(Notice {
            warning: false,
            reason: "Ready",
            note: format!(
                "every variant has ready endpoints ({}) at mesh config revision {}{enforced}",
                spec.weights_summary(),
                next.revision.as_deref().unwrap_or_default()
            ),
        });
    }
    let injected_of = |s: Option<&ModelServiceStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == SIDECARS_INJECTED))
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    if let Some((status, message)) = injected_of(Some(next))
        && status == "False"
        && injected_of(prev) != Some((status, message.clone()))
    {
        out.push(Notice {
            warning: true,
            reason: UNMESHED_PODS,
            note: message,
        });
    }
    out
}

#[cfg(test)]
mod tests;
