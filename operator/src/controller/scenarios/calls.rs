//! The requests a reconcile of `llm` in namespace `ns` is expected to send, as scripted calls
//! with their exact paths and bodies, and readers of what those bodies carried.

use infermesh_crds::{ModelService, ModelServiceStatus, mesh::MeshConfig};
use serde_json::{Value, json};

use super::{FINALIZER, finalized};
use crate::fixtures::api_server::{Call, includes};

pub(super) const MS: &str = "/apis/infermesh.io/v1alpha1/namespaces/ns/modelservices/llm";
pub(super) const CM: &str = "/api/v1/namespaces/ns/configmaps/infermesh-mesh-config";
pub(super) const ROLE: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/infermesh-mesh-config-reader";
pub(super) const BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/infermesh-mesh-config-reader";
pub(super) const SVC: &str = "/api/v1/namespaces/ns/services/llm";
pub(super) const KEY: &str = "/api/v1/namespaces/ns/secrets/infermesh-mesh-key";
pub(super) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events?";
/// The query of a forced server-side apply by the operator's field manager.
pub(super) const APPLY: &str = "?&force=true&fieldManager=infermesh-operator";

pub(super) fn managed() -> Value {
    json!({"app.kubernetes.io/managed-by": "infermesh-operator"})
}

/// The owner reference every ModelService `name` puts on the namespace-wide objects.
pub(super) fn shared_owner(name: &str) -> Value {
    json!({
        "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
        "name": name, "uid": format!("uid-{name}"),
    })
}

pub(super) fn reader_meta(owners: &[&str]) -> Value {
    json!({
        "name": "infermesh-mesh-config-reader", "namespace": "ns", "labels": managed(),
        "ownerReferences": owners.iter().map(|o| shared_owner(o)).collect::<Vec<_>>(),
    })
}

/// The mesh ConfigMap's apply: owned by `owners`, `llm`'s entry with these weights and one
/// endpoint per variant; the revision in the annotation is the one in `mesh.json`.
pub(super) fn apply_config_map(owners: &[&'static str], stable: u32) -> Call {
    let owners_json: Vec<Value> = owners.iter().map(|o| shared_owner(o)).collect();
    Call::patch(format!("{CM}{APPLY}"))
        .includes(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "infermesh-mesh-config", "namespace": "ns", "labels": managed(),
                "ownerReferences": owners_json,
            },
        }))
        .check(move |body| {
            let json = body["data"]["mesh.json"].as_str().expect("mesh.json");
            let config: MeshConfig = serde_json::from_str(json).expect("a mesh config");
            assert_eq!(
                body["metadata"]["annotations"]["infermesh.io/revision"],
                json!(config.revision)
            );
            assert_eq!(config.revision, MeshConfig::revision_of(&config.services));
            let entry = serde_json::to_value(
                config
                    .services
                    .iter()
                    .find(|s| s.name == "llm")
                    .expect("llm's entry"),
            )
            .unwrap();
            let expected = json!({"name": "llm", "namespace": "ns", "port": 8080, "variants": [
                {"name": "stable", "weight": stable, "endpoints": [
                    {"address": "198.18.64.5:15006", "pod": "llm-v1", "meshed": true}]},
                {"name": "canary", "weight": 100 - stable, "endpoints": [
                    {"address": "198.18.64.6:15006", "pod": "llm-v2", "meshed": true}]},
            ]});
            assert!(includes(&entry, &expected), "{entry:#}");
        })
}

/// The mesh key Secret's apply: ours, a fresh 32-byte key (base64 in the body) and when it was
/// minted; no previous key on a first publication.
pub(super) fn apply_key() -> Call {
    Call::patch(format!("{KEY}{APPLY}"))
        .includes(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "infermesh-mesh-key", "namespace": "ns", "labels": managed()},
        }))
        .check(|body| {
            use base64::Engine as _;
            let current = body["data"]["current"].as_str().expect("a current key");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(current)
                .expect("base64");
            assert_eq!(bytes.len(), 32);
            let at = body["metadata"]["annotations"]["infermesh.io/rotated-at"]
                .as_str()
                .expect("a rotation time");
            assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
        })
}

