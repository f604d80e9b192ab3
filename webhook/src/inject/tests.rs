//! Table-driven tests of the injection patch: each case applies the patch to the pod's JSON and
//! compares the result with the pod expected, written out independently of the code under test.

use serde_json::{Value, json};

use super::*;

fn pod(value: Value) -> Value {
    let mut p = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "m" } });
    merge(&mut p, value);
    p
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn app(name: &str, ports: &[i32]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({ "containerPort": p }))
        .collect();
    if ports.is_empty() {
        json!({ "name": name, "image": "model:1" })
    } else {
        json!({ "name": name, "image": "model:1", "ports": ports })
    }
}

fn outbound() -> Value {
    json!({ "name": "INFERMESH_OUTBOUND", "value": "http://127.0.0.1:15001" })
}

/// The sidecar as it must appear in the pod, written out in full.
fn expected_sidecar(image: &str, model_port: Option<&str>, resources: Value) -> Value {
    let mut env = json!([
        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } } },
        { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } } },
        { "name": "POD_IP", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
        { "name": "SERVICE_ACCOUNT", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "spec.serviceAccountName" } } },
    ]);
    if let (Some(p), Some(list)) = (model_port, env.as_array_mut()) {
        list.push(json!({ "name": "INFERMESH_MODEL_PORT", "value": p }));
    }
    json!({
        "name": "infermesh-sidecar",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "ports": [
            { "name": "im-inbound", "containerPort": 15006, "protocol": "TCP" },
            { "name": "im-outbound", "containerPort": 15001, "protocol": "TCP" },
            { "name": "im-admin", "containerPort": 15020, "protocol": "TCP" },
        ],
        "env": env,
        "resources": resources,
        "startupProbe": { "httpGet": { "path": "/ready", "port": 15020 }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 120 },
        "readinessProbe": { "httpGet": { "path": "/ready", "port": 15020 }, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3 },
        "livenessProbe": { "httpGet": { "path": "/live", "port": 15020 }, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3 },
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] }, "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [{ "name": "infermesh-sidecar-tmp", "mountPath": "/tmp" }],
    })
}

