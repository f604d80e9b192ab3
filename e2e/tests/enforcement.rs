//! End-to-end tests of what the sidecars enforce and which pods have one, against the cluster in
//! `KUBECONFIG`, the operator running as a host process built from this checkout:
//!
//! - a ModelService is `Ready` only once the sidecar of its serving pod reports the published
//!   revision. The cluster may hold no sidecar image built from this checkout, so the sidecar is
//!   this checkout's binary run on the host, and the pod is a `hostNetwork` pod (pod IP = node IP,
//!   an address of this host) with a container named like the sidecar: the operator asks
//!   `<pod IP>:15020` as it would any pod, and reaches the real sidecar. The sidecar reads its
//!   config from a file the test fills from the published ConfigMap (its Kubernetes watch is not
//!   what is tested here).
//! - a pod without the sidecar that a ModelService selects is listed as unmeshed, with a distinct
//!   reason for one that opted out, and is not an endpoint of the Service (its EndpointSlices).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use infermesh_e2e::operator::{
    OperatorProcess, TestNamespace, condition, get_json, install_crd, kubeconfig_or_skip,
    kubectl_ok, repo_root, wait_for,
};
use serde_json::{Value, json};

/// A ModelService `name` with one variant selecting `app=<name>`.
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

/// A pause pod `name` labelled for ModelService `app`; `containers` are extra containers' names.
fn pod(name: &str, app: &str, labels: Value, annotations: Value, spec: Value) -> String {
    let mut labels_all = json!({"app": app, "infermesh.io/modelservice": app});
    for (k, v) in labels.as_object().into_iter().flatten() {
        labels_all[k] = v.clone();
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels_all, "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "model", "image": "infermesh/pause:0.1.0", "imagePullPolicy": "Never"}
            ]
        }
    });
    for (k, v) in spec.as_object().into_iter().flatten() {
        pod["spec"][k] = v.clone();
    }
    pod.to_string()
}

/// The sidecar binary built from this checkout.
fn sidecar_binary() -> PathBuf {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "infermesh-sidecar",
            "--bin",
            "infermesh-sidecar",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building infermesh-sidecar failed");
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("debug/infermesh-sidecar")
}

