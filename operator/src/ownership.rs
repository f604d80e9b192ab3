//! Whether an object found under a name the operator writes is the operator's: the one decision
//! that keeps it from adopting, overwriting or deleting what a person or another tool made.
//!
//! Server-side apply with `force` takes over any object of that name, so every apply and delete
//! is preceded by a read and this decision. The operator's mark is the label
//! `app.kubernetes.io/managed-by=infermesh-operator` it puts on everything it writes; a fronting
//! Service must also be controlled by a ModelService of its name (this one, by uid, or the one it
//! replaced, whose Service the operator made too). Anything else is a name clash, reported on the
//! ModelService with what to rename, and left untouched.

use infermesh_crds::ModelService;
use infermesh_crds::mesh::{CONFIG_MAP_NAME, MESH_KEY_SECRET};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Secret},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};

use crate::resources::{MANAGED_BY, MANAGER, READER_ROLE};

/// What the operator may do under a name it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nothing holds the name: the operator may create the object.
    Free,
    /// The operator made the object: it may apply over it and delete it.
    Ours,
    /// Someone else's object holds the name: neither write nor delete it.
    Taken,
}

fn managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGER)
}

/// A namespace-wide object (the mesh ConfigMap, the mesh key Secret, the reader Role and
/// RoleBinding) found as `found`.
pub fn claim_shared(found: Option<&ObjectMeta>) -> Claim {
    match found {
        None => Claim::Free,
        Some(meta) if managed(meta) => Claim::Ours,
        Some(_) => Claim::Taken,
    }
}

/// `found`, if it is a namespace-wide object of ours.
pub fn ours_shared<K: Resource>(found: Option<&K>) -> Option<&K> {
    found.filter(|o| claim_shared(Some(o.meta())) == Claim::Ours)
}

/// A namespace's mesh ConfigMap, mesh key Secret and reader Role and RoleBinding, as read before
/// they are written or deleted.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    pub config_map: Option<ConfigMap>,
    pub role: Option<Role>,
    pub binding: Option<RoleBinding>,
    pub key: Option<Secret>,
}

impl Shared {
    /// The ones someone else's object holds the name of; any of them keeps the namespace's mesh
    /// config from being written.
    pub fn clashes(&self) -> Vec<Clash> {
        [
            (
                "ConfigMap",
                CONFIG_MAP_NAME,
                self.config_map.as_ref().map(|o| &o.metadata),
            ),
            ("Role", READER_ROLE, self.role.as_ref().map(|o| &o.metadata)),
            (
                "RoleBinding",
                READER_ROLE,
                self.binding.as_ref().map(|o| &o.metadata),
            ),
            (
                "Secret",
                MESH_KEY_SECRET,
                self.key.as_ref().map(|o| &o.metadata),
            ),
        ]
        .into_iter()
        .filter(|(_, _, found)| claim_shared(*found) == Claim::Taken)
        .map(|(kind, name, _)| Clash {
            kind,
            name: name.to_string(),
        })
        .collect()
    }
}

/// The Service found as `found` under the name of `ms`.
pub fn claim_service(found: Option<&ObjectMeta>, ms: &ModelService) -> Claim {
    let Some(meta) = found else {
        return Claim::Free;
    };
    let kind = ModelService::kind(&());
    let group = ModelService::group(&());
    let ours = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .any(|r| {
            let a_model_service =
                r.kind == kind && r.api_version.split('/').next() == Some(group.as_ref());
            ms.uid().as_deref() == Some(r.uid.as_str())
                || (a_model_service && r.name == ms.name_any() && managed(meta))
        });
    if ours { Claim::Ours } else { Claim::Taken }
}

/// An object the operator needs to write, held under its name by an object it did not create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clash {
    /// `Service`, `ConfigMap`, `Secret`, `Role` or `RoleBinding`.
    pub kind: &'static str,
    pub name: String,
}

impl Clash {
    /// The clash keeps the namespace's mesh config from being published (not only a Service).
    pub fn blocks_config(&self) -> bool {
        self.kind != "Service"
    }

    /// What is wrong and what to do, for the condition and the Warning event.
    pub fn message(&self) -> String {
        let (kind, name) = (self.kind, &self.name);
        let found = format!(
            "{kind} {name} already exists and was not created by {MANAGER} (it lacks the label \
             {MANAGED_BY}={MANAGER}), so the operator leaves it untouched"
        );
        if self.blocks_config() {
            format!(
                "{found} and does not publish this namespace's mesh config: rename or delete that \
                 {kind}, since the operator needs the name {name}"
            )
        } else {
            format!(
                "{found} and this ModelService has no Service: rename the ModelService, or rename \
                 or delete the Service {name}"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;
    use crate::{
        fixtures::{model_service, spec_with},
        resources::front_service,
    };

    fn llm() -> ModelService {
        model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]))
    }

