//! Scenarios of names held by objects the operator did not create: it reads before it writes or
//! deletes, leaves such an object untouched, and reports the clash on the ModelService's status
//! and in a Warning event.

use std::sync::Arc;

use infermesh_crds::ModelService;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Context, RESYNC, calls::*, deleting, finalized, llm, pods, reconcile};
use crate::fixtures::api_server::{Call, serve};

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
        vec![
            absent(CM),
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
    );
    let action = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (handle, bodies) = script.finish().await;

    // Deleting the ModelService removes what the operator published, not the user's Service.
    let ms = deleting(with_status_from(ms, &bodies[5]));
    let script = serve(
        handle,
        vec![
            Call::delete(format!("{CM}?")),
            Call::delete(format!("{BINDING}?")),
            Call::delete(format!("{ROLE}?")),
            Call::get(SVC).reply(user_service()),
            event("Cleanup", "Normal", "Delete").check(|body: &Value| {
                let note = body["note"].as_str().unwrap();
                assert!(note.contains("Service llm was left in place"), "{note}");
            }),
            remove_finalizer(&ms),
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    script.finish().await;
}
