//! End-to-end tests of the ModelService API and the operator against the cluster in `KUBECONFIG`:
//! the CRD's validation (through `kubectl apply`), and the operator binary, run as a host process,
//! reconciling real Deployments' pods into the mesh config, Service, RBAC, status and events.

use std::time::{Duration, Instant};

use infermesh_e2e::operator::{
    OperatorProcess, TestNamespace, deployment, get_json, install_crd, kubeconfig_or_skip, kubectl,
    kubectl_ok, wait_for, workload_image,
};
use serde_json::{Value, json};

fn model_service(name: &str, stable: i64, canary: i64) -> Value {
    json!({
        "apiVersion": "infermesh.io/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "port": 8080,
            "variants": [
                {"name": "stable", "weight": stable, "selector": {"matchLabels": {"app": name, "version": "v1"}}},
                {"name": "canary", "weight": canary, "selector": {"matchLabels": {"app": name, "version": "v2"}}}
            ],
            "routes": [{"name": "beta", "match": {"headers": [{"name": "x-cohort", "exact": "beta"}]}, "variant": "canary"}],
            "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": ["gateway-error"]},
            "timeouts": {"idle": "30s"}
        }
    })
}

/// Deployments `llm-stable` (v1, `stable_replicas` pods) and `llm-canary` (v2, one pod), and the
/// ModelService `llm` over them at 90/10.
fn apply_llm_90_10(n: &str, image: &str, stable_replicas: u32) {
    for (name, version, replicas) in [
        ("llm-stable", "v1", stable_replicas),
        ("llm-canary", "v2", 1),
    ] {
        kubectl_ok(
            &["apply", "-n", n, "-f", "-"],
            Some(&deployment(name, "llm", version, replicas, image)),
        );
    }
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&model_service("llm", 90, 10).to_string()),
    );
}

