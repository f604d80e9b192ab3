//! End-to-end tests that one bad ModelService does not freeze its namespace, against the cluster in
//! `KUBECONFIG`: a route regex that does not compile is reported on its ModelService, whose last
//! valid entry stays in the mesh config, while the good one next to it keeps being published; and
//! selectors over another ModelService's pods (or over pods two ModelServices select) are
//! reported on the ModelServices concerned. The operator runs as a host process built from this
//! checkout.

use std::time::Duration;

use infermesh_e2e::operator::{
    OperatorProcess, TestNamespace, condition, deployment, get_json, install_crd,
    kubeconfig_or_skip, kubectl_ok, wait_for,
};
use serde_json::{Value, json};

/// A ModelService `name` with variants stable (`stable`) and canary (`100 - stable`) selecting
/// `app=<app>`, version v1 and v2.
fn model_service(name: &str, app: &str, stable: i32) -> Value {
    json!({
        "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "port": 8080,
            "variants": [
                {"name": "stable", "weight": stable,
                 "selector": {"matchLabels": {"app": app, "version": "v1"}}},
                {"name": "canary", "weight": 100 - stable,
                 "selector": {"matchLabels": {"app": app, "version": "v2"}}},
            ]
        }
    })
}

/// `ms` with a route whose header regex does not compile (the CRD cannot tell).
fn with_bad_regex(mut ms: Value) -> Value {
    ms["spec"]["routes"] = json!([{
        "match": {"headers": [{"name": "x-cohort", "regex": "([a-z"}]},
        "variant": "canary",
    }]);
    ms
}

fn apply(ns: &str, obj: &Value) {
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&obj.to_string()));
}

/// `(status, reason, message)` of condition `type_` of ModelService `name`, if it has one.
fn condition_of(ns: &str, name: &str, type_: &str) -> Option<(String, String, String)> {
    let ms = get_json(ns, &["msvc", name])?;
    Some(condition(&ms, type_)).filter(|c| !c.0.is_empty())
}

/// The Ready message of `name` once Ready is False with `reason`.
fn ready_false(ns: &str, name: &str, reason: &str) -> Option<String> {
    let (status, r, message) = condition_of(ns, name, "Ready")?;
    (status == "False" && r == reason).then_some(message)
}

/// `name`'s entry in the namespace's published mesh config (`Null` when it has none).
fn entry(ns: &str, name: &str) -> Option<Value> {
    let cm = get_json(ns, &["configmap", "infermesh-mesh-config"])?;
    let config: Value = serde_json::from_str(cm["data"]["mesh.json"].as_str()?).ok()?;
    Some(
        config["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null),
    )
}

fn weights(entry: &Value) -> Vec<i64> {
    entry["variants"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["weight"].as_i64()).collect())
        .unwrap_or_default()
}

/// A Warning event of `reason` about ModelService `name`.
fn warned(ns: &str, name: &str, reason: &str) -> bool {
    let events = get_json(ns, &["events"]).unwrap_or(Value::Null);
    events["items"].as_array().is_some_and(|items| {
        items.iter().any(|e| {
            e["type"] == "Warning" && e["reason"] == reason && e["involvedObject"]["name"] == name
        })
    })
}

