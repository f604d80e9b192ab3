//! The objects the operator owns, built as plain values for server-side apply: the mesh config
//! ConfigMap, the mesh key Secret and their reader Role/RoleBinding (one each per namespace), and
//! the Service fronting each ModelService.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use infermesh_crds::{
    MODELSERVICE_LABEL, ModelService, SIDECAR_INJECTED, SIDECAR_LABEL,
    mesh::{
        CONFIG_MAP_KEY, CONFIG_MAP_NAME, MESH_KEY_CURRENT, MESH_KEY_PREVIOUS, MESH_KEY_ROTATED_AT,
        MESH_KEY_SECRET, MeshConfig,
    },
    model_service::Protocol,
    ports,
};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{Resource, ResourceExt};

/// Field manager (and `app.kubernetes.io/managed-by` value) of everything the operator writes.
pub const MANAGER: &str = "infermesh-operator";
/// The label marking everything the operator writes (value [`MANAGER`]): what it may overwrite
/// and delete (see `ownership`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Role and RoleBinding letting a namespace's service accounts read only the mesh config and key.
pub const READER_ROLE: &str = "infermesh-mesh-config-reader";
/// Port of the Service fronting a ModelService.
pub const SERVICE_PORT: i32 = 80;
/// How long a mesh key signs before a new one replaces it: bounds what a key read by a pod that
/// has since lost access can still forge.
pub const KEY_ROTATION: Duration = Duration::from_secs(24 * 3600);
/// Bytes of a minted mesh key (HMAC-SHA256's block-size strength).
const KEY_BYTES: usize = 32;

fn labels(extra: Option<(&str, String)>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(MANAGED_BY.to_string(), MANAGER.to_string())]);
    if let Some((k, v)) = extra {
        l.insert(k.to_string(), v);
    }
    l
}

/// Non-controller owner references to every ModelService sharing a namespace-wide object, so the
/// garbage collector removes it with the last of them.
fn shared_owners(
    owners: &[&ModelService],
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let mut refs: Vec<_> = owners.iter().filter_map(|ms| ms.owner_ref(&())).collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    refs
}

/// The namespace's mesh config ConfigMap holding `config` as JSON.
pub fn mesh_config_map(
    namespace: &str,
    config: &MeshConfig,
    owners: &[&ModelService],
) -> Result<ConfigMap, serde_json::Error> {
    // Compact: a namespace with hundreds of ModelServices must stay under the 1 MiB object limit.
    let json = serde_json::to_string(config)?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(None)),
            annotations: Some(BTreeMap::from([(
                "infermesh.io/revision".to_string(),
                config.revision.clone(),
            )])),
            owner_references: Some(shared_owners(owners)),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CONFIG_MAP_KEY.to_string(), json)])),
        ..Default::default()
    })
}

/// The namespace's mesh key Secret, given the one found there (`found`, if it is ours): its keys
/// kept while they are younger than [`KEY_ROTATION`]; then a new `current`, the old one kept as
/// `previous` so markers signed by sidecars that have not read the new Secret yet still prove;
/// minted afresh when there is none or it is unusable.
pub fn mesh_key_secret(
    namespace: &str,
    owners: &[&ModelService],
    found: Option<&Secret>,
    now: SystemTime,
) -> Secret {
    let key = |s: &Secret, name: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(name))
            .filter(|b| b.0.len() == KEY_BYTES)
            .cloned()
    };
    let rotated_at = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MESH_KEY_ROTATED_AT))
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let kept = found.and_then(|s| Some((s, key(s, MESH_KEY_CURRENT)?, rotated_at(s)?)));
    let (current, previous, at) = match kept {
        Some((s, current, at)) if now.duration_since(at).unwrap_or_default() < KEY_ROTATION => {
            (current, key(s, MESH_KEY_PREVIOUS), at)
        }
        Some((_, current, _)) => (mint(), Some(current), now),
        None => (mint(), None, now),
    };
    let mut data = BTreeMap::from([(MESH_KEY_CURRENT.to_string(), current)]);
    if let Some(p) = previous {
        data.insert(MESH_KEY_PREVIOUS.to_string(), p);
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(MESH_KEY_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(None)),
            annotations: Some(BTreeMap::from([(
                MESH_KEY_ROTATED_AT.to_string(),
                humantime::format_rfc3339_seconds(at).to_string(),
            )])),
            owner_references: Some(shared_owners(owners)),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// A new random key (the thread RNG is a CSPRNG seeded from the OS).
fn mint() -> ByteString {
    ByteString(rand::random::<[u8; KEY_BYTES]>().to_vec())
}

/// Metadata of the reader Role and its RoleBinding: same name, owned by every ModelService there.
fn reader_meta(namespace: &str, owners: &[&ModelService]) -> ObjectMeta {
    ObjectMeta {
        name: Some(READER_ROLE.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels(None)),
        owner_references: Some(shared_owners(owners)),
        ..Default::default()
    }
}

/// Role granting get/list/watch on the mesh config ConfigMap and the mesh key Secret only (by
/// resourceNames).
pub fn reader_role(namespace: &str, owners: &[&ModelService]) -> Role {
    let read = |resource: &str, name: &str| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(vec![name.into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    };
    Role {
        metadata: reader_meta(namespace, owners),
        rules: Some(vec![
            read("configmaps", CONFIG_MAP_NAME),
            read("secrets", MESH_KEY_SECRET),
        ]),
    }
}

/// Binds [`reader_role`] to every service account of the namespace.
pub fn reader_role_binding(namespace: &str, owners: &[&ModelService]) -> RoleBinding {
    RoleBinding {
        metadata: reader_meta(namespace, owners),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: READER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: format!("system:serviceaccounts:{namespace}"),
            namespace: None,
        }]),
    }
}

