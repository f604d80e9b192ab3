//! `reconcile` against a scripted API server: for each scenario, every request the reconciler
//! sends — method, path with query, and body — in order, and what the API server answers.
//!
//! The caches are filled by hand (a ready pod store, the ModelServices of the namespace), so a
//! scenario is one namespace `ns` with a ModelService `llm` whose variants select pods by
//! `version`.

use std::sync::Arc;

use infermesh_crds::{ModelService, ModelServiceStatus, mesh::MeshConfig};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::runtime::{
    controller::Action,
    events::{Recorder, Reporter},
    reflector::{self, store::Writer},
    watcher,
};
use serde_json::{Value, json};

use super::{Context, FINALIZER, RESYNC, error_policy, reconcile};
use crate::{
    error::Error,
    fixtures::{
        api_server::{Call, Handle, mock_client, serve},
        model_service, pod, spec_with,
    },
};

const MS: &str = "/apis/infermesh.io/v1alpha1/namespaces/ns/modelservices/llm";
const CM: &str = "/api/v1/namespaces/ns/configmaps/infermesh-mesh-config";
const ROLE: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/infermesh-mesh-config-reader";
const BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/infermesh-mesh-config-reader";
const SVC: &str = "/api/v1/namespaces/ns/services/llm";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events?";
/// The query of a forced server-side apply by the operator's field manager.
const APPLY: &str = "?&force=true&fieldManager=infermesh-operator";

fn store<K>(objects: Vec<K>) -> (reflector::Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (store, writer)
}

impl Context {
    /// A context over a scripted API server, with synced caches holding `pods` and `services`.
    fn test(pods: Vec<Pod>, services: Vec<ModelService>) -> (Arc<Self>, Handle) {
        let (client, handle) = mock_client();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "infermesh-operator".into(),
                instance: Some("test".into()),
            },
        );
        let (pods, _) = store(pods);
        let (services, _) = store(services);
        let ctx = Context::new(client, recorder, Arc::default(), pods, services);
        (Arc::new(ctx), handle)
    }
}

/// `llm`: stable (weight `stable`, pods `version=v1`) and canary (the rest, `version=v2`).
fn llm(stable: i32) -> ModelService {
    model_service(
        "llm",
        "ns",
        spec_with(&[("stable", stable, "v1"), ("canary", 100 - stable, "v2")]),
    )
}

fn finalized(mut ms: ModelService) -> ModelService {
    ms.metadata.finalizers = Some(vec![FINALIZER.into()]);
    ms
}

fn deleting(mut ms: ModelService) -> ModelService {
    ms.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    finalized(ms)
}

/// One ready meshed pod per variant.
fn pods() -> Vec<Pod> {
    vec![
        pod("llm-v1", "ns", "v1", Some("198.18.64.5"), true, true),
        pod("llm-v2", "ns", "v2", Some("198.18.64.6"), true, true),
    ]
}

fn managed() -> Value {
    json!({"app.kubernetes.io/managed-by": "infermesh-operator"})
}

/// The owner reference every ModelService `name` puts on the namespace-wide objects.
fn shared_owner(name: &str) -> Value {
    json!({
        "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
        "name": name, "uid": format!("uid-{name}"),
    })
}

fn reader_meta(owners: &[&str]) -> Value {
    json!({
        "name": "infermesh-mesh-config-reader", "namespace": "ns", "labels": managed(),
        "ownerReferences": owners.iter().map(|o| shared_owner(o)).collect::<Vec<_>>(),
    })
}

/// The mesh ConfigMap's apply: owned by `owners`, `llm`'s entry with these weights and one
/// endpoint per variant; the revision in the annotation is the one in `mesh.json`.
fn apply_config_map(owners: &[&'static str], stable: u32) -> Call {
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
            assert!(
                crate::fixtures::api_server::includes(&entry, &expected),
                "{entry:#}"
            );
        })
}

