//! End-to-end test of what the operator may touch, against the cluster in `KUBECONFIG`: a Service
//! a user made under a ModelService's name is reported as a name clash, never taken over, and
//! outlives the ModelService; once the user removes it, the ModelService gets its own Service.
//! No pods are needed: the ModelServices select none, which keeps the test fast.

use std::time::Duration;

use infermesh_e2e::operator::{
    OperatorProcess, TestNamespace, condition, get_json, install_crd, kubeconfig_or_skip,
    kubectl_ok, wait_for,
};
use serde_json::{Value, json};

/// A ModelService `name` with one variant selecting pods that do not exist.
fn model_service(name: &str) -> String {
    json!({
        "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "port": 8080,
            "variants": [
                {"name": "stable", "weight": 100, "selector": {"matchLabels": {"app": name}}}
            ]
        }
    })
    .to_string()
}

/// The Service a user writes by hand: their selector and port, nothing of the operator's.
fn user_service(name: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "web", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
        }
    })
    .to_string()
}

/// The user's Service is as they wrote it: their selector and port, no label or owner of ours.
fn assert_untouched(svc: &Value) {
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}), "{svc:#}");
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{svc:#}");
    assert_eq!(
        (
            &ports[0]["name"],
            &ports[0]["port"],
            &ports[0]["targetPort"]
        ),
        (&json!("web"), &json!(8080), &json!(8080)),
        "{svc:#}"
    );
    assert!(
        svc["metadata"]["labels"]["app.kubernetes.io/managed-by"].is_null(),
        "{svc:#}"
    );
    assert!(svc["metadata"]["ownerReferences"].is_null(), "{svc:#}");
}

#[test]
fn a_user_service_is_a_name_clash_never_taken_over_nor_deleted() {
    if kubeconfig_or_skip("a_user_service_is_a_name_clash_never_taken_over_nor_deleted").is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("owner");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "owner-a");
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&user_service("llm-user")),
    );
    for name in ["llm-user", "llm-other"] {
        kubectl_ok(&["apply", "-n", n, "-f", "-"], Some(&model_service(name)));
    }

    let clashed = |n: &str| {
        let ms = get_json(n, &["msvc", "llm-user"])?;
        let (status, reason, message) = condition(&ms, "Ready");
        (status == "False" && reason == "NameClash").then_some(message)
    };
    let message = wait_for(Duration::from_secs(30), || clashed(n)).unwrap_or_else(|| {
        panic!(
            "no NameClash reported: {:?}\noperator log:\n{}",
            get_json(n, &["msvc", "llm-user"]).map(|m| m["status"].clone()),
            op.log()
        )
    });
    assert!(message.contains("Service llm-user"), "{message}");
    assert!(message.contains("rename the ModelService"), "{message}");
    let events = wait_for(Duration::from_secs(10), || {
        let e = kubectl_ok(&["get", "events", "-n", n, "-o", "json"], None);
        e.contains("NameClash").then_some(e)
    });
    assert!(events.is_some(), "no NameClash event\n{}", op.log());
    assert_untouched(&get_json(n, &["service", "llm-user"]).expect("the user's Service"));

    // The other ModelService of the namespace is published and fronted as usual.
    wait_for(Duration::from_secs(30), || {
        let ms = get_json(n, &["msvc", "llm-other"])?;
        let svc = get_json(n, &["service", "llm-other"])?;
        (condition(&ms, "ConfigGenerated").0 == "True"
            && svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "infermesh-operator")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("llm-other was disturbed\noperator log:\n{}", op.log()));

    // Deleting the ModelService leaves the user's Service as it was.
    kubectl_ok(
        &["delete", "msvc", "llm-user", "-n", n, "--timeout=30s"],
        None,
    );
    assert!(get_json(n, &["msvc", "llm-user"]).is_none());
    assert_untouched(&get_json(n, &["service", "llm-user"]).expect("the user's Service survives"));

    // Once the user removes their Service, the ModelService takes the name at once.
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&model_service("llm-user")),
    );
    wait_for(Duration::from_secs(30), || clashed(n))
        .unwrap_or_else(|| panic!("no NameClash the second time\n{}", op.log()));
    kubectl_ok(
        &["delete", "service", "llm-user", "-n", n, "--wait=true"],
        None,
    );
    wait_for(Duration::from_secs(20), || {
        let ms = get_json(n, &["msvc", "llm-user"])?;
        let svc = get_json(n, &["service", "llm-user"])?;
        (condition(&ms, "Ready").1 != "NameClash"
            && svc["spec"]["selector"]["infermesh.io/modelservice"] == "llm-user")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "did not recover once the Service was removed: {:?}\noperator log:\n{}",
            get_json(n, &["msvc", "llm-user"]).map(|m| m["status"].clone()),
            op.log()
        )
    });
}
