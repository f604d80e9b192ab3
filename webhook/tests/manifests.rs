//! The deploy/webhook manifests parse as the Kubernetes types they claim to be and hold the
//! properties the webhook relies on (selectors, failure policies, timeouts, replicas).

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/webhook")
}

fn load<T: DeserializeOwned>(rel: &str) -> T {
    let text = std::fs::read_to_string(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn kustomizations_list_existing_files() {
    for k in ["kustomization.yaml", "local/kustomization.yaml"] {
        let v: serde_yaml::Value = load(k);
        let resources = v["resources"].as_sequence().expect("resources");
        for r in resources {
            let f = r.as_str().expect("path");
            let base = dir().join(k).parent().expect("dir").join(f);
            assert!(base.exists(), "{k} lists missing {f}");
            let text = std::fs::read_to_string(&base).expect("read");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{f}: {e}"));
                assert!(
                    v["kind"].is_string() && v["apiVersion"].is_string(),
                    "{f}: not an object"
                );
            }
        }
    }
}

#[test]
fn webhook_configurations_fail_closed_only_where_injection_was_asked() {
    let cluster: MutatingWebhookConfiguration = load("mutatingwebhookconfiguration.yaml");
    let local: MutatingWebhookConfiguration = load("local/mutatingwebhookconfiguration.yaml");
    for cfg in [&cluster, &local] {
        let hooks = cfg.webhooks.as_ref().expect("webhooks");
        assert_eq!(hooks.len(), 2);
        for h in hooks {
            let t = h.timeout_seconds.expect("timeout");
            assert!((5..=10).contains(&t), "{}: timeout {t}", h.name);
            assert_eq!(h.reinvocation_policy.as_deref(), Some("IfNeeded"));
            assert_eq!(h.side_effects, "None");
            let sel = h
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .expect("selector");
            let system = sel
                .iter()
                .find(|e| e.key == "kubernetes.io/metadata.name")
                .expect("system exclusion");
            assert_eq!(system.operator, "NotIn");
            let values = system.values.clone().unwrap_or_default();
            assert!(
                values.contains(&"kube-system".into())
                    && values.contains(&"infermesh-system".into())
            );
            let label = sel
                .iter()
                .find(|e| e.key == "infermesh.io/inject")
                .expect("label selector");
            let expect_policy = if label.operator == "In" {
                "Fail"
            } else {
                "Ignore"
            };
            assert_eq!(
                h.failure_policy.as_deref(),
                Some(expect_policy),
                "{}",
                h.name
            );
        }
    }
    // Same webhooks, only the name and the way to reach the webhook differ.
    let strip = |c: &MutatingWebhookConfiguration| {
        let mut c = c.clone();
        c.metadata.name = None;
        for h in c.webhooks.iter_mut().flatten() {
            h.client_config = Default::default();
        }
        c
    };
    assert_eq!(strip(&cluster), strip(&local));
    let url = local
        .webhooks
        .as_ref()
        .and_then(|w| w[0].client_config.url.clone())
        .expect("url");
    assert!(
        url.starts_with("https://198.18.0.1:") && url.ends_with("/mutate"),
        "{url}"
    );
    let svc = cluster
        .webhooks
        .as_ref()
        .and_then(|w| w[0].client_config.service.clone())
        .expect("service");
    assert_eq!(
        (
            svc.name.as_str(),
            svc.namespace.as_str(),
            svc.path.as_deref()
        ),
        ("infermesh-webhook", "infermesh-system", Some("/mutate"))
    );
}

#[test]
fn deployment_runs_two_replicas_behind_a_budget() {
    let d: Deployment = load("deployment.yaml");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let c = &d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec")
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("infermesh/webhook:0.1.0"));
    assert_eq!(
        c.command.as_deref(),
        Some(&["/usr/local/bin/infermesh-webhook".to_string()][..])
    );
    let pdb: PodDisruptionBudget = load("pdb.yaml");
    assert!(pdb.spec.and_then(|s| s.min_available).is_some());
}