fn default_resources() -> Value {
    json!({ "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "memory": "256Mi" } })
}

fn tmp_volume() -> Value {
    json!({ "name": "infermesh-sidecar-tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } })
}

fn annotations(v: Value) -> Value {
    json!({ "metadata": { "annotations": v } })
}

enum Want {
    /// The pod after the patch.
    Pod(Value),
    /// Only the status annotation is added, with this text.
    Status(&'static str),
}

struct Case {
    name: &'static str,
    ns: NamespaceInfo,
    pod: Value,
    want: Want,
    decision: Decision,
    warnings: usize,
}

fn cases() -> Vec<Case> {
    let enabled = || NamespaceInfo::enabled("ml");
    let injected = Decision::Injected;
    let skipped = Decision::Skipped;
    vec![
        Case {
            name: "one container with a port",
            ns: enabled(),
            pod: pod(json!({ "spec": { "containers": [app("model", &[8080])] } })),
            want: Want::Pod(pod(json!({
                "metadata": { "labels": { "infermesh.io/sidecar": "injected" }, "annotations": { "infermesh.io/injection-status": "injected" } },
                "spec": {
                    "initContainers": [expected_sidecar("infermesh/sidecar:0.1.0", Some("8080"), default_resources())],
                    "containers": [{ "name": "model", "image": "model:1", "ports": [{ "containerPort": 8080 }], "env": [outbound()] }],
                    "volumes": [tmp_volume()],
                },
            }))),
            decision: injected.clone(),
            warnings: 0,
        },
        Case {
            name: "no ports: no model port env, a warning",
            ns: enabled(),
            pod: pod(json!({ "spec": { "containers": [app("model", &[])] } })),
            want: Want::Pod(pod(json!({
                "metadata": { "labels": { "infermesh.io/sidecar": "injected" }, "annotations": { "infermesh.io/injection-status": "injected" } },
                "spec": {
                    "initContainers": [expected_sidecar("infermesh/sidecar:0.1.0", None, default_resources())],
                    "containers": [{ "name": "model", "image": "model:1", "env": [outbound()] }],
                    "volumes": [tmp_volume()],
                },
            }))),
            decision: injected.clone(),
            warnings: 1,
        },
        Case {
            name: "several containers, existing env, init containers, volumes and annotations",
            ns: enabled(),
            pod: pod(json!({
                "metadata": { "labels": { "app": "llm" }, "annotations": { "team": "nlp", "infermesh.io/injection-status": "stale" } },
                "spec": {
                    "initContainers": [{ "name": "fetch-weights", "image": "fetch:1" }],
                    "containers": [
                        { "name": "model", "image": "model:1", "ports": [{ "containerPort": 9000 }, { "containerPort": 9001 }],
                          "env": [{ "name": "A", "value": "1" }] },
                        { "name": "exporter", "image": "exp:1", "ports": [{ "containerPort": 9100 }] },
                        { "name": "has-outbound", "image": "x:1", "env": [{ "name": "INFERMESH_OUTBOUND", "value": "http://custom" }] },
                    ],
                    "volumes": [{ "name": "weights", "emptyDir": {} }],
                },
            })),
            want: Want::Pod(pod(json!({
                "metadata": { "labels": { "app": "llm", "infermesh.io/sidecar": "injected" }, "annotations": { "team": "nlp", "infermesh.io/injection-status": "injected" } },
                "spec": {
                    "initContainers": [
                        expected_sidecar("infermesh/sidecar:0.1.0", Some("9000"), default_resources()),
                        { "name": "fetch-weights", "image": "fetch:1" },
                    ],
                    "containers": [
                        { "name": "model", "image": "model:1", "ports": [{ "containerPort": 9000 }, { "containerPort": 9001 }],
                          "env": [{ "name": "A", "value": "1" }, outbound()] },
                        { "name": "exporter", "image": "exp:1", "ports": [{ "containerPort": 9100 }], "env": [outbound()] },
                        { "name": "has-outbound", "image": "x:1", "env": [{ "name": "INFERMESH_OUTBOUND", "value": "http://custom" }] },
                    ],
                    "volumes": [{ "name": "weights", "emptyDir": {} }, tmp_volume()],
                },
            }))),
            decision: injected.clone(),
            warnings: 0,
        },
        Case {
            name: "pod opt-in in a namespace that is not enabled, with overrides",
            ns: NamespaceInfo::new("default"),
            pod: pod(json!({
                "metadata": { "annotations": {
                    "infermesh.io/inject": "enabled", "infermesh.io/model-port": "7000",
                    "infermesh.io/proxy-image": "registry.local/sidecar:dev",
                    "infermesh.io/proxy-cpu": "200m", "infermesh.io/proxy-memory": "512Mi",
                    "infermesh.io/proxy-cpu-limit": "1",
                } },
                "spec": { "containers": [app("model", &[8080])] },
            })),
            want: Want::Pod(pod(json!({
                "metadata": { "annotations": {
                    "infermesh.io/inject": "enabled", "infermesh.io/model-port": "7000",
                    "infermesh.io/proxy-image": "registry.local/sidecar:dev",
                    "infermesh.io/proxy-cpu": "200m", "infermesh.io/proxy-memory": "512Mi",
                    "infermesh.io/proxy-cpu-limit": "1",
                    "infermesh.io/injection-status": "injected",
                }, "labels": { "infermesh.io/sidecar": "injected" } },
                "spec": {
                    // The memory request above the default limit lifts the limit.
                    "initContainers": [expected_sidecar("registry.local/sidecar:dev", Some("7000"),
                        json!({ "requests": { "cpu": "200m", "memory": "512Mi" }, "limits": { "cpu": "1", "memory": "512Mi" } }))],
                    "containers": [{ "name": "model", "image": "model:1", "ports": [{ "containerPort": 8080 }], "env": [outbound()] }],
                    "volumes": [tmp_volume()],
                },
            }))),
            decision: injected.clone(),
            warnings: 0,
        },
        Case {
            name: "namespace not enabled",
            ns: NamespaceInfo::new("default"),
            pod: pod(json!({ "spec": { "containers": [app("model", &[8080])] } })),
            want: Want::Status(
                "skipped: namespace default does not have annotation infermesh.io/inject=enabled",
            ),
            decision: skipped(SkipReason::NamespaceNotEnabled),
            warnings: 0,
        },
        Case {
            name: "unknown pod annotation value follows the namespace, with a warning",
            ns: NamespaceInfo::new("default"),
            pod: pod(
                json!({ "metadata": { "annotations": { "infermesh.io/inject": "true" } }, "spec": { "containers": [app("m", &[1])] } }),
            ),
            want: Want::Status(
                "skipped: namespace default does not have annotation infermesh.io/inject=enabled",
            ),
            decision: skipped(SkipReason::NamespaceNotEnabled),
            warnings: 1,
        },
        Case {
            name: "pod opted out",
            ns: enabled(),
            pod: pod(
                json!({ "metadata": { "annotations": { "infermesh.io/inject": "disabled" } }, "spec": { "containers": [app("m", &[80])] } }),
            ),
            want: Want::Status("skipped: pod annotation infermesh.io/inject=disabled"),
            decision: skipped(SkipReason::PodOptedOut),
            warnings: 0,
        },
        Case {
            name: "hostNetwork pod",
            ns: enabled(),
            pod: pod(json!({ "spec": { "hostNetwork": true, "containers": [app("m", &[80])] } })),
            want: Want::Status(
                "skipped: hostNetwork pod (the sidecar's ports would clash with the node's)",
            ),
            decision: skipped(SkipReason::HostNetwork),
            warnings: 0,
        },
        Case {
            name: "kube-system, even when the pod opts in",
            ns: NamespaceInfo::enabled("kube-system"),
            pod: pod(
                json!({ "metadata": { "annotations": { "infermesh.io/inject": "enabled" } }, "spec": { "containers": [app("m", &[80])] } }),
            ),
            want: Want::Status("skipped: namespace kube-system is a system namespace"),
            decision: skipped(SkipReason::SystemNamespace),
            warnings: 0,
        },
        Case {
            name: "infermesh-system",
            ns: NamespaceInfo::enabled("infermesh-system"),
            pod: pod(json!({ "spec": { "containers": [app("m", &[80])] } })),
            want: Want::Status("skipped: namespace infermesh-system is a system namespace"),
            decision: skipped(SkipReason::SystemNamespace),
            warnings: 0,
        },
        Case {
            name: "sidecar already present without a status",
            ns: enabled(),
            pod: pod(
                json!({ "spec": { "initContainers": [{ "name": "infermesh-sidecar", "image": "s" }], "containers": [app("m", &[80])] } }),
            ),
            want: Want::Status("skipped: sidecar already present"),
            decision: skipped(SkipReason::AlreadyInjected),
            warnings: 0,
        },
        Case {
            name: "reinvoked after another webhook added a container",
            ns: enabled(),
            pod: pod(json!({
                "metadata": { "annotations": { "infermesh.io/injection-status": "injected" } },
                "spec": {
                    "initContainers": [{ "name": "infermesh-sidecar", "image": "s" }],
                    "containers": [{ "name": "m", "image": "m", "env": [outbound()] }, { "name": "added", "image": "a" }],
                },
            })),
            want: Want::Pod(pod(json!({
                "metadata": { "annotations": { "infermesh.io/injection-status": "injected" } },
                "spec": {
                    "initContainers": [{ "name": "infermesh-sidecar", "image": "s" }],
                    "containers": [{ "name": "m", "image": "m", "env": [outbound()] }, { "name": "added", "image": "a", "env": [outbound()] }],
                },
            }))),
            decision: skipped(SkipReason::AlreadyInjected),
            warnings: 0,
        },
        Case {
            name: "app container on a sidecar port",
            ns: enabled(),
            pod: pod(json!({ "spec": { "containers": [app("m", &[15020])] } })),
            want: Want::Status("skipped: container m uses port 15020, reserved for the sidecar"),
            decision: skipped(SkipReason::PortConflict),
            warnings: 0,
        },
        Case {
            name: "invalid cpu override",
            ns: enabled(),
            pod: pod(
                json!({ "metadata": { "annotations": { "infermesh.io/proxy-cpu": "lots" } }, "spec": { "containers": [app("m", &[80])] } }),
            ),
            want: Want::Status(
                "skipped: annotation infermesh.io/proxy-cpu=\"lots\" is not a Kubernetes quantity",
            ),
            decision: skipped(SkipReason::InvalidAnnotation),
            warnings: 1,
        },
        Case {
            name: "invalid model port",
            ns: enabled(),
            pod: pod(
                json!({ "metadata": { "annotations": { "infermesh.io/model-port": "15006" } }, "spec": { "containers": [app("m", &[80])] } }),
            ),
            want: Want::Status(
                "skipped: annotation infermesh.io/model-port=\"15006\" is not a port in 1-65535 outside the sidecar's ports",
            ),
            decision: skipped(SkipReason::InvalidAnnotation),
            warnings: 1,
        },
    ]
}

fn with_status(mut p: Value, status: &str) -> Value {
    merge(
        &mut p,
        annotations(json!({ "infermesh.io/injection-status": status })),
    );
    p
}

#[test]
fn patch_yields_expected_pod_for_every_shape() {
    let cfg = InjectorConfig::default();
    for case in cases() {
        let typed: Pod = serde_json::from_value(case.pod.clone()).expect(case.name);
        let out = decide(&typed, &case.ns, &cfg);
        let mut doc = case.pod.clone();
        json_patch::patch(&mut doc, &out.patch).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let want = match case.want {
            Want::Pod(p) => p,
            Want::Status(s) => {
                assert_eq!(out.status, s, "{}", case.name);
                with_status(case.pod.clone(), s)
            }
        };
        assert_eq!(doc, want, "{}: patched pod differs", case.name);
        assert_eq!(out.decision, case.decision, "{}", case.name);
        assert_eq!(
            out.warnings.len(),
            case.warnings,
            "{}: {:?}",
            case.name,
            out.warnings
        );

        // A second pass over the patched pod changes nothing (reinvocation, retries).
        let again: Pod = serde_json::from_value(doc).expect(case.name);
        let second = decide(&again, &case.ns, &cfg);
        assert!(
            second.patch.0.is_empty(),
            "{}: second pass patched {:?}",
            case.name,
            second.patch
        );
    }
}

#[test]
fn annotation_keys_are_escaped_in_json_pointers() {
    let p = pod(
        json!({ "metadata": { "annotations": { "a": "b" } }, "spec": { "containers": [app("m", &[80])] } }),
    );
    let out = decide(
        &serde_json::from_value(p).expect("pod"),
        &NamespaceInfo::new("x"),
        &InjectorConfig::default(),
    );
    let json = serde_json::to_value(&out.patch).expect("patch serialises");
    assert_eq!(
        json,
        json!([{ "op": "add", "path": "/metadata/annotations/infermesh.io~1injection-status",
                 "value": "skipped: namespace x does not have annotation infermesh.io/inject=enabled" }])
    );
}

#[test]
fn sidecar_is_the_first_init_container() {
    let p = pod(
        json!({ "spec": { "initContainers": [{ "name": "a", "image": "a" }, { "name": "b", "image": "b" }], "containers": [app("m", &[80])] } }),
    );
    let typed: Pod = serde_json::from_value(p.clone()).expect("pod");
    let out = decide(
        &typed,
        &NamespaceInfo::enabled("ml"),
        &InjectorConfig::default(),
    );
    let mut doc = p;
    json_patch::patch(&mut doc, &out.patch).expect("patch applies");
    let names: Vec<&str> = doc["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["infermesh-sidecar", "a", "b"]);
}

#[test]
fn config_image_and_resources_are_used() {
    let cfg = InjectorConfig {
        image: "example/sidecar:9".into(),
        image_pull_policy: "Never".into(),
        resources: ProxyResources {
            cpu_request: "10m".into(),
            memory_request: "8Mi".into(),
            cpu_limit: Some("100m".into()),
            memory_limit: None,
        },
        ..InjectorConfig::default()
    };
    let p = pod(json!({ "spec": { "containers": [app("m", &[80])] } }));
    let out = decide(
        &serde_json::from_value(p.clone()).expect("pod"),
        &NamespaceInfo::enabled("ml"),
        &cfg,
    );
    let mut doc = p;
    json_patch::patch(&mut doc, &out.patch).expect("patch applies");
    let sc = &doc["spec"]["initContainers"][0];
    assert_eq!(sc["image"], "example/sidecar:9");
    assert_eq!(sc["imagePullPolicy"], "Never");
    assert_eq!(
        sc["resources"],
        json!({ "requests": { "cpu": "10m", "memory": "8Mi" }, "limits": { "cpu": "100m" } })
    );
}

#[test]
fn injected_pods_are_labelled_for_the_service_and_skipped_ones_are_not() {
    let cfg = InjectorConfig::default();
    let model = || json!({ "spec": { "containers": [app("m", &[8080])] } });
    let label = |p: Value, ns: &NamespaceInfo| {
        let out = decide(&serde_json::from_value(p.clone()).expect("pod"), ns, &cfg);
        let mut doc = p;
        json_patch::patch(&mut doc, &out.patch).expect("patch applies");
        doc["metadata"]["labels"][infermesh_crds::SIDECAR_LABEL].clone()
    };
    assert_eq!(
        label(pod(model()), &NamespaceInfo::enabled("ml")),
        json!("injected")
    );
    let opted_out = pod(json!({
        "metadata": { "annotations": { "infermesh.io/inject": "disabled" } },
        "spec": { "containers": [app("m", &[8080])] },
    }));
    assert_eq!(label(opted_out, &NamespaceInfo::enabled("ml")), Value::Null);
    assert_eq!(
        label(pod(model()), &NamespaceInfo::new("plain")),
        Value::Null
    );
    // A label of that name set by hand on a pod the webhook injects is overwritten.
    let forged = pod(json!({
        "metadata": { "labels": { "infermesh.io/sidecar": "no" } },
        "spec": { "containers": [app("m", &[8080])] },
    }));
    assert_eq!(
        label(forged, &NamespaceInfo::enabled("ml")),
        json!("injected")
    );
}
