//! `reconcile` against a scripted API server: for each scenario, every request the reconciler
//! sends — method, path with query, and body — in order, and what the API server answers.
//!
//! The caches are filled by hand (a ready pod store, the ModelServices of the namespace), so a
//! scenario is one namespace `ns` with a ModelService `llm` whose variants select pods by
//! `version`.

use std::sync::Arc;

use infermesh_crds::ModelService;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::runtime::{
    controller::Action,
    events::{Recorder, Reporter},
    reflector::{self, store::Writer},
    watcher,
};
use serde_json::json;

use super::{Context, FINALIZER, PROPAGATION_RECHECK, RESYNC, error_policy, reconcile};
use crate::{
    error::Error,
    fixtures::{
        ScriptedSidecars,
        api_server::{Call, Handle, mock_client, serve},
        model_service, pod, spec_with,
    },
};

mod calls;
mod clashes;
mod enforcement;
mod isolation;
use calls::*;

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
        let (ctx, handle, _) = Self::test_with_writer(pods, services);
        (ctx, handle)
    }

    /// [`Context::test`], with the writer of the ModelService cache, for a scenario in which
    /// another ModelService changes.
    fn test_with_writer(
        pods: Vec<Pod>,
        services: Vec<ModelService>,
    ) -> (Arc<Self>, Handle, Writer<ModelService>) {
        Self::test_with_sidecars(pods, services, Arc::default())
    }

    /// [`Context::test_with_writer`], with sidecars the scenario scripts.
    fn test_with_sidecars(
        pods: Vec<Pod>,
        services: Vec<ModelService>,
        sidecars: Arc<ScriptedSidecars>,
    ) -> (Arc<Self>, Handle, Writer<ModelService>) {
        let (client, handle) = mock_client();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "infermesh-operator".into(),
                instance: Some("test".into()),
            },
        );
        let (pods, _) = store(pods);
        let (services, writer) = store(services);
        // Nothing runs the controller's queue: wake-ups go nowhere.
        let (wake, _) = futures::channel::mpsc::unbounded();
        let ctx = Context::new(
            client,
            recorder,
            Arc::default(),
            pods,
            services,
            wake,
            sidecars,
        );
        (Arc::new(ctx), handle, writer)
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
        [
            vec![add_finalizer(&ms)],
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm"], 90),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                absent(SVC),
                apply_service(),
                write_status(&finalized(ms.clone()), 90, 1),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                event("Ready", "Normal", "Reconcile"),
            ],
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
    let revision = revision(&bodies[11]);
    assert_eq!(config_map_revision(&bodies[6]), revision);
    assert_eq!(
        bodies[11]["status"]["configPublishedAt"],
        bodies[11]["status"]["conditions"][1]["lastTransitionTime"],
        "the entry was published by this reconcile"
    );
    Created {
        ms: with_status_from(finalized(ms), &bodies[11]),
        handle,
        revision,
        regenerated: bodies[12]["metadata"]["name"].as_str().unwrap().to_string(),
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
    // The config was written under a minute ago and is unchanged, the status is what it was, and
    // no transition happened: only the Service is read, found ours, and applied again
    // (idempotent).
    let script = serve(handle, [vec![get_service(), apply_service()]]);
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
        [
            published_ours().into(),
            vec![
                keep_key(),
                apply_config_map(&["llm"], 50),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                get_service(),
                apply_service(),
                write_status(&ms, 50, 2),
                // A new event, not a count on the first one's series (which would keep the first
                // revision's note): its note names the new revision and weights.
                event("ConfigRegenerated", "Normal", "Reconcile").check(|body| {
                    let note = body["note"].as_str().unwrap();
                    assert!(note.contains("stable=50,canary=50"), "{note}");
                }),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (_, bodies) = script.finish().await;
    let after = revision(&bodies[10]);
    assert_ne!(after, before, "a new revision carries the new weights");
    assert_eq!(config_map_revision(&bodies[5]), after);
    let note = bodies[11]["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("revision {after} published")),
        "{note}"
    );
    assert_ne!(bodies[11]["metadata"]["name"], json!(regenerated));
}

#[tokio::test]
async fn deleting_the_last_model_service_removes_what_was_published() {
    let ms = deleting(llm(90));
    let (ctx, handle) = Context::test(pods(), vec![ms.clone()]);
    let script = serve(
        handle,
        [
            published_ours().into(),
            delete_published().into(),
            vec![
                get_service(),
                delete_ours(SVC, "uid-svc"),
                event("Cleanup", "Normal", "Delete"),
                remove_finalizer(&ms),
            ],
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
        [
            published_absent().into(),
            vec![
                absent(SVC),
                event("Cleanup", "Normal", "Delete"),
                remove_finalizer(&ms),
            ],
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
        [
            published_absent().into(),
            vec![
                // The first write, the key's, is refused.
                Call::patch(format!("{KEY}{APPLY}"))
                    .includes(json!({"metadata": {"ownerReferences": [shared_owner("other")]}}))
                    .fail(403, "Forbidden"),
                absent(SVC),
                event("Cleanup", "Normal", "Delete"),
                remove_finalizer(&ms),
            ],
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
        [
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm"], 90).fail(403, "Forbidden"),
            ],
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
        [
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm"], 90),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                absent(SVC),
                apply_service(),
                write_status(&ms, 90, 1),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                event("Ready", "Normal", "Reconcile"),
            ],
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
        [
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm"], 90),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                absent(SVC),
                apply_service().fail(409, "Conflict"),
            ],
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
        [vec![
            absent(SVC),
            apply_service(),
            write_status(&ms, 90, 1),
            event("ConfigRegenerated", "Normal", "Reconcile"),
            event("Ready", "Normal", "Reconcile"),
        ]],
    );
    reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    script.finish().await;
}
