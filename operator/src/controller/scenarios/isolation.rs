//! Scenarios of one bad ModelService next to a good one: a spec the mesh refuses, an entry too
//! large for the namespace's config, selectors over another ModelService's pods. Each is reported
//! on the ModelService concerned alone (status and a Warning event), and the other keeps being
//! published and stays Ready.

use std::sync::Arc;

use infermesh_crds::{
    MODELSERVICE_LABEL, ModelService,
    mesh::{MeshConfig, ServiceConfig},
    model_service::{HeaderMatch, Route, RouteMatch},
};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{controller::Action, watcher};
use serde_json::{Value, json};

use super::{Context, Created, RESYNC, calls::*, created, finalized, llm, pods, reconcile};
use crate::{
    fixtures::{
        api_server::{Call, serve},
        model_service, pod, spec_with,
    },
    screening::MAX_CONFIG_BYTES,
};

fn ms_path(name: &str) -> String {
    format!("/apis/infermesh.io/v1alpha1/namespaces/ns/modelservices/{name}")
}

fn svc_path(name: &str) -> String {
    format!("/api/v1/namespaces/ns/services/{name}")
}

/// The apply of `name`'s fronting Service.
fn apply_service_of(name: &str) -> Call {
    Call::patch(format!("{}{APPLY}", svc_path(name))).includes(json!({
        "metadata": {"name": name, "labels": {"infermesh.io/modelservice": name}},
    }))
}

/// The status apply of `ms`: Ready and ConfigGenerated as given (status, reason), the Ready
/// message saying each of `says`; answered with `ms` carrying the status.
fn status_of(
    ms: &ModelService,
    ready: (&str, &str),
    config: (&str, &str),
    says: &'static [&'static str],
) -> Call {
    let mut reply = serde_json::to_value(ms).unwrap();
    let name = ms.metadata.name.clone().unwrap();
    Call::patch(format!("{}/status{APPLY}", ms_path(&name)))
        .includes(json!({
            "status": {"conditions": [
                {"type": "Ready", "status": ready.0, "reason": ready.1},
                {"type": "ConfigGenerated", "status": config.0, "reason": config.1},
                {"type": "EndpointsAvailable"},
                {"type": "SidecarsInjected", "status": "True"},
            ]},
        }))
        .check(move |body| {
            let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
            for s in says {
                assert!(message.contains(s), "{s:?} not in {message:?}");
            }
        })
        .reply_from(move |body| {
            reply["status"] = body["status"].clone();
            reply
        })
}

/// A new event about ModelService `name`.
fn event_on(name: &str, reason: &str, type_: &str) -> Call {
    Call::post(EVENTS).includes(json!({
        "reason": reason, "type": type_,
        "regarding": {"kind": "ModelService", "name": name},
    }))
}

/// The mesh config a ConfigMap apply carried.
fn mesh(body: &Value) -> MeshConfig {
    serde_json::from_str(body["data"]["mesh.json"].as_str().expect("mesh.json"))
        .expect("a mesh config")
}

fn entry<'a>(config: &'a MeshConfig, name: &str) -> Option<&'a ServiceConfig> {
    config.services.iter().find(|s| s.name == name)
}

/// `ms` with a route whose header regex does not compile, at `generation`.
fn with_bad_regex(mut ms: ModelService, generation: i64) -> ModelService {
    ms.spec.routes = vec![Route {
        name: None,
        match_: RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-cohort".into(),
                exact: None,
                prefix: None,
                regex: Some("([a-z".into()),
            }],
            path_prefix: None,
            model: None,
        },
        variant: "stable".into(),
    }];
    ms.metadata.generation = Some(generation);
    ms
}

fn apply(writer: &mut kube::runtime::reflector::store::Writer<ModelService>, ms: &ModelService) {
    writer.apply_watcher_event(&watcher::Event::Apply(ms.clone()));
}