pub(super) fn apply_role(owners: &[&str]) -> Call {
    Call::patch(format!("{ROLE}{APPLY}")).body(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": reader_meta(owners),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"],
             "resourceNames": ["infermesh-mesh-config"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["infermesh-mesh-key"], "verbs": ["get", "list", "watch"]},
        ],
    }))
}

pub(super) fn apply_binding(owners: &[&str]) -> Call {
    Call::patch(format!("{BINDING}{APPLY}")).body(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": reader_meta(owners),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
            "name": "infermesh-mesh-config-reader",
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
            "name": "system:serviceaccounts:ns",
        }],
    }))
}

pub(super) fn front_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "llm", "namespace": "ns",
            "labels": {
                "app.kubernetes.io/managed-by": "infermesh-operator",
                "infermesh.io/modelservice": "llm",
            },
            "ownerReferences": [{
                "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService", "name": "llm",
                "uid": "uid-llm", "controller": true,
            }],
        },
        "spec": {
            "selector": {"infermesh.io/modelservice": "llm", "infermesh.io/sidecar": "injected"},
            "ports": [{"name": "http", "port": 80, "targetPort": 15006, "protocol": "TCP"}],
        },
    })
}

/// An object as the API server answers a read of it: `obj` with a uid.
pub(super) fn found(mut obj: Value, uid: &str) -> Value {
    obj["metadata"]["uid"] = json!(uid);
    obj
}

/// A read of `uri` answered "not found".
pub(super) fn absent(uri: &str) -> Call {
    Call::get(uri).fail(404, "NotFound")
}

/// The reads before a publication of the namespace's ConfigMap, Role, RoleBinding and mesh key
/// Secret, answered "not found".
pub(super) fn published_absent() -> [Call; 4] {
    [absent(CM), absent(ROLE), absent(BINDING), absent(KEY)]
}

/// The same reads answered with the objects the operator made (uids `uid-cm`, `uid-role`,
/// `uid-binding`, `uid-key`; the key minted now, so a publication keeps it).
pub(super) fn published_ours() -> [Call; 4] {
    let meta = |name: &str, uid: &str| json!({"name": name, "namespace": "ns", "uid": uid, "labels": managed()});
    [
        Call::get(CM).reply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": meta("infermesh-mesh-config", "uid-cm"),
        })),
        Call::get(ROLE).reply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta("infermesh-mesh-config-reader", "uid-role"),
        })),
        Call::get(BINDING).reply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta("infermesh-mesh-config-reader", "uid-binding"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                "name": "infermesh-mesh-config-reader",
            },
        })),
        Call::get(KEY).reply(ours_key()),
    ]
}

/// The mesh key Secret as the operator made it, with uid `uid-key`: minted now, key bytes 7.
pub(super) fn ours_key() -> Value {
    use base64::Engine as _;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": "infermesh-mesh-key", "namespace": "ns", "uid": "uid-key", "labels": managed(),
            "annotations": {"infermesh.io/rotated-at": now},
        },
        "data": {"current": base64::engine::general_purpose::STANDARD.encode([7u8; 32])},
    })
}

/// The mesh key Secret's apply when [`ours_key`] was found: the same key kept.
pub(super) fn keep_key() -> Call {
    Call::patch(format!("{KEY}{APPLY}")).includes(json!({
        "data": {"current": ours_key()["data"]["current"]},
    }))
}

/// The deletes of the namespace's published objects read by [`published_ours`], in order.
pub(super) fn delete_published() -> [Call; 4] {
    [
        delete_ours(CM, "uid-cm"),
        delete_ours(BINDING, "uid-binding"),
        delete_ours(ROLE, "uid-role"),
        delete_ours(KEY, "uid-key"),
    ]
}

/// The read of `llm`'s Service, answered with the one the operator made.
pub(super) fn get_service() -> Call {
    Call::get(SVC).reply(found(front_service(), "uid-svc"))
}