fn apply_role(owners: &[&str]) -> Call {
    Call::patch(format!("{ROLE}{APPLY}")).body(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": reader_meta(owners),
        "rules": [{
            "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["infermesh-mesh-config"], "verbs": ["get", "list", "watch"],
        }],
    }))
}

fn apply_binding(owners: &[&str]) -> Call {
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

fn front_service() -> Value {
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
            "selector": {"infermesh.io/modelservice": "llm"},
            "ports": [{"name": "http", "port": 80, "targetPort": 15006, "protocol": "TCP"}],
        },
    })
}

fn apply_service() -> Call {
    Call::patch(format!("{SVC}{APPLY}")).body(front_service())
}

/// The status apply of `ms`, Ready with both variants served at these weights; answered with
/// `ms` carrying the status, as the API server would.
fn write_status(ms: &ModelService, stable: i32, generation: i64) -> Call {
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
                ],
                "variants": [
                    {"name": "stable", "weight": stable, "readyEndpoints": 1},
                    {"name": "canary", "weight": 100 - stable, "readyEndpoints": 1},
                ],
                "variantWeights": weights,
                "readyEndpoints": 2,
            },
        }))
        .reply_from(move |body| {
            reply["status"] = body["status"].clone();
            reply
        })
}

fn event(reason: &str, type_: &str, action: &str) -> Call {
    Call::post(EVENTS).includes(json!({
        "reason": reason, "type": type_, "action": action,
        "reportingController": "infermesh-operator", "reportingInstance": "test",
        "regarding": {
            "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
            "name": "llm", "namespace": "ns", "uid": "uid-llm",
        },
    }))
}

fn add_finalizer(ms: &ModelService) -> Call {
    Call::patch(format!("{MS}?"))
        .body(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]))
        .reply(serde_json::to_value(finalized(ms.clone())).unwrap())
}