#[tokio::test]
async fn a_bad_regex_keeps_its_last_valid_entry_and_the_good_one_goes_on() {
    let mut all = pods();
    all.push(pod("bad-v3", "ns", "v3", Some("198.18.64.7"), true, true));
    let (ctx, handle, mut writer) = Context::test_with_writer(all, vec![]);
    let Created {
        ms: good, handle, ..
    } = created(&ctx, handle).await;
    apply(&mut writer, &good);

    // `bad` arrives valid: published next to `llm`, Ready.
    let bad = finalized(model_service(
        "bad",
        "ns",
        spec_with(&[("stable", 100, "v3")]),
    ));
    apply(&mut writer, &bad);
    let script = serve(
        handle,
        [
            published_ours().into(),
            vec![
                keep_key(),
                Call::patch(format!("{CM}{APPLY}")).includes(json!({
                    "metadata": {"ownerReferences": [shared_owner("bad"), shared_owner("llm")]},
                })),
                apply_role(&["bad", "llm"]),
                apply_binding(&["bad", "llm"]),
                absent(&svc_path("bad")),
                apply_service_of("bad"),
                status_of(&bad, ("True", "Ready"), ("True", "Published"), &[]),
                event_on("bad", "ConfigRegenerated", "Normal"),
                event_on("bad", "Ready", "Normal"),
            ],
        ],
    );
    reconcile(Arc::new(bad.clone()), ctx.clone()).await.unwrap();
    let (handle, bodies) = script.finish().await;
    let valid = entry(&mesh(&bodies[5]), "bad")
        .expect("bad's entry")
        .clone();
    let bad_service = found(bodies[9].clone(), "uid-bad-svc");
    let bad = with_status_from(bad, &bodies[10]);
    let revision = revision(&bodies[10]);

    // Its route gets a regex that does not compile: its last valid entry stays, so the config is
    // unchanged and not written; it reports what to fix and what is in force, and warns once.
    let broken = with_bad_regex(bad.clone(), 2);
    apply(&mut writer, &broken);
    let script = serve(
        handle,
        [vec![
            Call::get(svc_path("bad")).reply(bad_service.clone()),
            apply_service_of("bad"),
            status_of(
                &broken,
                ("False", "InvalidSpec"),
                ("False", "InvalidSpec"),
                &[
                    "\"([a-z\" does not compile",
                    "fix the spec",
                    "stays in force",
                ],
            )
            .check({
                let revision = revision.clone();
                move |body| {
                    let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
                    assert!(message.contains(&revision), "{message}");
                    assert_eq!(
                        body["status"]["revision"],
                        json!(revision),
                        "still in force"
                    );
                }
            }),
            event_on("bad", "InvalidSpec", "Warning").check(|body| {
                let note = body["note"].as_str().unwrap();
                assert!(note.contains("does not compile"), "{note}");
            }),
        ]],
    );
    let action = reconcile(Arc::new(broken.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let (handle, bodies) = script.finish().await;
    let broken = with_status_from(broken, &bodies[2]);

    // `llm` changes its weights: published at once, `bad`'s last valid entry with it, and Ready.
    let mut good = good;
    good.spec = llm(50).spec;
    good.metadata.generation = Some(2);
    apply(&mut writer, &good);
    let script = serve(
        handle,
        [
            published_ours().into(),
            vec![
                keep_key(),
                apply_config_map(&["bad", "llm"], 50),
                apply_role(&["bad", "llm"]),
                apply_binding(&["bad", "llm"]),
                get_service(),
                apply_service(),
                write_status(&good, 50, 2),
                // Its own event, the note telling the new weights (not a count on the first).
                event("ConfigRegenerated", "Normal", "Reconcile").check(|body| {
                    let note = body["note"].as_str().unwrap();
                    assert!(note.contains("stable=50,canary=50"), "{note}");
                }),
            ],
        ],
    );
    reconcile(Arc::new(good), ctx.clone()).await.unwrap();
    let (handle, bodies) = script.finish().await;
    assert_eq!(
        entry(&mesh(&bodies[5]), "bad"),
        Some(&valid),
        "the last valid entry"
    );

    // Nothing new about `bad`: no status write, no second warning.
    let script = serve(
        handle,
        [vec![
            Call::get(svc_path("bad")).reply(bad_service),
            apply_service_of("bad"),
        ]],
    );
    reconcile(Arc::new(broken), ctx.clone()).await.unwrap();
    script.finish().await;
}

#[tokio::test]
async fn a_bad_regex_that_never_was_valid_has_no_entry() {
    let bad = with_bad_regex(
        finalized(model_service(
            "bad",
            "ns",
            spec_with(&[("stable", 100, "v1")]),
        )),
        1,
    );
    let mut all = pods();
    all.retain(|p| p.metadata.name.as_deref() == Some("llm-v2"));
    all.push(pod("bad-v1", "ns", "v1", Some("198.18.64.7"), true, true));
    let good = finalized(model_service(
        "llm",
        "ns",
        spec_with(&[("stable", 100, "v2")]),
    ));
    let (ctx, handle) = Context::test(all, vec![bad.clone(), good.clone()]);
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                apply_key(),
                Call::patch(format!("{CM}{APPLY}")).check(|body| {
                    let config = mesh(body);
                    assert!(entry(&config, "bad").is_none(), "{config:?}");
                    assert!(entry(&config, "llm").is_some(), "{config:?}");
                }),
                apply_role(&["bad", "llm"]),
                apply_binding(&["bad", "llm"]),
                absent(&svc_path("bad")),
                apply_service_of("bad"),
                status_of(
                    &bad,
                    ("False", "InvalidSpec"),
                    ("False", "InvalidSpec"),
                    &["does not compile", "no entry in the mesh config"],
                )
                .check(|body| assert!(body["status"]["revision"].is_null(), "{body:#}")),
                event_on("bad", "InvalidSpec", "Warning"),
            ],
        ],
    );
    reconcile(Arc::new(bad), ctx.clone()).await.unwrap();
    script.finish().await;
}

/// `n` ready meshed pods `big-<i>` with `version=big`.
fn many_pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            let ip = format!("198.19.{}.{}", i / 250, i % 250 + 1);
            pod(&format!("big-{i:05}"), "ns", "big", Some(&ip), true, true)
        })
        .collect()
}