/// The sidecar as a host process, its admin port on `ip:15020`, its config read from a file.
struct HostSidecar {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl HostSidecar {
    fn start(ip: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir();
        let config = dir.join(format!("infermesh-e2e-{tag}-mesh.json"));
        std::fs::write(&config, r#"{"revision":"e2e-before","services":[]}"#).unwrap();
        let log = dir.join(format!("infermesh-e2e-{tag}-sidecar.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(sidecar_binary())
            .arg("--admin")
            .arg(format!("{ip}:15020"))
            .args(["--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0"])
            .arg("--config-file")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("the sidecar binary starts");
        Self { child, config, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The node's InternalIP: a hostNetwork pod's IP, and (on the local cluster) an address of this
/// host. `None` when this host does not hold it (a kind node, a remote cluster).
fn node_ip_on_this_host() -> Option<String> {
    let out = kubectl_ok(
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
        ],
        None,
    );
    let ip = out.trim().to_string();
    std::net::TcpListener::bind((ip.as_str(), 0)).ok()?;
    Some(ip)
}

#[test]
fn a_model_service_is_ready_only_once_its_sidecar_reports_the_revision() {
    let test = "a_model_service_is_ready_only_once_its_sidecar_reports_the_revision";
    if kubeconfig_or_skip(test).is_none() {
        return;
    }
    let Some(ip) = node_ip_on_this_host() else {
        eprintln!("SKIP {test}: the node's IP is not an address of this host");
        return;
    };
    if std::net::TcpListener::bind((ip.as_str(), 15020)).is_err() {
        eprintln!("SKIP {test}: {ip}:15020 is taken on this host");
        return;
    }
    install_crd();
    let ns = TestNamespace::create("enf-ready");
    let n = ns.name.as_str();
    let sidecar = HostSidecar::start(&ip, n);
    let op = OperatorProcess::start(n, "enf-a");
    // Pod IP = node IP: the operator's ask of `<pod IP>:15020` reaches the host sidecar.
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&pod(
            "llm-meshed",
            "llm",
            json!({"infermesh.io/sidecar": "injected"}),
            json!({}),
            json!({
                "hostNetwork": true,
                "containers": [
                    {"name": "model", "image": "infermesh/pause:0.1.0", "imagePullPolicy": "Never"},
                    {"name": "infermesh-sidecar", "image": "infermesh/pause:0.1.0",
                     "imagePullPolicy": "Never"}
                ]
            }),
        )),
    );
    kubectl_ok(&["apply", "-n", n, "-f", "-"], Some(&model_service("llm")));
    let status = || get_json(n, &["msvc", "llm"]).map(|m| m["status"].clone());

    // Published, but the sidecar runs what it had: not Ready, and it says who lags.
    let message = wait_for(Duration::from_secs(60), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        let (s, reason, message) = condition(&ms, "Ready");
        let lagging = &ms["status"]["laggingSidecars"];
        (s == "False"
            && reason == "Propagating"
            && *lagging == json!([{"pod": "llm-meshed", "revision": "e2e-before"}]))
        .then_some(message)
    })
    .unwrap_or_else(|| {
        panic!(
            "not Propagating on the sidecar's own revision: {:?}\noperator log:\n{}\nsidecar log:\n{}",
            status(),
            op.log(),
            sidecar.log()
        )
    });
    assert!(
        message.contains("1 of 1 sidecar(s)") && message.contains("llm-meshed (runs e2e-before)"),
        "{message}"
    );
    let ms = get_json(n, &["msvc", "llm"]).unwrap();
    assert_eq!(ms["status"]["sidecarsTotal"], json!(1));
    assert_eq!(ms["status"]["sidecarsOnRevision"], json!(0));
    let revision = ms["status"]["revision"].as_str().unwrap().to_string();

    // The sidecar loads the published config: within seconds (no resync wait), Ready.
    let cm = get_json(n, &["configmap", "infermesh-mesh-config"]).expect("the mesh config");
    let mesh = cm["data"]["mesh.json"].as_str().expect("mesh.json");
    std::fs::write(&sidecar.config, mesh).unwrap();
    wait_for(Duration::from_secs(20), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        (condition(&ms, "Ready").0 == "True"
            && ms["status"]["sidecarsOnRevision"] == json!(1)
            && ms["status"]["laggingSidecars"].is_null())
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not Ready once the sidecar enforces {revision}: {:?}\noperator log:\n{}\nsidecar log:\n{}",
            status(),
            op.log(),
            sidecar.log()
        )
    });
    let events = kubectl_ok(&["get", "events", "-n", n, "-o", "json"], None);
    assert!(
        events.contains(&format!("mesh config revision {revision} published")),
        "the ConfigRegenerated event names the revision\n{events}"
    );
}

#[test]
fn pods_without_the_sidecar_are_listed_and_get_no_service_traffic() {
    if kubeconfig_or_skip("pods_without_the_sidecar_are_listed_and_get_no_service_traffic")
        .is_none()
    {
        return;
    }
    install_crd();
    let ns = TestNamespace::create("enf-unmeshed");
    let n = ns.name.as_str();
    let op = OperatorProcess::start(n, "enf-b");
    // As if created while the webhook was down, and one that opted out.
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&pod("llm-plain", "llm", json!({}), json!({}), json!({}))),
    );
    kubectl_ok(
        &["apply", "-n", n, "-f", "-"],
        Some(&pod(
            "llm-opted-out",
            "llm",
            json!({}),
            json!({"infermesh.io/inject": "disabled"}),
            json!({}),
        )),
    );
    kubectl_ok(&["apply", "-n", n, "-f", "-"], Some(&model_service("llm")));
    let status = || get_json(n, &["msvc", "llm"]).map(|m| m["status"].clone());

    let message = wait_for(Duration::from_secs(60), || {
        let ms = get_json(n, &["msvc", "llm"])?;
        let (s, reason, message) = condition(&ms, "SidecarsInjected");
        (s == "False"
            && reason == "UnmeshedPods"
            && ms["status"]["unmeshedPods"]
                == json!([
                    {"name": "llm-opted-out", "reason": "OptedOut"},
                    {"name": "llm-plain", "reason": "NotInjected"},
                ]))
        .then_some(message)
    })
    .unwrap_or_else(|| {
        panic!(
            "unmeshed pods not listed: {:?}\noperator log:\n{}",
            status(),
            op.log()
        )
    });
    assert!(
        message.contains(&format!("kubectl delete pod llm-plain -n {n}")),
        "{message}"
    );
    assert!(message.contains("the infermesh webhook is up"), "{message}");
    let describe = kubectl_ok(&["describe", "msvc", "llm", "-n", n], None);
    assert!(
        describe.contains("kubectl delete pod llm-plain"),
        "{describe}"
    );
    let warned = wait_for(Duration::from_secs(10), || {
        let e = kubectl_ok(&["get", "events", "-n", n, "-o", "json"], None);
        e.contains("UnmeshedPods").then_some(())
    });
    assert!(warned.is_some(), "no UnmeshedPods warning\n{}", op.log());

    // The Service selects injected pods only, and its EndpointSlices list neither pod, although
    // both are Ready and carry the ModelService label.
    let svc = get_json(n, &["service", "llm"]).expect("the Service");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"infermesh.io/modelservice": "llm", "infermesh.io/sidecar": "injected"}),
        "{svc:#}"
    );
    wait_for(Duration::from_secs(30), || {
        let pods = get_json(n, &["pods"])?;
        pods["items"]
            .as_array()?
            .iter()
            .all(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the pods did not get Ready: {:?}", get_json(n, &["pods"])));
    // Give the EndpointSlice controller a moment to act on Ready pods.
    std::thread::sleep(Duration::from_secs(3));
    let slices = get_json(
        n,
        &["endpointslices", "-l", "kubernetes.io/service-name=llm"],
    )
    .expect("EndpointSlices");
    let targets: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        targets.is_empty(),
        "unmeshed pods are Service endpoints: {targets:?}"
    );
}
