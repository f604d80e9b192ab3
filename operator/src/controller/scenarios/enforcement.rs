//! Scenarios of what the sidecars enforce and which pods have one: `Ready` waits for every serving
//! sidecar to report the revision (re-checked after a few seconds, not at the next resync), and
//! selected pods without the sidecar are listed, warned about once, and stay direct endpoints of
//! the mesh config while the Service leaves them out.

use std::sync::Arc;

use infermesh_crds::{INJECT_ANNOTATION, mesh::MeshConfig};
use kube::{ResourceExt, runtime::controller::Action};
use serde_json::{Value, json};

use super::{
    Context, PROPAGATION_RECHECK, RESYNC, ScriptedSidecars, calls::*, finalized, llm, pod, pods,
    reconcile, serve,
};
use crate::fixtures::api_server::Call;

/// The status apply of `llm`, which must include `status`; answered with `ms` carrying it.
fn status_including(ms: &infermesh_crds::ModelService, status: Value) -> Call {
    let mut reply = serde_json::to_value(ms).unwrap();
    Call::patch(format!("{MS}/status{APPLY}"))
        .includes(json!({ "status": status }))
        .reply_from(move |body| {
            reply["status"] = body["status"].clone();
            reply
        })
}

#[tokio::test]
async fn ready_waits_until_every_serving_sidecar_reports_the_revision() {
    let sidecars = Arc::new(ScriptedSidecars::default());
    sidecars.runs("llm-v2", Some("00000000000000ff"));
    let (ctx, handle, _) = Context::test_with_sidecars(pods(), vec![], sidecars.clone());
    let ms = finalized(llm(90));
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
                status_including(
                    &ms,
                    json!({
                        "conditions": [
                            {"type": "Ready", "status": "False", "reason": "Propagating"},
                            {"type": "ConfigGenerated", "status": "True"},
                            {"type": "EndpointsAvailable", "status": "True"},
                            {"type": "SidecarsInjected", "status": "True"},
                        ],
                        "sidecarsTotal": 2,
                        "sidecarsOnRevision": 1,
                        "laggingSidecars": [{"pod": "llm-v2", "revision": "00000000000000ff"}],
                    }),
                ),
                // The revision is announced; Ready is not (yet).
                event("ConfigRegenerated", "Normal", "Reconcile"),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(PROPAGATION_RECHECK),
        "a lagging sidecar is asked again in seconds"
    );
    let (handle, bodies) = script.finish().await;
    let revision = revision(&bodies[10]);
    let message = bodies[10]["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert_eq!(
        message,
        format!(
            "1 of 2 sidecar(s) do not enforce mesh config revision {revision} yet: llm-v2 (runs \
             00000000000000ff)"
        )
    );
    let ms = with_status_from(ms, &bodies[10]);

    // The sidecar caught up: the config is unchanged (no write), the status turns Ready and says
    // by how many sidecars, and the Ready event names the revision.
    sidecars.all_in_sync();
    let script = serve(
        handle,
        [vec![
            get_service(),
            apply_service(),
            status_including(
                &ms,
                json!({
                    "conditions": [
                        {"type": "Ready", "status": "True", "reason": "Ready"},
                        {"type": "ConfigGenerated", "status": "True"},
                        {"type": "EndpointsAvailable", "status": "True"},
                        {"type": "SidecarsInjected", "status": "True"},
                    ],
                    "sidecarsTotal": 2,
                    "sidecarsOnRevision": 2,
                }),
            ),
            event("Ready", "Normal", "Reconcile"),
        ]],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (_, bodies) = script.finish().await;
    assert!(bodies[2]["status"].get("laggingSidecars").is_none());
    let note = bodies[3]["note"].as_str().unwrap();
    assert!(note.contains(&format!("revision {revision}")), "{note}");
    assert!(note.contains("enforced by 2 sidecar(s)"), "{note}");
}