    fn labelled(value: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("llm".into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.to_string(),
                value.to_string(),
            )])),
            ..Default::default()
        }
    }

    fn controlled_by(mut meta: ObjectMeta, name: &str, uid: &str) -> ObjectMeta {
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "infermesh.io/v1alpha1".into(),
            kind: "ModelService".into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        meta
    }

    #[test]
    fn a_shared_object_is_ours_only_with_our_label() {
        assert_eq!(claim_shared(None), Claim::Free);
        assert_eq!(claim_shared(Some(&labelled(MANAGER))), Claim::Ours);
        assert_eq!(claim_shared(Some(&labelled("Helm"))), Claim::Taken);
        assert_eq!(claim_shared(Some(&ObjectMeta::default())), Claim::Taken);
    }

    #[test]
    fn every_shared_object_held_by_someone_else_is_a_clash() {
        let mut shared = Shared::default();
        assert!(shared.clashes().is_empty(), "nothing there yet");
        shared.config_map = Some(ConfigMap {
            metadata: labelled("Helm"),
            ..Default::default()
        });
        shared.role = Some(Role {
            metadata: labelled(MANAGER),
            ..Default::default()
        });
        let clashes = shared.clashes();
        assert_eq!(
            clashes,
            [Clash {
                kind: "ConfigMap",
                name: CONFIG_MAP_NAME.into()
            }]
        );
        assert!(clashes[0].blocks_config());
        assert!(ours_shared(shared.config_map.as_ref()).is_none());
        assert!(ours_shared(shared.role.as_ref()).is_some());
        // A Secret of that name someone else made: the operator neither rotates nor deletes it.
        shared.key = Some(Secret {
            metadata: ObjectMeta::default(),
            ..Default::default()
        });
        let kinds: Vec<_> = shared.clashes().iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["ConfigMap", "Secret"]);
        assert!(shared.clashes()[1].message().contains(MESH_KEY_SECRET));
    }

    #[test]
    fn a_service_is_ours_when_this_model_service_or_its_predecessor_controls_it() {
        let ms = llm();
        assert_eq!(claim_service(None, &ms), Claim::Free);
        let built = front_service(&ms);
        assert_eq!(claim_service(Some(&built.metadata), &ms), Claim::Ours);
        // A ModelService of the same name deleted and created again: its Service is the
        // operator's, owned by the old uid until the next apply.
        let previous = controlled_by(labelled(MANAGER), "llm", "uid-old");
        assert_eq!(claim_service(Some(&previous), &ms), Claim::Ours);
    }

    #[test]
    fn a_user_service_is_taken_whatever_it_resembles() {
        let ms = llm();
        let plain = ObjectMeta {
            name: Some("llm".into()),
            ..Default::default()
        };
        assert_eq!(claim_service(Some(&plain), &ms), Claim::Taken);
        assert_eq!(
            claim_service(Some(&labelled(MANAGER)), &ms),
            Claim::Taken,
            "our label without a controlling ModelService"
        );
        let other = controlled_by(labelled(MANAGER), "other", "uid-other");
        assert_eq!(claim_service(Some(&other), &ms), Claim::Taken);
        let unlabelled = controlled_by(ObjectMeta::default(), "llm", "uid-old");
        assert_eq!(claim_service(Some(&unlabelled), &ms), Claim::Taken);
        let mut not_controller = controlled_by(labelled(MANAGER), "llm", "uid-llm");
        not_controller.owner_references.as_mut().unwrap()[0].controller = None;
        assert_eq!(claim_service(Some(&not_controller), &ms), Claim::Taken);
    }

    #[test]
    fn a_clash_message_says_what_to_rename() {
        let svc = Clash {
            kind: "Service",
            name: "llm".into(),
        };
        assert!(!svc.blocks_config());
        let m = svc.message();
        assert!(m.contains("Service llm already exists"), "{m}");
        assert!(m.contains("rename the ModelService"), "{m}");
        let cm = Clash {
            kind: "ConfigMap",
            name: "infermesh-mesh-config".into(),
        };
        assert!(cm.blocks_config());
        assert!(cm.message().contains("rename or delete that ConfigMap"));
    }
}