/// The Service fronting `ms`: same name, port 80 → the sidecars' inbound port, selecting the pods
/// labelled `infermesh.io/modelservice=<name>` that the webhook labelled `infermesh.io/sidecar=
/// injected`: a pod without the sidecar has nothing listening on 15006, so kube-proxy must not
/// send it a share (see `meshing`, which reports such pods).
pub fn front_service(ms: &ModelService) -> Service {
    let name = ms.name_any();
    let app_protocol = match ms.spec.protocol {
        Protocol::Http => None,
        Protocol::Http2 | Protocol::Grpc => Some("kubernetes.io/h2c".to_string()),
    };
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: ms.namespace(),
            labels: Some(labels(Some((MODELSERVICE_LABEL, name.clone())))),
            owner_references: ms.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (MODELSERVICE_LABEL.to_string(), name),
                (SIDECAR_LABEL.to_string(), SIDECAR_INJECTED.to_string()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::Int(i32::from(ports::INBOUND))),
                protocol: Some("TCP".into()),
                app_protocol,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{model_service, spec_with},
        ownership::{Claim, claim_service},
    };

    #[test]
    fn service_targets_the_sidecar_and_is_owned() {
        let ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let svc = front_service(&ms);
        let spec = svc.spec.as_ref().unwrap();
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::Int(15006)));
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([
                (MODELSERVICE_LABEL.to_string(), "llm".to_string()),
                (SIDECAR_LABEL.to_string(), "injected".to_string()),
            ])),
            "only pods the webhook injected, whose sidecar listens on the target port"
        );
        assert_eq!(claim_service(Some(&svc.metadata), &ms), Claim::Ours);
        let other = model_service("other", "ns", spec_with(&[("stable", 100, "v1")]));
        assert_eq!(claim_service(Some(&svc.metadata), &other), Claim::Taken);
    }

    #[test]
    fn reader_role_names_only_the_mesh_config_and_key() {
        let ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let role = reader_role("ns", &[&ms]);
        let rules: Vec<_> = role
            .rules
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r.verbs, ["get", "list", "watch"]);
                (
                    r.resources.clone().unwrap(),
                    r.resource_names.clone().unwrap(),
                )
            })
            .collect();
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            rules,
            [
                (one("configmaps"), one(CONFIG_MAP_NAME)),
                (one("secrets"), one(MESH_KEY_SECRET)),
            ]
        );
        let rb = reader_role_binding("ns", &[&ms]);
        assert_eq!(
            rb.subjects.as_ref().unwrap()[0].name,
            "system:serviceaccounts:ns"
        );
    }

    #[test]
    fn the_mesh_key_is_minted_kept_then_rotated_with_the_old_one_still_accepted() {
        let ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let data = |s: &Secret, k: &str| s.data.as_ref().unwrap().get(k).cloned();
        let first = mesh_key_secret("ns", &[&ms], None, t0);
        let current = data(&first, MESH_KEY_CURRENT).unwrap();
        assert_eq!(current.0.len(), KEY_BYTES);
        assert_eq!(data(&first, MESH_KEY_PREVIOUS), None);
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()[MESH_KEY_ROTATED_AT],
            "2027-01-15T08:00:00Z"
        );
        assert_eq!(first.metadata.labels.as_ref().unwrap()[MANAGED_BY], MANAGER);
        // A day less a second later: the same key, the same time.
        let later = mesh_key_secret(
            "ns",
            &[&ms],
            Some(&first),
            t0 + KEY_ROTATION - Duration::from_secs(1),
        );
        assert_eq!(later.data, first.data);
        assert_eq!(later.metadata.annotations, first.metadata.annotations);
        // A day later: a new key; the old one is the previous.
        let t1 = t0 + KEY_ROTATION;
        let rotated = mesh_key_secret("ns", &[&ms], Some(&later), t1);
        let new = data(&rotated, MESH_KEY_CURRENT).unwrap();
        assert_ne!(new, current);
        assert_eq!(data(&rotated, MESH_KEY_PREVIOUS), Some(current));
        assert_eq!(
            rotated.metadata.annotations.as_ref().unwrap()[MESH_KEY_ROTATED_AT],
            humantime::format_rfc3339_seconds(t1).to_string()
        );
        // A Secret without a usable key (edited by hand): minted afresh.
        let mut broken = rotated.clone();
        broken.data = Some(BTreeMap::from([(
            MESH_KEY_CURRENT.to_string(),
            ByteString(b"short".to_vec()),
        )]));
        let fresh = mesh_key_secret("ns", &[&ms], Some(&broken), t1);
        assert_eq!(data(&fresh, MESH_KEY_CURRENT).unwrap().0.len(), KEY_BYTES);
        assert_eq!(data(&fresh, MESH_KEY_PREVIOUS), None);
    }

    #[test]
    fn config_map_carries_json_revision_and_every_owner() {
        let a = model_service("a", "ns", spec_with(&[("stable", 100, "v1")]));
        let b = model_service("b", "ns", spec_with(&[("stable", 100, "v1")]));
        let cfg = MeshConfig {
            revision: "0123".into(),
            services: vec![],
        };
        let cm = mesh_config_map("ns", &cfg, &[&b, &a]).unwrap();
        let json = &cm.data.as_ref().unwrap()[CONFIG_MAP_KEY];
        assert_eq!(serde_json::from_str::<MeshConfig>(json).unwrap(), cfg);
        let owners: Vec<_> = cm
            .owner_references()
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(owners, ["a", "b"]);
        assert!(
            cm.owner_references()
                .iter()
                .all(|o| o.controller != Some(true))
        );
    }
}
