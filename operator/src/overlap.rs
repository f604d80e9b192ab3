//! Selectors that reach another ModelService's pods. The label `infermesh.io/modelservice: <name>`
//! (what the fronting Service selects) says which ModelService a pod belongs to. Decided here:
//!
//! - a pod whose label names another ModelService of the namespace is that one's: it is left out
//!   of this one's endpoints (its Service already sends that ModelService's traffic there, and a
//!   model serves one ModelService), and this one reports the overlap. The owner is not affected
//!   and reports nothing.
//! - a pod that two ModelServices select and whose label names neither (nor any other of the
//!   namespace) belongs to no one: it stays an endpoint of both, which both report, since only a
//!   person can tell which one it serves.
//!
//! A label naming no ModelService of the namespace claims nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use infermesh_crds::{MODELSERVICE_LABEL, ModelService};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::endpoints::selects_pod;

/// Pods this ModelService's variants select that another ModelService has too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The other ModelService.
    pub other: String,
    pub pods: usize,
    /// The pods carry the other's label: left out of this one's endpoints.
    pub owned_by_other: bool,
}

impl Overlap {
    /// What to tell the user, naming the other ModelService and the pod count.
    pub fn message(&self) -> String {
        if self.owned_by_other {
            format!(
                "{} pod(s) this ModelService's variants select carry {MODELSERVICE_LABEL}={}: they \
                 belong to ModelService {} and are left out of this one's endpoints; narrow the \
                 variant selectors",
                self.pods, self.other, self.other
            )
        } else {
            format!(
                "{} pod(s) are selected by this ModelService and by ModelService {}, and both \
                 send them traffic; narrow the variant selectors, or label the pods \
                 {MODELSERVICE_LABEL}=<the one they serve>",
                self.pods, self.other
            )
        }
    }
}

/// The ModelService of `names` that `pod`'s label names, if any.
fn owner<'a>(pod: &'a Pod, names: &BTreeSet<&str>) -> Option<&'a str> {
    pod.labels()
        .get(MODELSERVICE_LABEL)
        .map(String::as_str)
        .filter(|n| names.contains(n))
}

/// The names of `members`.
pub fn names(members: &[Arc<ModelService>]) -> BTreeSet<String> {
    members.iter().map(|m| m.name_any()).collect()
}

/// The pods that may be endpoints of ModelService `name`: all but those whose label names another
/// of `names`.
pub fn own_pods<'a>(
    name: &'a str,
    names: &'a BTreeSet<String>,
    pods: impl IntoIterator<Item = &'a Pod> + 'a,
) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.into_iter().filter(move |p| {
        p.labels()
            .get(MODELSERVICE_LABEL)
            .is_none_or(|n| n == name || !names.contains(n))
    })
}

/// The overlaps of `ms` with the other `members` (it may be among them) over `pods`, sorted by the
/// other's name (own pods of another first).
pub fn overlaps(
    ms: &ModelService,
    members: &[Arc<ModelService>],
    pods: &[Arc<Pod>],
) -> Vec<Overlap> {
    let me = ms.name_any();
    let ns = ms.namespace();
    let all: BTreeSet<&str> = members
        .iter()
        .map(|m| m.metadata.name.as_deref().unwrap_or_default())
        .chain([me.as_str()])
        .collect();
    let others: Vec<&Arc<ModelService>> = members.iter().filter(|m| m.name_any() != me).collect();
    let mut counts: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for pod in pods
        .iter()
        .filter(|p| p.namespace() == ns && selects_pod(&ms.spec, p))
    {
        match owner(pod, &all) {
            Some(o) if o == me => {}
            Some(o) => *counts.entry((false, o.to_string())).or_default() += 1,
            None => {
                for other in others.iter().filter(|o| selects_pod(&o.spec, pod)) {
                    *counts.entry((true, other.name_any())).or_default() += 1;
                }
            }
        }
    }
    counts
        .into_iter()
        .map(|((shared, other), pods)| Overlap {
            other,
            pods,
            owned_by_other: !shared,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{model_service, pod, spec_with};

    fn labelled(name: &str, version: &str, owner: &str) -> Arc<Pod> {
        let mut p = pod(name, "ns", version, Some("198.18.64.5"), true, true);
        p.labels_mut()
            .insert(MODELSERVICE_LABEL.into(), owner.into());
        Arc::new(p)
    }

    fn ms(name: &str, version: &str) -> Arc<ModelService> {
        Arc::new(model_service(
            name,
            "ns",
            spec_with(&[("stable", 100, version)]),
        ))
    }

    #[test]
    fn pods_labelled_for_another_model_service_are_not_ours_and_are_reported() {
        let (a, b) = (ms("a", "v1"), ms("b", "v1"));
        let members = [a.clone(), b.clone()];
        let pods = [labelled("p1", "v1", "a"), labelled("p2", "v1", "a")];
        assert_eq!(
            overlaps(&b, &members, &pods),
            [Overlap {
                other: "a".into(),
                pods: 2,
                owned_by_other: true
            }]
        );
        assert!(
            overlaps(&a, &members, &pods).is_empty(),
            "the owner is not affected"
        );
        let names = names(&members);
        assert_eq!(
            own_pods("b", &names, pods.iter().map(|p| p.as_ref())).count(),
            0
        );
        assert_eq!(
            own_pods("a", &names, pods.iter().map(|p| p.as_ref())).count(),
            2
        );
        let message = overlaps(&b, &members, &pods)[0].message();
        assert!(
            message.contains("2 pod(s)") && message.contains("ModelService a"),
            "{message}"
        );
    }

    #[test]
    fn pods_two_select_and_neither_owns_are_reported_on_both_and_kept() {
        let (a, b, c) = (ms("a", "v1"), ms("b", "v1"), ms("c", "v2"));
        let members = [a.clone(), b.clone(), c.clone()];
        let pods = [
            Arc::new(pod("p1", "ns", "v1", None, true, true)),
            labelled("p2", "v1", "gone"),
            Arc::new(pod("elsewhere", "other", "v1", None, true, true)),
        ];
        let shared = |other: &str| {
            vec![Overlap {
                other: other.into(),
                pods: 2,
                owned_by_other: false,
            }]
        };
        assert_eq!(overlaps(&a, &members, &pods), shared("b"));
        assert_eq!(overlaps(&b, &members, &pods), shared("a"));
        assert!(overlaps(&c, &members, &pods).is_empty());
        let names = names(&members);
        assert_eq!(
            own_pods("a", &names, pods.iter().map(|p| p.as_ref())).count(),
            3,
            "a label naming no ModelService claims nothing"
        );
    }

    #[test]
    fn a_pod_labelled_for_a_third_is_left_out_of_both() {
        let (a, b, c) = (ms("a", "v1"), ms("b", "v1"), ms("c", "v9"));
        let members = [a.clone(), b.clone(), c];
        let pods = [labelled("p1", "v1", "c")];
        for m in [&a, &b] {
            assert_eq!(
                overlaps(m, &members, &pods),
                [Overlap {
                    other: "c".into(),
                    pods: 1,
                    owned_by_other: true
                }]
            );
        }
    }
}