/// A Service `llm` a user made: their selector and port, no label or owner of ours.
pub(super) fn user_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "llm", "namespace": "ns", "uid": "uid-user-svc"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        },
    })
}

/// A delete of `uri`, in the background, only if the object there still has uid `uid`.
pub(super) fn delete_ours(uri: &str, uid: &str) -> Call {
    Call::delete(format!("{uri}?")).includes(json!({
        "propagationPolicy": "Background", "preconditions": {"uid": uid},
    }))
}

pub(super) fn apply_service() -> Call {
    Call::patch(format!("{SVC}{APPLY}")).body(front_service())
}

/// The status apply of `ms`, Ready with both variants served at these weights; answered with
/// `ms` carrying the status, as the API server would.
pub(super) fn write_status(ms: &ModelService, stable: i32, generation: i64) -> Call {
    let weights = format!("stable={stable},canary={}", 100 - stable);
    let mut reply = serde_json::to_value(ms).unwrap();
    Call::patch(format!("{MS}/status{APPLY}"))
        .includes(json!({
            "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
            "status": {
                "observedGeneration": generation,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Ready",
                     "observedGeneration": generation},
                    {"type": "ConfigGenerated", "status": "True", "reason": "Published"},
                    {"type": "EndpointsAvailable", "status": "True", "reason": "EndpointsReady",
                     "message": "2 ready endpoint(s) across 2 variant(s)"},
                    {"type": "SidecarsInjected", "status": "True", "reason": "AllMeshed"},
                ],
                "variants": [
                    {"name": "stable", "weight": stable, "readyEndpoints": 1},
                    {"name": "canary", "weight": 100 - stable, "readyEndpoints": 1},
                ],
                "variantWeights": weights,
                "readyEndpoints": 2,
                "sidecarsTotal": 2,
                "sidecarsOnRevision": 2,
            },
        }))
        .reply_from(move |body| {
            reply["status"] = body["status"].clone();
            reply
        })
}

/// A new Event. `Reconcile` stands for the reconciler's actions, `Reconcile-` and a hash of the
/// note (each distinct note its own series).
pub(super) fn event(reason: &str, type_: &str, action: &str) -> Call {
    let expected = action.to_string();
    Call::post(EVENTS)
        .check(move |body| {
            let action = body["action"].as_str().expect("an action");
            if expected == "Reconcile" {
                let note = body["note"].as_str().expect("a note");
                let hash = infermesh_crds::mesh::fnv1a(note.as_bytes()) as u32;
                assert_eq!(action, format!("Reconcile-{hash:08x}"), "{note}");
            } else {
                assert_eq!(action, expected);
            }
        })
        .includes(json!({
            "reason": reason, "type": type_,
            "reportingController": "infermesh-operator", "reportingInstance": "test",
            "regarding": {
                "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
                "name": "llm", "namespace": "ns", "uid": "uid-llm",
            },
        }))
}

pub(super) fn add_finalizer(ms: &ModelService) -> Call {
    Call::patch(format!("{MS}?"))
        .body(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]))
        .reply(serde_json::to_value(finalized(ms.clone())).unwrap())
}

pub(super) fn remove_finalizer(ms: &ModelService) -> Call {
    let mut gone = ms.clone();
    gone.metadata.finalizers = None;
    Call::patch(format!("{MS}?"))
        .body(json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]))
        .reply(serde_json::to_value(gone).unwrap())
}

/// `ms` as the next reconcile sees it: with the status the API server took from `body`.
pub(super) fn with_status_from(mut ms: ModelService, body: &Value) -> ModelService {
    let status: ModelServiceStatus =
        serde_json::from_value(body["status"].clone()).expect("a ModelService status");
    ms.status = Some(status);
    ms
}

/// The namespace revision a status apply reports.
pub(super) fn revision(status_body: &Value) -> String {
    status_body["status"]["revision"]
        .as_str()
        .expect("a revision")
        .to_string()
}

pub(super) fn config_map_revision(body: &Value) -> String {
    body["metadata"]["annotations"]["infermesh.io/revision"]
        .as_str()
        .expect("a revision annotation")
        .to_string()
}