fn condition(ms: &Value, type_: &str) -> String {
    ms["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The mesh config of `ns`, parsed.
fn mesh_config(ns: &str) -> Option<Value> {
    let cm = get_json(ns, &["configmap", "infermesh-mesh-config"])?;
    serde_json::from_str(cm["data"]["mesh.json"].as_str()?).ok()
}

/// Addresses of `variant` of service `svc` in the mesh config.
fn config_addresses(cfg: &Value, svc: &str, variant: &str) -> Vec<String> {
    let mut v: Vec<String> = cfg["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == svc)
        .flat_map(|s| s["variants"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["name"] == variant)
        .flat_map(|v| v["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// `ip:8080` of the Ready, non-terminating pods labelled `version=<version>`.
fn ready_pod_addresses(ns: &str, app: &str, version: &str) -> Vec<String> {
    let selector = format!("app={app},version={version}");
    let pods = get_json(ns, &["pods", "-l", &selector]).unwrap_or(Value::Null);
    let mut v: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|p| p["status"]["podIP"].as_str().map(|ip| format!("{ip}:8080")))
        .collect();
    v.sort();
    v
}

fn variant_ready(ms: &Value, variant: &str) -> i64 {
    ms["status"]["variants"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == variant))
        .and_then(|v| v["readyEndpoints"].as_i64())
        .unwrap_or(-1)
}

/// Scales `deploy` to `replicas`, waits for that many Ready pods, then gives the operator 2 s to
/// reflect them in the mesh config and the status. Returns how long the operator took.
fn scale_and_check(
    ns: &str,
    deploy: &str,
    version: &str,
    replicas: usize,
    op: &OperatorProcess,
) -> Duration {
    kubectl_ok(
        &[
            "scale",
            "-n",
            ns,
            "deployment",
            deploy,
            &format!("--replicas={replicas}"),
        ],
        None,
    );
    let pods = wait_for(Duration::from_secs(120), || {
        let p = ready_pod_addresses(ns, "llm", version);
        (p.len() == replicas).then_some(p)
    })
    .unwrap_or_else(|| panic!("{deploy} did not reach {replicas} Ready pods"));
    let seen = Instant::now();
    let followed = wait_for(Duration::from_secs(2), || {
        let cfg = mesh_config(ns)?;
        let ms = get_json(ns, &["msvc", "llm"])?;
        let ok = config_addresses(&cfg, "llm", "stable") == pods
            && variant_ready(&ms, "stable") == i64::try_from(replicas).ok()?;
        ok.then_some(())
    });
    let took = seen.elapsed();
    assert!(
        followed.is_some(),
        "config/status did not follow {deploy} at {replicas} replicas within 2 s: config {:?}, status {:?}\noperator log:\n{}",
        mesh_config(ns),
        get_json(ns, &["msvc", "llm"]).map(|m| m["status"].clone()),
        op.log()
    );
    took
}

#[test]
fn modelservice_is_reconciled_over_two_deployments() {
    if kubeconfig_or_skip("modelservice_is_reconciled_over_two_deployments").is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("life");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "life-a");
    let image = workload_image();
    eprintln!("workload image: {image}");
    apply_llm_90_10(n, &image, 2);

    // Ready=True, and the config lists exactly the Ready pods' IPs.
    let ms = wait_for(Duration::from_secs(180), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        (condition(&ms, "Ready") == "True").then_some(ms)
    })
    .unwrap_or_else(|| {
        panic!(
            "ModelService never became Ready: {:?}\noperator log:\n{}",
            get_json(n, &["msvc", "llm"]).map(|m| m["status"].clone()),
            op.log()
        )
    });
    assert_eq!(condition(&ms, "ConfigGenerated"), "True");
    assert_eq!(condition(&ms, "EndpointsAvailable"), "True");
    assert_eq!(ms["status"]["variantWeights"], "stable=90,canary=10");
    assert_eq!(
        ms["status"]["observedGeneration"],
        ms["metadata"]["generation"]
    );
    assert_eq!(
        ms["metadata"]["finalizers"],
        json!(["infermesh.io/cleanup"])
    );
    // Once every pod is Ready, the config lists their IPs and the status names that revision.
    let (cfg, ms) = wait_for(Duration::from_secs(60), || {
        let cfg = mesh_config(n)?;
        let ms = get_json(n, &["msvc", "llm"])?;
        let stable = ready_pod_addresses(n, "llm", "v1");
        (stable.len() == 2
            && config_addresses(&cfg, "llm", "stable") == stable
            && config_addresses(&cfg, "llm", "canary") == ready_pod_addresses(n, "llm", "v2")
            && cfg["revision"] == ms["status"]["revision"])
        .then_some((cfg, ms))
    })
    .unwrap_or_else(|| {
        panic!(
            "config does not list the pod IPs or its revision is not in the status: {:?}\nstatus: {:?}",
            mesh_config(n),
            get_json(n, &["msvc", "llm"]).map(|m| m["status"].clone())
        )
    });
    assert_eq!(variant_ready(&ms, "stable"), 2);
    assert_eq!(variant_ready(&ms, "canary"), 1);
    let svc_cfg = &cfg["services"][0];
    assert_eq!(svc_cfg["retries"]["attempts"], 3);
    assert_eq!(svc_cfg["timeouts"]["idleMs"], 30000);
    assert_eq!(svc_cfg["routes"][0]["variant"], "canary");

    // The fronting Service and the reader RBAC.
    let svc = get_json(n, &["service", "llm"]).expect("Service llm exists");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 15006);
    assert_eq!(svc["spec"]["selector"]["infermesh.io/modelservice"], "llm");
    assert_eq!(
        svc["metadata"]["ownerReferences"][0]["kind"],
        "ModelService"
    );
    let sa = format!("system:serviceaccount:{n}:default");
    let can = |what: &str| {
        let out = kubectl(&["auth", "can-i", "-n", n, "--as", &sa, "get", what], None);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can("configmap/infermesh-mesh-config"), "yes");
    assert_eq!(can("configmap/something-else"), "no");
    assert_eq!(can("secrets"), "no");

    // Scaling is followed within 2 s.
    let up = scale_and_check(n, "llm-stable", "v1", 3, &op);
    let down = scale_and_check(n, "llm-stable", "v1", 1, &op);
    eprintln!("scale followed in {up:?} (up) and {down:?} (down)");

    // New weights, new revision.
    let before = get_json(n, &["msvc", "llm"]).expect("msvc");
    let rev0 = before["status"]["revision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&model_service("llm", 50, 50).to_string()),
    );
    let after = wait_for(Duration::from_secs(10), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        (ms["status"]["variantWeights"] == "stable=50,canary=50"
            && ms["status"]["revision"].as_str().is_some_and(|r| r != rev0))
        .then_some(ms)
    })
    .unwrap_or_else(|| panic!("weights change not reflected\noperator log:\n{}", op.log()));
    let cfg = mesh_config(n).expect("config");
    assert_eq!(cfg["revision"], after["status"]["revision"]);
    assert_eq!(cfg["services"][0]["variants"][1]["weight"], 50);

    // What a person sees.
    let table = kubectl_ok(&["get", "msvc", "-n", n], None);
    for col in [
        "READY",
        "VARIANTS",
        "ENDPOINTS",
        "AGE",
        "stable=50,canary=50",
        "True",
    ] {
        assert!(
            table.contains(col),
            "`kubectl get msvc` lacks {col:?}:\n{table}"
        );
    }
    let describe = wait_for(Duration::from_secs(10), || {
        let d = kubectl_ok(&["describe", "msvc", "llm", "-n", n], None);
        d.contains("ConfigRegenerated").then_some(d)
    })
    .unwrap_or_else(|| kubectl_ok(&["describe", "msvc", "llm", "-n", n], None));
    for needle in [
        "Conditions:",
        "EndpointsAvailable",
        "ConfigGenerated",
        "stable=50,canary=50",
        "Ready Endpoints:",
        "Events:",
        "ConfigRegenerated",
    ] {
        assert!(
            describe.contains(needle),
            "`kubectl describe msvc` lacks {needle:?}:\n{describe}"
        );
    }

    let (code, metrics) = op.admin_get("/metrics").expect("admin server answers");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("infermesh_operator_reconciles_total"),
        "{metrics}"
    );
    assert_eq!(op.admin_get("/ready").map(|r| r.0), Some(200));

    // Deletion cleans up the config, the Service and the RBAC, then lets the object go.
    kubectl_ok(&["delete", "msvc", "llm", "-n", n, "--timeout=30s"], None);
    let gone = wait_for(Duration::from_secs(30), || {
        let none = get_json(n, &["configmap", "infermesh-mesh-config"]).is_none()
            && get_json(n, &["service", "llm"]).is_none()
            && get_json(n, &["role", "infermesh-mesh-config-reader"]).is_none()
            && get_json(n, &["msvc", "llm"]).is_none();
        none.then_some(())
    });
    assert!(
        gone.is_some(),
        "cleanup incomplete\noperator log:\n{}",
        op.log()
    );
}