#[tokio::test]
async fn an_entry_too_large_for_the_config_is_left_out_and_reported_on_it_alone() {
    // ~65 bytes per endpoint: 15,000 endpoints do not fit under the cap.
    let big = finalized(model_service(
        "big",
        "ns",
        spec_with(&[("stable", 100, "big")]),
    ));
    let good = finalized(llm(90));
    let mut all = pods();
    all.extend(many_pods(15_000));
    let (ctx, handle) = Context::test(all, vec![big.clone(), good.clone()]);
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                apply_key(),
                Call::patch(format!("{CM}{APPLY}")).check(|body| {
                    let json = body["data"]["mesh.json"].as_str().unwrap();
                    assert!(json.len() <= MAX_CONFIG_BYTES, "{}", json.len());
                    let config = mesh(body);
                    assert!(entry(&config, "big").is_none());
                    assert!(entry(&config, "llm").is_some());
                }),
                apply_role(&["big", "llm"]),
                apply_binding(&["big", "llm"]),
                absent(&svc_path("big")),
                apply_service_of("big"),
                status_of(
                    &big,
                    ("False", "ConfigTooLarge"),
                    ("False", "ConfigTooLarge"),
                    &[
                        "bytes) does not fit",
                        "under 921600 bytes",
                        "fewer endpoints or routes",
                        "another namespace",
                        "no entry in the mesh config",
                    ],
                )
                .check(|body| {
                    let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
                    let bytes: usize = message
                        .split_once(" (")
                        .and_then(|(_, rest)| rest.split_once(' '))
                        .and_then(|(n, _)| n.parse().ok())
                        .unwrap_or_else(|| panic!("a size in {message}"));
                    assert!(bytes > MAX_CONFIG_BYTES, "{message}");
                }),
                event_on("big", "ConfigTooLarge", "Warning"),
                // `llm` is published (the config is fresh) and Ready.
                absent(SVC),
                apply_service(),
                write_status(&good, 90, 1),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                event("Ready", "Normal", "Reconcile"),
            ],
        ],
    );
    for ms in [&big, &good] {
        let action = reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
    }
    script.finish().await;
}

#[tokio::test]
async fn overlapping_selectors_are_reported_on_the_model_services_concerned() {
    // `shadow` selects both of `llm`'s pods: llm-v2 carries `infermesh.io/modelservice: llm`, so
    // it is llm's and left out of shadow's endpoints; llm-v1 carries no such label, so it stays
    // an endpoint of both, and both report it.
    let mut all = pods();
    all[1]
        .metadata
        .labels
        .get_or_insert_default()
        .insert(MODELSERVICE_LABEL.into(), "llm".into());
    let shadow = finalized(model_service(
        "shadow",
        "ns",
        spec_with(&[("one", 50, "v1"), ("two", 50, "v2")]),
    ));
    let good = finalized(llm(90));
    let (ctx, handle) = Context::test(all, vec![shadow.clone(), good.clone()]);
    let script = serve(
        handle,
        [
            published_absent().into(),
            vec![
                apply_key(),
                Call::patch(format!("{CM}{APPLY}")).check(|body| {
                    let config = mesh(body);
                    let shadow = entry(&config, "shadow").unwrap();
                    assert_eq!(shadow.variants[0].endpoints.len(), 1, "llm-v1, shared");
                    assert!(shadow.variants[1].endpoints.is_empty(), "llm-v2 is llm's");
                    let llm = entry(&config, "llm").unwrap();
                    assert_eq!(llm.variants[1].endpoints[0].pod.as_deref(), Some("llm-v2"));
                }),
                apply_role(&["llm", "shadow"]),
                apply_binding(&["llm", "shadow"]),
                absent(&svc_path("shadow")),
                apply_service_of("shadow"),
                status_of(
                    &shadow,
                    ("False", "OverlappingSelector"),
                    ("True", "Published"),
                    &[
                        "1 pod(s) this ModelService's variants select carry \
                         infermesh.io/modelservice=llm",
                        "left out of this one's endpoints",
                        "1 pod(s) are selected by this ModelService and by ModelService llm",
                    ],
                ),
                event_on("shadow", "ConfigRegenerated", "Normal"),
                event_on("shadow", "NoEndpoints", "Warning"),
                event_on("shadow", "OverlappingSelector", "Warning"),
                absent(SVC),
                apply_service(),
                status_of(
                    &good,
                    ("False", "OverlappingSelector"),
                    ("True", "Published"),
                    &[
                        "1 pod(s) are selected by this ModelService and by ModelService shadow",
                        "narrow the variant selectors",
                    ],
                ),
                event("ConfigRegenerated", "Normal", "Reconcile"),
                event("OverlappingSelector", "Warning", "Reconcile").check(|body| {
                    let note = body["note"].as_str().unwrap();
                    assert!(note.contains("ModelService shadow"), "{note}");
                }),
            ],
        ],
    );
    for ms in [&shadow, &good] {
        reconcile(Arc::new(ms.clone()), ctx.clone()).await.unwrap();
    }
    script.finish().await;
}