#[test]
fn a_bad_regex_is_reported_on_its_model_service_and_the_good_one_keeps_updating() {
    let test = "a_bad_regex_is_reported_on_its_model_service_and_the_good_one_keeps_updating";
    if kubeconfig_or_skip(test).is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("isolation-regex");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "isolation-a");
    let status = |name: &str| get_json(n, &["msvc", name]).map(|m| m["status"].clone());

    // Both valid at first: both published.
    apply(n, &model_service("good", "good", 90));
    apply(n, &model_service("bad", "bad", 90));
    wait_for(Duration::from_secs(30), || {
        (weights(&entry(n, "good")?) == [90, 10] && weights(&entry(n, "bad")?) == [90, 10])
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not both published\noperator log:\n{}", op.log()));

    // `bad` gets a regex that does not compile: reported, its last valid entry stays in force.
    apply(n, &with_bad_regex(model_service("bad", "bad", 50)));
    let message = wait_for(Duration::from_secs(30), || {
        ready_false(n, "bad", "InvalidSpec")
    })
    .unwrap_or_else(|| {
        panic!(
            "no InvalidSpec on bad: {:?}\noperator log:\n{}",
            status("bad"),
            op.log()
        )
    });
    assert!(message.contains("does not compile"), "{message}");
    assert!(message.contains("stays in force"), "{message}");
    let (config, reason, _) = condition_of(n, "bad", "ConfigGenerated").unwrap();
    assert_eq!((config.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    let kept = entry(n, "bad").expect("the mesh config");
    assert_eq!(weights(&kept), [90, 10], "the last valid entry: {kept:#}");
    assert!(
        kept["routes"].as_array().is_none_or(|r| r.is_empty()),
        "{kept:#}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || warned(n, "bad", "InvalidSpec")
            .then_some(()))
        .is_some(),
        "no InvalidSpec Warning event\n{}",
        op.log()
    );

    // The good one keeps updating.
    apply(n, &model_service("good", "good", 50));
    wait_for(Duration::from_secs(30), || {
        (weights(&entry(n, "good")?) == [50, 50]).then_some(())
    })
    .unwrap_or_else(|| panic!("good's new weights were not published\n{}", op.log()));
    let (config, _, _) = condition_of(n, "good", "ConfigGenerated").unwrap();
    assert_eq!(config, "True");
    assert_ne!(
        condition_of(n, "good", "Ready").map(|c| c.1).as_deref(),
        Some("InvalidSpec")
    );
    assert_eq!(
        weights(&entry(n, "bad").unwrap()),
        [90, 10],
        "still the last valid one"
    );

    // One that never was valid has no entry.
    apply(n, &with_bad_regex(model_service("never", "never", 90)));
    let message = wait_for(Duration::from_secs(30), || {
        ready_false(n, "never", "InvalidSpec")
    })
    .unwrap_or_else(|| {
        panic!(
            "no InvalidSpec on never: {:?}\n{}",
            status("never"),
            op.log()
        )
    });
    assert!(message.contains("no entry in the mesh config"), "{message}");
    assert_eq!(entry(n, "never"), Some(Value::Null));

    // Fixed: published again and no longer refused.
    apply(n, &model_service("bad", "bad", 50));
    wait_for(Duration::from_secs(30), || {
        let fixed = weights(&entry(n, "bad")?) == [50, 50];
        let (_, reason, _) = condition_of(n, "bad", "ConfigGenerated")?;
        (fixed && reason == "Published").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "bad was not published once fixed: {:?}\n{}",
            status("bad"),
            op.log()
        )
    });
}

#[test]
fn selectors_over_the_same_pods_are_reported() {
    if kubeconfig_or_skip("selectors_over_the_same_pods_are_reported").is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("isolation-overlap");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "isolation-b");
    let status = |name: &str| get_json(n, &["msvc", name]).map(|m| m["status"].clone());
    // Pods need not run to be selected: the pause image, whether or not the node has it. The
    // helper labels them `infermesh.io/modelservice: <app>`: "owned" names ModelService owned;
    // no ModelService is named "free".
    for app in ["owned", "free"] {
        kubectl_ok(
            &["apply", "-n", n, "-f", "-"],
            Some(&deployment(
                &format!("{app}-v1"),
                app,
                "v1",
                1,
                "infermesh/pause:0.1.0",
            )),
        );
    }
    wait_for(Duration::from_secs(60), || {
        let pods = get_json(n, &["pods"])?;
        (pods["items"].as_array()?.len() == 2).then_some(())
    })
    .expect("two pods created");
    apply(n, &model_service("owned", "owned", 100));
    apply(n, &model_service("intruder", "owned", 100));
    apply(n, &model_service("left", "free", 100));
    apply(n, &model_service("right", "free", 100));

    // Pods labelled for `owned`: `intruder` reports it, `owned` is not affected.
    let message = wait_for(Duration::from_secs(30), || {
        ready_false(n, "intruder", "OverlappingSelector")
    })
    .unwrap_or_else(|| {
        panic!(
            "intruder not reported: {:?}\n{}",
            status("intruder"),
            op.log()
        )
    });
    assert!(
        message.contains("1 pod(s)") && message.contains("ModelService owned"),
        "{message}"
    );
    assert!(
        message.contains("left out of this one's endpoints"),
        "{message}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            warned(n, "intruder", "OverlappingSelector").then_some(())
        })
        .is_some(),
        "no OverlappingSelector Warning event\n{}",
        op.log()
    );
    let owned = condition_of(n, "owned", "Ready").map(|c| c.1);
    assert_ne!(
        owned.as_deref(),
        Some("OverlappingSelector"),
        "{:?}",
        status("owned")
    );

    // Pods neither owns: both report, each naming the other.
    for (me, other) in [("left", "right"), ("right", "left")] {
        let message = wait_for(Duration::from_secs(30), || {
            ready_false(n, me, "OverlappingSelector")
        })
        .unwrap_or_else(|| panic!("{me} not reported: {:?}\n{}", status(me), op.log()));
        assert!(
            message.contains(&format!("ModelService {other}")),
            "{message}"
        );
    }

    // Once `right` is gone, `left` is told at once (not at its next resync).
    kubectl_ok(&["delete", "msvc", "right", "-n", n, "--timeout=30s"], None);
    wait_for(Duration::from_secs(20), || {
        let (_, reason, _) = condition_of(n, "left", "Ready")?;
        (reason != "OverlappingSelector").then_some(())
    })
    .unwrap_or_else(|| panic!("left still reports: {:?}\n{}", status("left"), op.log()));
}