#[test]
fn deleting_one_of_two_modelservices_keeps_the_other_in_the_config() {
    if kubeconfig_or_skip("deleting_one_of_two_modelservices_keeps_the_other_in_the_config")
        .is_none()
    {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("pair");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "pair-a");
    for name in ["alpha", "beta"] {
        kubectl_ok(
            &["apply", "-n", n, "-f", "-"],
            Some(&model_service(name, 100, 0).to_string()),
        );
    }
    let both = wait_for(Duration::from_secs(30), || {
        let cfg = mesh_config(n)?;
        (cfg["services"].as_array()?.len() == 2).then_some(cfg)
    })
    .unwrap_or_else(|| {
        panic!(
            "config never held both services\noperator log:\n{}",
            op.log()
        )
    });
    assert_eq!(
        both["services"][0]["name"], "alpha",
        "services are sorted by name"
    );
    let ms = get_json(n, &["msvc", "alpha"]).expect("alpha");
    assert_eq!(condition(&ms, "Ready"), "False", "no pods: not ready");
    assert_eq!(condition(&ms, "ConfigGenerated"), "True");
    let events = kubectl_ok(&["get", "events", "-n", n, "-o", "json"], None);
    assert!(
        events.contains("NoEndpoints"),
        "a Warning event says the variant has no endpoints"
    );

    // A selector the API accepts but that cannot select pods is reported, not retried hot.
    let mut bad = model_service("gamma", 100, 0);
    bad["spec"]["variants"][0]["selector"] =
        json!({"matchExpressions": [{"key": "version", "operator": "Near", "values": ["v1"]}]});
    kubectl_ok(&["apply", "-n", n, "-f", "-"], Some(&bad.to_string()));
    let reason = |ms: &Value| {
        ms["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "EndpointsAvailable"))
            .and_then(|c| c["reason"].as_str())
            .unwrap_or("")
            .to_string()
    };
    wait_for(Duration::from_secs(20), || {
        let ms = get_json(n, &["msvc", "gamma"])?;
        (reason(&ms) == "InvalidSelector").then_some(())
    })
    .unwrap_or_else(|| panic!("invalid selector not reported\noperator log:\n{}", op.log()));
    let events = kubectl_ok(&["get", "events", "-n", n, "-o", "json"], None);
    assert!(
        events.contains("InvalidSelector"),
        "a Warning event names the invalid selector"
    );

    kubectl_ok(&["delete", "msvc", "alpha", "-n", n, "--timeout=30s"], None);
    let left = wait_for(Duration::from_secs(10), || {
        let cfg = mesh_config(n)?;
        let names: Vec<_> = cfg["services"]
            .as_array()?
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        (names == [json!("beta"), json!("gamma")]).then_some(())
    });
    assert!(
        left.is_some(),
        "alpha not removed from the config: {:?}",
        mesh_config(n)
    );
    assert!(get_json(n, &["service", "alpha"]).is_none());
    assert!(get_json(n, &["service", "beta"]).is_some());

    // The namespace-wide objects come back at once when deleted by hand, config unchanged.
    let before = mesh_config(n).expect("config");
    let published = [
        ["configmap", "infermesh-mesh-config"],
        ["role", "infermesh-mesh-config-reader"],
        ["rolebinding", "infermesh-mesh-config-reader"],
    ];
    for [kind, name] in published {
        kubectl_ok(&["delete", kind, name, "-n", n, "--wait=true"], None);
    }
    let back = wait_for(Duration::from_secs(20), || {
        published
            .iter()
            .all(|[kind, name]| get_json(n, &[kind, name]).is_some())
            .then_some(())
    });
    assert!(
        back.is_some(),
        "deleted objects not republished: {:?}\noperator log:\n{}",
        published.map(|[kind, name]| get_json(n, &[kind, name]).is_some()),
        op.log()
    );
    assert_eq!(mesh_config(n), Some(before), "the same config comes back");
}

#[test]
fn only_one_operator_leads_and_a_standby_takes_over() {
    if kubeconfig_or_skip("only_one_operator_leads_and_a_standby_takes_over").is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("lease");
    let n = ns.name.as_str();
    let leader_gauge = |op: &OperatorProcess| {
        op.admin_get("/metrics")
            .map(|(_, body)| body.contains("infermesh_operator_leader 1"))
            .unwrap_or(false)
    };
    let mut a = OperatorProcess::start(n, "lease-a");
    wait_for(Duration::from_secs(20), || leader_gauge(&a).then_some(()))
        .unwrap_or_else(|| panic!("first operator never led\n{}", a.log()));
    let b = OperatorProcess::start(n, "lease-b");
    wait_for(Duration::from_secs(10), || {
        b.admin_get("/ready").filter(|r| r.1.contains("standby"))
    })
    .unwrap_or_else(|| panic!("second operator not standing by\n{}", b.log()));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!leader_gauge(&b), "two leaders at once");

    a.kill();
    let start = Instant::now();
    wait_for(Duration::from_secs(20), || leader_gauge(&b).then_some(()))
        .unwrap_or_else(|| panic!("standby never took over\n{}", b.log()));
    eprintln!(
        "standby took over {:?} after the leader was killed",
        start.elapsed()
    );

    // The new leader reconciles.
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&model_service("gamma", 100, 0).to_string()),
    );
    wait_for(Duration::from_secs(20), || mesh_config(n))
        .unwrap_or_else(|| panic!("new leader did not reconcile\n{}", b.log()));
}

