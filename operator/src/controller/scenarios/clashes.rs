//! Scenarios of names held by objects the operator did not create: it reads before it writes or
//! deletes, leaves such an object untouched, and reports the clash on the ModelService's status
//! and in a Warning event.

use std::sync::Arc;

use infermesh_crds::ModelService;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Context, RESYNC, calls::*, deleting, finalized, llm, pods, reconcile};
use crate::fixtures::{
    api_server::{Call, serve},
    model_service, pod, spec_with,
};

/// The status apply of `ms` with a name clash: Ready=False `NameClash` saying what to rename,
/// ConfigGenerated as `config` says; answered with `ms` carrying the status.
fn clash_status(ms: &ModelService, config: &str, what: &'static str) -> Call {
    let mut reply = serde_json::to_value(ms).unwrap();
    Call::patch(format!("{MS}/status{APPLY}"))
        .includes(json!({
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "NameClash"},
                    {"type": "ConfigGenerated", "status": config},
                    {"type": "EndpointsAvailable", "status": "True"},
                    {"type": "SidecarsInjected", "status": "True"},
                ],
            },
        }))
        .check(move |body| {
            let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
            assert!(message.contains(what), "{message}");
        })
        .reply_from(move |body| {
            reply["status"] = body["status"].clone();
            reply
        })
}

/// The Warning event of a clash, its note saying what to rename.
fn clash_event(what: &'static str) -> Call {
    event("NameClash", "Warning", "Reconcile").check(move |body| {
        let note = body["note"].as_str().unwrap();
        assert!(note.contains(what), "{note}");
    })
}

#[tokio::test]
async fn a_service_it_did_not_create_is_a_name_clash_never_applied_nor_deleted() {
    let (ctx, handle) = Context::test(pods(), vec![]);
    let ms = finalized(llm(90));
    // The namespace's config is published (llm's entry is sound); the user's Service `llm` is
    // read and left as it is: no apply of the Service.
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm"], 90),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                Call::get(SVC).reply(user_service()),
                clash_status(
                    &ms,
                    "True",
                    "rename the ModelService, or rename or delete the Service llm",
                ),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                clash_event("Service llm already exists"),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (handle, bodies) = script.finish().await;

    // Deleting the ModelService removes what the operator published, not the user's Service.
    let ms = deleting(with_status_from(ms, &bodies[9]));
    let script = serve(
        handle,
        [
            published_ours().into(),
            delete_published().into(),
            vec![
                Call::get(SVC).reply(user_service()),
                event("Cleanup", "Normal", "Delete").check(|body: &Value| {
                    let note = body["note"].as_str().unwrap();
                    assert!(note.contains("Service llm was left in place"), "{note}");
                }),
                remove_finalizer(&ms),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    script.finish().await;
}

/// A ConfigMap `infermesh-mesh-config` a user made.
fn user_config_map() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "infermesh-mesh-config", "namespace": "ns", "uid": "uid-user-cm"},
        "data": {"mesh.json": "the user's own"},
    })
}

#[tokio::test]
async fn a_config_map_it_did_not_create_is_never_written_and_every_model_service_reports_it() {
    let other = finalized(model_service(
        "other",
        "ns",
        spec_with(&[("stable", 100, "v3")]),
    ));
    let ms = finalized(llm(90));
    // `other` has pods of its own: no overlap with `llm`.
    let mut all = pods();
    all.push(pod("other-v3", "ns", "v3", Some("198.18.64.7"), true, true));
    let (ctx, handle) = Context::test(all, vec![ms.clone(), other.clone()]);
    let user_cm = || Call::get(CM).reply(user_config_map());
    let other_ms = "/apis/infermesh.io/v1alpha1/namespaces/ns/modelservices/other";
    let other_svc = "/api/v1/namespaces/ns/services/other";
    // Neither reconcile writes the ConfigMap, the Role or the RoleBinding; each ModelService
    // still gets its own Service and reports the clash.
    let script = serve(
        handle,
        [vec![
            user_cm(),
            absent(ROLE),
            absent(BINDING),
            absent(KEY),
            absent(SVC),
            apply_service(),
            clash_status(&ms, "False", "rename or delete that ConfigMap"),
            clash_event("ConfigMap infermesh-mesh-config already exists"),
            user_cm(),
            absent(ROLE),
            absent(BINDING),
            absent(KEY),
            absent(other_svc),
            Call::patch(format!("{other_svc}{APPLY}"))
                .includes(json!({"metadata": {"name": "other"}})),
            Call::patch(format!("{other_ms}/status{APPLY}"))
                .includes(json!({
                    "status": {"conditions": [
                        {"type": "Ready", "status": "False", "reason": "NameClash"},
                        {"type": "ConfigGenerated", "status": "False", "reason": "NameClash"},
                        {"type": "EndpointsAvailable", "status": "True"},
                        {"type": "SidecarsInjected", "status": "True"},
                    ]},
                }))
                .reply(serde_json::to_value(&other).unwrap()),
            Call::post(EVENTS).includes(json!({
                "reason": "NameClash", "type": "Warning",
                "regarding": {"kind": "ModelService", "name": "other"},
            })),
        ]],
    );
    for m in [&ms, &other] {
        let action = reconcile(Arc::new(m.clone()), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
    }
    let (handle, bodies) = script.finish().await;
    let status = &bodies[6]["status"];
    assert!(status["revision"].is_null(), "nothing was published");

    // The user removed their ConfigMap: the next reconcile publishes the namespace's config.
    let ms = with_status_from(ms, &bodies[6]);
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                apply_key(),
                apply_config_map(&["llm", "other"], 90),
                apply_role(&["llm", "other"]),
                apply_binding(&["llm", "other"]),
                get_service(),
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