fn remove_finalizer(ms: &ModelService) -> Call {
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
fn with_status_from(mut ms: ModelService, body: &Value) -> ModelService {
    let status: ModelServiceStatus =
        serde_json::from_value(body["status"].clone()).expect("a ModelService status");
    ms.status = Some(status);
    ms
}

/// The namespace revision a status apply reports.
fn revision(status_body: &Value) -> String {
    status_body["status"]["revision"]
        .as_str()
        .expect("a revision")
        .to_string()
}

fn config_map_revision(body: &Value) -> String {
    body["metadata"]["annotations"]["infermesh.io/revision"]
        .as_str()
        .expect("a revision annotation")
        .to_string()
}

/// What the create scenario leaves behind.
struct Created {
    /// The ModelService as the API server then holds it: finalized, with its status.
    ms: ModelService,
    handle: Handle,
    /// The namespace's config revision.
    revision: String,
    /// The name of the `ConfigRegenerated` event, which a later one with that reason continues.
    regenerated: String,
}

/// Runs the create scenario on `ctx`.
async fn created(ctx: &Arc<Context>, handle: Handle) -> Created {
    let ms = llm(90);
    let script = serve(
        handle,
        vec![
            add_finalizer(&ms),
            Call::get(CM).fail(404, "NotFound"),
            apply_config_map(&["llm"], 90),
            apply_role(&["llm"]),
            apply_binding(&["llm"]),
            apply_service(),
            write_status(&finalized(ms.clone()), 90, 1),
            event("ConfigRegenerated", "Normal", "Reconcile"),
            event("Ready", "Normal", "Reconcile"),
        ],
    );
    let first = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    assert_eq!(
        first,
        Action::await_change(),
        "the finalizer is added first"
    );
    let second = reconcile(Arc::new(finalized(ms.clone())), ctx.clone())
        .await
        .unwrap();
    assert_eq!(second, Action::requeue(RESYNC));
    let (handle, bodies) = script.finish().await;
    let revision = revision(&bodies[6]);
    assert_eq!(config_map_revision(&bodies[2]), revision);
    assert_eq!(
        bodies[6]["status"]["configPublishedAt"],
        bodies[6]["status"]["conditions"][1]["lastTransitionTime"],
        "the entry was published by this reconcile"
    );
    Created {
        ms: with_status_from(finalized(ms), &bodies[6]),
        handle,
        revision,
        regenerated: bodies[7]["metadata"]["name"].as_str().unwrap().to_string(),
    }
}

#[tokio::test]
async fn create_adds_the_finalizer_then_publishes_the_namespace_and_reports() {
    let (ctx, handle) = Context::test(pods(), vec![]);
    created(&ctx, handle).await;
}

#[tokio::test]
async fn an_unchanged_re_reconcile_rewrites_nothing_but_the_service() {
    let (ctx, handle) = Context::test(pods(), vec![]);
    let Created { ms, handle, .. } = created(&ctx, handle).await;
    let before = ms.status.clone();
    // The config was written under a minute ago and is unchanged, and no transition happened: the
    // Service is applied again (idempotent), and so is the status, with the same content — the
    // entry's publish time is kept in memory below the second, so it never equals the status
    // read back, whose times the API holds to the second.
    let script = serve(
        handle,
        vec![
            apply_service(),
            write_status(&ms, 90, 1).check(move |body| {
                let again: ModelServiceStatus =
                    serde_json::from_value(body["status"].clone()).unwrap();
                assert_eq!(Some(again), before, "the same status");
            }),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    script.finish().await;
}

#[tokio::test]
async fn a_weight_change_republishes_restamps_and_tells() {
    let (ctx, handle) = Context::test(pods(), vec![]);
    let Created {
        mut ms,
        handle,
        revision: before,
        regenerated,
    } = created(&ctx, handle).await;
    ms.spec = llm(50).spec;
    ms.metadata.generation = Some(2);
    let script = serve(
        handle,
        vec![
            apply_config_map(&["llm"], 50),
            apply_role(&["llm"]),
            apply_binding(&["llm"]),
            apply_service(),
            write_status(&ms, 50, 2),
            // The recorder continues its earlier event of the same reason as a series: the
            // patch counts it again and keeps the first occurrence's note.
            Call::patch(format!(
                "/apis/events.k8s.io/v1/namespaces/ns/events/{regenerated}?"
            ))
            .includes(json!({
                "reason": "ConfigRegenerated", "type": "Normal", "series": {"count": 2},
                "regarding": {"kind": "ModelService", "name": "llm", "uid": "uid-llm"},
            })),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (_, bodies) = script.finish().await;
    let after = revision(&bodies[4]);
    assert_ne!(after, before, "a new revision carries the new weights");
    assert_eq!(config_map_revision(&bodies[0]), after);
}

#[tokio::test]
async fn deleting_the_last_model_service_removes_what_was_published() {
    let ms = deleting(llm(90));
    let (ctx, handle) = Context::test(pods(), vec![ms.clone()]);
    let svc = front_service();
    let script = serve(
        handle,
        vec![
            Call::delete(format!("{CM}?")).includes(json!({"propagationPolicy": "Background"})),
            Call::delete(format!("{BINDING}?"))
                .includes(json!({"propagationPolicy": "Background"})),
            Call::delete(format!("{ROLE}?")).includes(json!({"propagationPolicy": "Background"})),
            Call::get(SVC).reply(svc),
            Call::delete(format!("{SVC}?")).includes(json!({"propagationPolicy": "Background"})),
            event("Cleanup", "Normal", "Delete"),
            remove_finalizer(&ms),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    script.finish().await;
}

#[tokio::test]
async fn cleanup_takes_objects_already_gone_as_deleted() {
    let ms = deleting(llm(90));
    let (ctx, handle) = Context::test(pods(), vec![ms.clone()]);
    let script = serve(
        handle,
        vec![
            Call::delete(format!("{CM}?")).fail(404, "NotFound"),
            Call::delete(format!("{BINDING}?")).fail(404, "NotFound"),
            Call::delete(format!("{ROLE}?")).fail(404, "NotFound"),
            Call::get(SVC).fail(404, "NotFound"),
            event("Cleanup", "Normal", "Delete"),
            remove_finalizer(&ms),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    script.finish().await;
}

#[tokio::test]
async fn cleanup_in_a_terminating_namespace_lets_the_model_service_go() {
    let ms = deleting(llm(90));
    let other = model_service("other", "ns", spec_with(&[("stable", 100, "v1")]));
    let (ctx, handle) = Context::test(pods(), vec![ms.clone(), other]);
    // `other` stays, so the config is rewritten without `llm`; the namespace is being deleted,
    // so the API server forbids the write, and the config goes with the namespace anyway.
    let script = serve(
        handle,
        vec![
            Call::get(CM).fail(404, "NotFound"),
            Call::patch(format!("{CM}{APPLY}"))
                .includes(json!({"metadata": {"ownerReferences": [shared_owner("other")]}}))
                .fail(403, "Forbidden"),
            Call::get(SVC).fail(404, "NotFound"),
            event("Cleanup", "Normal", "Delete"),
            remove_finalizer(&ms),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    script.finish().await;
}

#[tokio::test]
async fn a_forbidden_publication_fails_the_reconcile_and_is_retried_whole() {
    let ms = finalized(llm(90));
    let (ctx, handle) = Context::test(pods(), vec![]);
    let script = serve(
        handle,
        vec![
            Call::get(CM).fail(404, "NotFound"),
            apply_config_map(&["llm"], 90).fail(403, "Forbidden"),
        ],
    );
    let err = reconcile(Arc::new(ms.clone()), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "kube_api");
    assert!(
        err.to_string().contains("apply mesh config ConfigMap"),
        "{err}"
    );
    let handle = script.finish().await.0;
    // Nothing was published: the retry reads the cluster again and writes everything.
    let script = serve(
        handle,
        vec![
            Call::get(CM).fail(404, "NotFound"),
            apply_config_map(&["llm"], 90),
            apply_role(&["llm"]),
            apply_binding(&["llm"]),
            apply_service(),
            write_status(&ms, 90, 1),
            event("ConfigRegenerated", "Normal", "Reconcile"),
            event("Ready", "Normal", "Reconcile"),
        ],
    );
    reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    script.finish().await;
}

#[tokio::test]
async fn a_conflict_is_counted_requeued_and_the_retry_writes_only_what_is_left() {
    let ms = finalized(llm(90));
    let (ctx, handle) = Context::test(pods(), vec![]);
    let script = serve(
        handle,
        vec![
            Call::get(CM).fail(404, "NotFound"),
            apply_config_map(&["llm"], 90),
            apply_role(&["llm"]),
            apply_binding(&["llm"]),
            apply_service().fail(409, "Conflict"),
        ],
    );
    let err = reconcile(Arc::new(ms.clone()), ctx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Finalizer(_)), "{err:?}");
    assert_eq!(err.reason(), "conflict");
    let action = error_policy(Arc::new(ms.clone()), &err, ctx.clone());
    assert_ne!(action, Action::requeue(RESYNC), "retried with backoff");
    assert!(
        ctx.metrics
            .render()
            .contains("infermesh_operator_reconcile_failures_total{reason=\"conflict\"} 1")
    );
    let handle = script.finish().await.0;
    // The namespace's config was written and is unchanged: the retry picks up from the Service.
    let script = serve(
        handle,
        vec![
            apply_service(),
            write_status(&ms, 90, 1),
            event("ConfigRegenerated", "Normal", "Reconcile"),
            event("Ready", "Normal", "Reconcile"),
        ],
    );
    reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    script.finish().await;
}