/// ModelService names a Service cannot take: (what, name). kubectl must refuse each with the
/// DNS-1035 message, since the operator names the fronting Service after the ModelService.
const INVALID_NAMES: [(&str, &str); 3] = [
    (
        "64 characters",
        "a234567890123456789012345678901234567890123456789012345678901234",
    ),
    ("starting with a digit", "1llm"),
    ("with a dot", "llm.v3"),
];

/// One invalid object: what to change in a valid spec, and the message kubectl must show.
struct Invalid {
    what: &'static str,
    patch: fn(&mut Value),
    expect: &'static str,
}

fn invalid_cases() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "weights sum to 90",
            patch: |s| s["variants"][1]["weight"] = json!(0),
            expect: "variant weights must sum to 100",
        },
        Invalid {
            what: "duplicate variant names",
            patch: |s| s["variants"][1]["name"] = json!("stable"),
            expect: "variant names must be unique",
        },
        Invalid {
            what: "variant name not a DNS label",
            patch: |s| s["variants"][0]["name"] = json!("Stable_1"),
            expect: "variant name must be a DNS label",
        },
        Invalid {
            what: "route to an unknown variant",
            patch: |s| s["routes"][0]["variant"] = json!("nightly"),
            expect: "every route must name a variant listed in spec.variants",
        },
        Invalid {
            what: "duration in words",
            patch: |s| s["timeouts"] = json!({"request": "5 seconds"}),
            expect: "must be a duration such as 500ms, 30s, 5m or 1h30m",
        },
        Invalid {
            what: "fractional duration",
            patch: |s| s["timeouts"] = json!({"idle": "1.5s"}),
            expect: "must be a duration such as",
        },
        Invalid {
            what: "too many attempts",
            patch: |s| s["retries"] = json!({"attempts": 11}),
            expect: "should be less than or equal to 10",
        },
        Invalid {
            what: "zero attempts",
            patch: |s| s["retries"] = json!({"attempts": 0}),
            expect: "should be greater than or equal to 1",
        },
        Invalid {
            what: "port above range",
            patch: |s| s["port"] = json!(70000),
            expect: "should be less than or equal to 65535",
        },
        Invalid {
            what: "port zero",
            patch: |s| s["port"] = json!(0),
            expect: "should be greater than or equal to 1",
        },
        Invalid {
            what: "no variants",
            patch: |s| {
                s["variants"] = json!([]);
                s["routes"] = json!([]);
            },
            expect: "should have at least 1 items",
        },
        Invalid {
            what: "empty selector",
            patch: |s| s["variants"][0]["selector"] = json!({}),
            expect: "variant selector must not be empty",
        },
        Invalid {
            what: "ConsistentHash without hashOn",
            patch: |s| s["loadBalancing"] = json!({"policy": "ConsistentHash"}),
            expect: "hashOn (the header to hash) is required when policy is ConsistentHash",
        },
        Invalid {
            what: "unknown policy",
            patch: |s| s["loadBalancing"] = json!({"policy": "Random"}),
            expect: "Unsupported value: \"Random\"",
        },
        Invalid {
            what: "unknown protocol",
            patch: |s| s["protocol"] = json!("HTTP3"),
            expect: "Unsupported value: \"HTTP3\"",
        },
        Invalid {
            what: "header match with two kinds",
            patch: |s| s["routes"][0]["match"]["headers"][0]["prefix"] = json!("be"),
            expect: "a header match needs exactly one of exact, prefix or regex",
        },
        Invalid {
            what: "route match with nothing",
            patch: |s| s["routes"][0]["match"] = json!({}),
            expect: "a route match needs at least one header match, a pathPrefix or a model",
        },
        Invalid {
            what: "inference scoring without InferenceAware",
            patch: |s| {
                s["loadBalancing"] =
                    json!({"policy": "LeastRequest", "inference": {"prefixWeight": 5}})
            },
            expect: "inference (scoring weights) applies to policy InferenceAware only",
        },
        Invalid {
            what: "inference scoring with every weight 0",
            patch: |s| {
                s["loadBalancing"] = json!({"policy": "InferenceAware", "inference":
                    {"queueWeight": 0, "kvCacheWeight": 0, "prefixWeight": 0, "loraWeight": 0}})
            },
            expect: "at least one of queueWeight, kvCacheWeight, prefixWeight, loraWeight must be above 0",
        },
        Invalid {
            what: "an unknown engine",
            patch: |s| s["engine"] = json!("Ollama"),
            expect: "Unsupported value: \"Ollama\"",
        },
        Invalid {
            what: "path prefix without slash",
            patch: |s| s["routes"][0]["match"] = json!({"pathPrefix": "v1"}),
            expect: "should match '^/'",
        },
        Invalid {
            what: "weight above 100",
            patch: |s| {
                s["variants"][0]["weight"] = json!(150);
            },
            expect: "should be less than or equal to 100",
        },
        Invalid {
            what: "retriable-status-codes without codes",
            patch: |s| s["retries"] = json!({"attempts": 2, "retryOn": ["retriable-status-codes"]}),
            expect: "give the codes in retriableStatusCodes",
        },
        Invalid {
            what: "status code out of range",
            patch: |s| s["retries"] = json!({"attempts": 2, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [99]}),
            expect: "should be greater than or equal to 100",
        },
        Invalid {
            what: "backoff base above max",
            patch: |s| {
                s["retries"] = json!({"attempts": 2, "backoff": {"base": "2s", "max": "100ms"}})
            },
            expect: "backoff base must not exceed backoff max",
        },
        Invalid {
            what: "ejection base above max",
            patch: |s| {
                s["outlierDetection"] = json!({"baseEjectionTime": "2m", "maxEjectionTime": "30s"})
            },
            expect: "outlierDetection baseEjectionTime must not exceed maxEjectionTime",
        },
        Invalid {
            what: "negative failure count",
            patch: |s| s["outlierDetection"] = json!({"consecutiveFailures": -1}),
            expect: "should be greater than or equal to 0",
        },
        Invalid {
            what: "unknown retryOn",
            patch: |s| s["retries"] = json!({"attempts": 2, "retryOn": ["4xx"]}),
            expect: "Unsupported value: \"4xx\"",
        },
        Invalid {
            what: "the sidecar's inbound port",
            patch: |s| s["port"] = json!(15006),
            expect: "not one of the sidecar's (15001 outbound, 15006 inbound, 15020 admin)",
        },
        Invalid {
            what: "the sidecar's admin port",
            patch: |s| s["port"] = json!(15020),
            expect: "port must be the model container's own port",
        },
        Invalid {
            what: "zero first-byte timeout",
            patch: |s| s["timeouts"] = json!({"firstByte": "0s"}),
            expect: "must be longer than 0",
        },
        Invalid {
            what: "zero per-try timeout spelt in parts",
            patch: |s| s["retries"] = json!({"attempts": 2, "perTryTimeout": "0m00ms"}),
            expect: "must be longer than 0",
        },
        Invalid {
            what: "jitter above 1",
            patch: |s| {
                s["retries"] =
                    json!({"attempts": 2, "backoff": {"base": "1s", "max": "2s", "jitter": 1.5}})
            },
            expect: "should be less than or equal to 1",
        },
    ]
}