#[tokio::test]
async fn a_sidecar_that_does_not_answer_counts_as_lagging() {
    let sidecars = Arc::new(ScriptedSidecars::default());
    sidecars.runs("llm-v1", None);
    let (ctx, handle, _) = Context::test_with_sidecars(pods(), vec![], sidecars);
    let ms = finalized(llm(90));
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
                status_including(
                    &ms,
                    json!({"laggingSidecars": [{"pod": "llm-v1", "revision": "unknown"}]}),
                ),
                event("ConfigRegenerated", "Normal", "Reconcile"),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(PROPAGATION_RECHECK));
    let (_, bodies) = script.finish().await;
    let message = bodies[10]["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.ends_with("llm-v1 (admin port did not name a revision)"),
        "{message}"
    );
}

#[tokio::test]
async fn pods_without_the_sidecar_are_listed_warned_once_and_left_to_direct_mesh_traffic() {
    let mut all = pods();
    // Created while the webhook was down: Ready, with an IP, no sidecar.
    all.push(pod(
        "llm-v1-plain",
        "ns",
        "v1",
        Some("198.18.64.9"),
        true,
        false,
    ));
    let mut opted_out = pod("llm-v2-own", "ns", "v2", None, false, false);
    opted_out
        .annotations_mut()
        .insert(INJECT_ANNOTATION.into(), "disabled".into());
    all.push(opted_out);
    let (ctx, handle) = Context::test(all, vec![]);
    let ms = finalized(llm(90));
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                // The unmeshed pod stays a direct endpoint of the mesh config, on its model port.
                apply_key(),
                Call::patch(format!("{CM}{APPLY}")).check(|body| {
                    let json = body["data"]["mesh.json"].as_str().unwrap();
                    let config: MeshConfig = serde_json::from_str(json).unwrap();
                    let stable = &config.services[0].variants[0];
                    let plain = stable
                        .endpoints
                        .iter()
                        .find(|e| e.pod.as_deref() == Some("llm-v1-plain"))
                        .expect("the unmeshed pod's endpoint");
                    assert_eq!(plain.address, "198.18.64.9:8080");
                    assert!(!plain.meshed);
                }),
                apply_role(&["llm"]),
                apply_binding(&["llm"]),
                absent(SVC),
                // The Service selects only injected pods.
                apply_service(),
                status_including(
                    &ms,
                    json!({
                        "conditions": [
                            {"type": "Ready", "status": "True"},
                            {"type": "ConfigGenerated", "status": "True"},
                            {"type": "EndpointsAvailable", "status": "True"},
                            {"type": "SidecarsInjected", "status": "False", "reason": "UnmeshedPods"},
                        ],
                        "sidecarsTotal": 2,
                        "sidecarsOnRevision": 2,
                        "readyEndpoints": 3,
                        "unmeshedPods": [
                            {"name": "llm-v1-plain", "reason": "NotInjected"},
                            {"name": "llm-v2-own", "reason": "OptedOut"},
                        ],
                    }),
                ),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                event("Ready", "Normal", "Reconcile"),
                event("UnmeshedPods", "Warning", "Reconcile"),
            ],
        ],
    );
    let action = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (handle, bodies) = script.finish().await;
    let message = bodies[10]["status"]["conditions"][3]["message"]
        .as_str()
        .unwrap();
    for says in [
        "2 selected pod(s) run no infermesh sidecar, so the Service does not send to them",
        "llm-v1-plain (NotInjected), llm-v2-own (OptedOut)",
        "kubectl delete pod llm-v1-plain -n ns",
        "namespace ns has annotation infermesh.io/inject=enabled",
        "the infermesh webhook is up",
        "an OptedOut pod has annotation infermesh.io/inject=disabled",
    ] {
        assert!(message.contains(says), "{says:?} not in {message}");
    }
    assert_eq!(
        bodies[13]["note"],
        json!(message),
        "the warning tells the fix"
    );

    // Nothing changed: no status write, no second warning.
    let ms = with_status_from(ms, &bodies[10]);
    let script = serve(handle, [vec![get_service(), apply_service()]]);
    reconcile(Arc::new(ms), ctx.clone()).await.unwrap();
    script.finish().await;
}
