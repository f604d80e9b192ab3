//! Sidecar injection on a real cluster: pods created by the real controller-manager and admitted
//! by the real API server through the webhook running in local mode (see `infermesh_e2e::webhook`).
//! Skipped when `KUBECONFIG` is unset.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use infermesh_e2e::webhook::{LocalWebhook, cluster_client};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const SIDECAR: &str = "infermesh-sidecar";
const STATUS: &str = "infermesh.io/injection-status";

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "model", "image": "infermesh/pause:0.1.0",
                             "imagePullPolicy": "IfNotPresent", "ports": [{ "containerPort": 8080 }] }],
        }
    }))
    .unwrap_or_default()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": "model", "image": "infermesh/pause:0.1.0",
                                     "imagePullPolicy": "IfNotPresent", "ports": [{ "containerPort": 8080 }] }],
                },
            },
        }
    }))
    .unwrap_or_default()
}

/// The pods of a Deployment, once the ReplicaSet created `n` of them.
async fn wait_for_pods(client: &Client, ns: &str, app: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items;
        if pods.len() >= n {
            return Ok(pods);
        }
        if start.elapsed() > Duration::from_secs(90) {
            bail!(
                "{ns}: {} of {n} pods of {app} after 90 s (see `kubectl -n {ns} get events`)",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn has_sidecar(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == SIDECAR))
}

fn status(p: &Pod) -> String {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STATUS).cloned())
        .unwrap_or_default()
}

fn assert_injected(p: &Pod) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let spec = p.spec.as_ref().expect("pod spec");
    let init = spec.init_containers.as_ref().expect("init containers");
    let sc = &init[0];
    assert_eq!(sc.name, SIDECAR, "{name}: sidecar first");
    assert_eq!(
        sc.restart_policy.as_deref(),
        Some("Always"),
        "{name}: native sidecar"
    );
    let probe = sc
        .startup_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("startup probe");
    assert_eq!(probe.path.as_deref(), Some("/ready"));
    let env = sc.env.clone().unwrap_or_default();
    let model_port = env
        .iter()
        .find(|e| e.name == "INFERMESH_MODEL_PORT")
        .and_then(|e| e.value.clone());
    assert_eq!(model_port.as_deref(), Some("8080"), "{name}");
    assert!(
        env.iter()
            .any(|e| e.name == "POD_IP" && e.value_from.is_some())
    );
    let sec = sc.security_context.as_ref().expect("security context");
    assert_eq!(
        (sec.run_as_non_root, sec.read_only_root_filesystem),
        (Some(true), Some(true))
    );
    let app_env = spec.containers[0].env.clone().unwrap_or_default();
    let outbound = app_env
        .iter()
        .find(|e| e.name == "INFERMESH_OUTBOUND")
        .and_then(|e| e.value.clone());
    assert_eq!(
        outbound.as_deref(),
        Some("http://127.0.0.1:15001"),
        "{name}"
    );
    assert_eq!(status(p), "injected", "{name}");
}

#[tokio::test]
async fn annotated_namespace_gets_sidecars_others_and_opt_outs_do_not() -> anyhow::Result<()> {
    let Some(client) =
        cluster_client("annotated_namespace_gets_sidecars_others_and_opt_outs_do_not").await
    else {
        return Ok(());
    };
    let mut hook = LocalWebhook::start(client.clone(), "inj").await?;
    let on = hook.namespace("on", true).await?;
    let off = hook.namespace("off", false).await?;
    hook.wait_for_label(&on).await?;

    // Deployment in the annotated namespace: pods from the ReplicaSet carry the sidecar.
    Api::<Deployment>::namespaced(client.clone(), &on)
        .create(&PostParams::default(), &deployment("llm"))
        .await?;
    for p in wait_for_pods(&client, &on, "llm", 2).await? {
        assert_injected(&p);
    }
    // An opted-out pod in the same namespace does not.
    let pods_on: Api<Pod> = Api::namespaced(client.clone(), &on);
    let out = pods_on
        .create(
            &PostParams::default(),
            &pod("opted-out", json!({ "infermesh.io/inject": "disabled" })),
        )
        .await?;
    assert!(!has_sidecar(&out));
    assert_eq!(
        status(&out),
        "skipped: pod annotation infermesh.io/inject=disabled"
    );

    // Deployment in the namespace without the annotation: no sidecar, and the reason is written.
    Api::<Deployment>::namespaced(client.clone(), &off)
        .create(&PostParams::default(), &deployment("plain"))
        .await?;
    for p in wait_for_pods(&client, &off, "plain", 2).await? {
        assert!(!has_sidecar(&p), "{:?} got a sidecar", p.metadata.name);
        assert!(
            status(&p).starts_with("skipped: namespace"),
            "{}",
            status(&p)
        );
    }
    // A pod there that opts in gets it.
    let opted_in = Api::<Pod>::namespaced(client.clone(), &off)
        .create(
            &PostParams::default(),
            &pod("opted-in", json!({ "infermesh.io/inject": "enabled" })),
        )
        .await?;
    assert_injected(&opted_in);
    hook.cleanup().await
}

#[tokio::test]
async fn pod_creation_fails_closed_while_the_webhook_is_down() -> anyhow::Result<()> {
    let Some(client) = cluster_client("pod_creation_fails_closed_while_the_webhook_is_down").await
    else {
        return Ok(());
    };
    let mut hook = LocalWebhook::start(client.clone(), "down").await?;
    let on = hook.namespace("on", true).await?;
    // failurePolicy Fail applies through the label the webhook mirrors from the annotation.
    hook.wait_for_label(&on).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &on);
    let bundles = hook.ca_bundles().await?;

    hook.stop().await?;
    let err = pods
        .create(&PostParams::default(), &pod("while-down", json!({})))
        .await
        .err()
        .context("pod creation succeeded while the webhook was down")?;
    let msg = err.to_string();
    println!("pod creation with the webhook down: {msg}");
    assert!(
        msg.contains("inject.infermesh.io"),
        "the error names the webhook: {msg}"
    );
    assert!(msg.contains("failed calling webhook"), "{msg}");

    hook.restart().await?;
    let start = Instant::now();
    let created = loop {
        match pods
            .create(&PostParams::default(), &pod("after-restart", json!({})))
            .await
        {
            Ok(p) => break p,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                println!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e)
                    .context("pod creation still failing 30 s after the webhook restarted");
            }
        }
    };
    assert_injected(&created);
    // The restarted webhook took its CA from the Secret instead of minting a new one.
    assert_eq!(
        hook.ca_bundles().await?,
        bundles,
        "caBundle changed across a restart"
    );
    hook.cleanup().await
}