#[test]
fn invalid_modelservices_are_refused_with_a_message_saying_what_to_fix() {
    if kubeconfig_or_skip("invalid_modelservices_are_refused_with_a_message_saying_what_to_fix")
        .is_none()
    {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("invalid");
    let n = ns.name.as_str();
    // The unmodified object is accepted: every refusal below comes from its one change.
    let valid = model_service("valid", 90, 10);
    kubectl_ok(
        &["apply", "-n", n, "-f", "-", "--dry-run=server"],
        Some(&valid.to_string()),
    );

    let cases = invalid_cases();
    assert!(cases.len() >= 12);
    let mut failures = vec![];
    // Applies `obj` and says what is wrong if kubectl accepts it or refuses it without `expect`.
    let refusal = |obj: &Value, what: &str, expect: &str| -> Option<String> {
        let out = kubectl(&["apply", "-n", n, "-f", "-"], Some(&obj.to_string()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Some(format!("{what}: accepted"))
        } else if !stderr.contains(expect) {
            Some(format!("{what}: expected {expect:?} in {stderr}"))
        } else {
            None
        }
    };
    for (i, case) in cases.iter().enumerate() {
        let mut obj = valid.clone();
        obj["metadata"]["name"] = json!(format!("invalid-{i}"));
        (case.patch)(&mut obj["spec"]);
        failures.extend(refusal(&obj, case.what, case.expect));
    }
    for (what, name) in INVALID_NAMES {
        let mut obj = valid.clone();
        obj["metadata"]["name"] = json!(name);
        let what = format!("name {what}");
        failures.extend(refusal(
            &obj,
            &what,
            "metadata.name must be a DNS-1035 label",
        ));
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cluster-scoped objects of one test, deleted when dropped.
struct ClusterScoped(Vec<String>);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for obj in &self.0 {
            let _ = kubectl(&["delete", obj, "--ignore-not-found"], None);
        }
    }
}

#[test]
fn operator_works_with_the_deployed_rbac_only() {
    if kubeconfig_or_skip("operator_works_with_the_deployed_rbac_only").is_none() {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("rbac");
    let n = ns.name.as_str();

    // deploy/operator/rbac.yaml, bound to a service account of this namespace under unique names.
    let rbac_path = infermesh_e2e::operator::repo_root().join("deploy/operator/rbac.yaml");
    // kubectl prints one JSON object per document.
    let rbac_json = kubectl_ok(
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &rbac_path.to_string_lossy(),
        ],
        None,
    );
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&rbac_json)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("rbac.yaml converts to JSON");
    assert_eq!(
        objects.len(),
        4,
        "ClusterRole, ClusterRoleBinding, Role, RoleBinding"
    );
    let _cleanup = ClusterScoped(vec![
        format!("clusterrole/{n}"),
        format!("clusterrolebinding/{n}"),
    ]);
    kubectl_ok(&["create", "serviceaccount", "operator", "-n", n], None);
    for mut obj in objects {
        match obj["kind"].as_str().unwrap_or("") {
            "ClusterRole" => obj["metadata"]["name"] = json!(n),
            "ClusterRoleBinding" => {
                obj["metadata"]["name"] = json!(n);
                obj["roleRef"]["name"] = json!(n);
            }
            _ => obj["metadata"]["namespace"] = json!(n),
        }
        if let Some(subjects) = obj["subjects"].as_array_mut() {
            for s in subjects {
                s["name"] = json!("operator");
                s["namespace"] = json!(n);
            }
        }
        kubectl_ok(&["apply", "-f", "-"], Some(&obj.to_string()));
    }

    // A kubeconfig that acts as that service account.
    let mut config: Value = serde_json::from_str(&kubectl_ok(
        &["config", "view", "--raw", "--flatten", "-o", "json"],
        None,
    ))
    .expect("kubeconfig as JSON");
    for user in config["users"].as_array_mut().into_iter().flatten() {
        user["user"]["as"] = json!(format!("system:serviceaccount:{n}:operator"));
    }
    let kubeconfig = std::env::temp_dir().join(format!("{n}.kubeconfig.json"));
    std::fs::write(&kubeconfig, config.to_string()).expect("write kubeconfig");

    let op = OperatorProcess::start_with(n, "rbac-a", Some(&kubeconfig));
    let image = workload_image();
    apply_llm_90_10(n, &image, 1);
    wait_for(Duration::from_secs(180), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        (condition(&ms, "Ready") == "True").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not Ready with the deployed RBAC\noperator log:\n{}",
            op.log()
        )
    });
    kubectl_ok(&["delete", "msvc", "llm", "-n", n, "--timeout=30s"], None);
    let gone = wait_for(Duration::from_secs(30), || {
        (get_json(n, &["configmap", "infermesh-mesh-config"]).is_none()
            && get_json(n, &["service", "llm"]).is_none())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "cleanup failed with the deployed RBAC\n{}",
        op.log()
    );
    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator hit a permission error:\n{log}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}
