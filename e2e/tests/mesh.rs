//! The whole mesh on a real cluster, installed as a user installs it: `kubectl apply -k deploy/`
//! (operator and webhook as pods from the built images), the example manifests in a namespace of
//! the test's own, then injection, config propagation, the canary split (measured by a client and
//! by the sidecar's metrics), retries through a pod killed under load, and a token stream through
//! two sidecars. Everything is removed at the end. Skipped when `KUBECONFIG` is unset.

use std::io::Read;
use std::time::{Duration, Instant};

use infermesh_e2e::mesh::{
    self, Install, Namespace, client_exec, client_pod, client_spawn, into_namespace, load_summary,
    render, requests_total, run, run_stdin, sidecar_metrics, stream_events, to_yaml,
    wait_injecting, wait_rolled_out,
};
use infermesh_e2e::operator::{kubeconfig_or_skip, kubectl, repo_root, wait_for};
use serde_json::Value;

const SIDECAR: &str = "infermesh-sidecar";

#[test]
fn every_deploy_manifest_passes_a_server_side_dry_run() -> Result<(), String> {
    if kubeconfig_or_skip("every_deploy_manifest_passes_a_server_side_dry_run").is_none() {
        return Ok(());
    }
    // Namespaced objects go to a scratch namespace: a dry run creates nothing, so
    // infermesh-system would not exist for them.
    let scratch = Namespace::create("dryrun", false)?;
    for dir in ["deploy", "deploy/overlays/local", "deploy/overlays/kind"] {
        let docs = render(&repo_root().join(dir));
        let kinds: Vec<&str> = docs.iter().map(mesh::kind).collect();
        for want in [
            "Namespace",
            "CustomResourceDefinition",
            "Deployment",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
            "Service",
            "ClusterRole",
            "Role",
        ] {
            assert!(kinds.contains(&want), "{dir} has no {want}: {kinds:?}");
        }
        let namespaces: Vec<serde_yaml::Value> = docs
            .iter()
            .filter(|d| mesh::kind(d) == "Namespace")
            .cloned()
            .collect();
        let out = run_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &to_yaml(&namespaces),
        )?;
        let out2 = run_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &to_yaml(&into_namespace(&docs, &scratch.0)),
        )?;
        let checked = (out + &out2).lines().count();
        assert_eq!(checked, docs.len(), "{dir}: one line per object");
        println!("{dir}: {checked} objects pass kubectl apply --dry-run=server");
    }
    // The optional NetworkPolicy, as a user applies it to a namespace of theirs.
    let policy = std::fs::read_to_string(repo_root().join("examples/networkpolicy.yaml"))
        .map_err(|e| e.to_string())?;
    run_stdin(
        &["-n", &scratch.0, "apply", "--dry-run=server", "-f", "-"],
        &policy,
    )?;
    Ok(())
}

/// Kubectl `get -o json` of one object, parsed.
fn get_json(ns: &str, what: &str) -> Option<Value> {
    let out = kubectl(&["-n", ns, "get", what, "-o", "json"], None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn pods(ns: &str, selector: &str) -> Vec<Value> {
    let out = kubectl(
        &["-n", ns, "get", "pods", "-l", selector, "-o", "json"],
        None,
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The revision a sidecar enforces (its admin /config, read from inside the pod).
fn sidecar_revision(ns: &str, pod: &str, container: &str) -> Option<String> {
    let (ok, out) = client_exec(
        ns,
        pod,
        container,
        &["get", "http://127.0.0.1:15020/config"],
    );
    let body = out.lines().skip(1).collect::<Vec<_>>().join("\n");
    ok.then(|| serde_json::from_str::<Value>(&body).ok())
        .flatten()?["revision"]
        .as_str()
        .map(str::to_string)
}

/// Waits until the ConfigMap's revision is the one every Ready model pod's sidecar and the
/// toolbox's sidecar enforce; returns it.
fn wait_propagated(ns: &str) -> Result<String, String> {
    let mut last = String::new();
    wait_for(Duration::from_secs(60), || {
        let cm = get_json(ns, "configmap/infermesh-mesh-config")?;
        let want = cm["metadata"]["annotations"]["infermesh.io/revision"]
            .as_str()?
            .to_string();
        let mut targets: Vec<(String, &str)> = pods(ns, "app=llm")
            .iter()
            .filter(|p| is_ready(p))
            .map(|p| (name(p), "model"))
            .collect();
        targets.push(("toolbox".into(), "toolbox"));
        for (pod, c) in &targets {
            let got = sidecar_revision(ns, pod, c).unwrap_or_default();
            if got != want {
                last = format!("{pod} enforces {got:?}, the ConfigMap says {want:?}");
                return None;
            }
        }
        Some(want)
    })
    .ok_or_else(|| format!("config not propagated within 60s: {last}"))
}

/// Kills (SIGKILL) the model server process of the pod with this uid, found on this machine (the
/// local cluster's node) by its cgroup; returns its pid.
fn kill_model_process(pod_uid: &str) -> Result<i32, String> {
    let underscored = pod_uid.replace('-', "_");
    let procs = std::fs::read_dir("/proc").map_err(|e| e.to_string())?;
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("infermesh-model-server") {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(pod_uid) || cgroup.contains(&underscored) {
            let out = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .output()
                .map_err(|e| e.to_string())?;
            return if out.status.success() {
                Ok(pid)
            } else {
                Err(format!(
                    "kill -9 {pid}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            };
        }
    }
    Err(format!(
        "no infermesh-model-server process of pod {pod_uid} on this machine (is the cluster local?)"
    ))
}

/// Runs a load from the toolbox pod; returns the parsed summary.
fn load(ns: &str, args: &[&str]) -> Result<Value, String> {
    let (ok, out) = client_exec(ns, "toolbox", "toolbox", args);
    let summary = load_summary(&out).ok_or_else(|| format!("no load summary in: {out}"))?;
    if !ok {
        return Err(format!("load {args:?} had errors: {summary}"));
    }
    Ok(summary)
}

fn by_version(s: &Value, v: &str) -> u64 {
    s["byVersion"][v].as_u64().unwrap_or(0)
}

fn assert_split(s: &Value, stable: f64, what: &str) {
    let total = s["total"].as_u64().unwrap_or(0) as f64;
    let v1 = 100.0 * by_version(s, "v1") as f64 / total;
    let v2 = 100.0 * by_version(s, "v2") as f64 / total;
    println!(
        "{what}: v1 {v1:.1}% (want {stable}), v2 {v2:.1}% (want {})",
        100.0 - stable
    );
    assert!(
        (v1 - stable).abs() <= 3.0,
        "{what}: v1 {v1:.1}% not within 3% of {stable}: {s}"
    );
    assert!(
        (v2 - (100.0 - stable)).abs() <= 3.0,
        "{what}: v2 {v2:.1}%: {s}"
    );
}

fn toolbox_metrics(ns: &str) -> Result<String, String> {
    sidecar_metrics(ns, "toolbox", "toolbox")
}

/// `reason`'s count in `infermesh_routed_markers_refused_total` of the sidecar of model pod `pod`.
fn markers_refused(ns: &str, pod: &str, reason: &str) -> Result<u64, String> {
    let out = sidecar_metrics(ns, pod, "model")?;
    let line = format!("infermesh_routed_markers_refused_total{{reason=\"{reason}\"}} ");
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn spoofed_markers_are_routed_by_the_weights(n: &str, started: &Instant) -> Result<(), String> {
    let target = pods(n, "version=v1")
        .into_iter()
        .find(is_ready)
        .ok_or("no ready v1 pod")?;
    let (pod, ip) = (
        name(&target),
        target["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    for reason in ["bad-proof", "no-key", "expired"] {
        assert_eq!(
            markers_refused(n, &pod, reason)?,
            0,
            "{pod}: markers of this namespace's sidecars all proved ({reason})"
        );
    }
    let before = markers_refused(n, &pod, "unsigned")?;
    let outsider = Namespace::create("outsider", false)?;
    let o = outsider.0.as_str();
    client_pod(o, "spoofer")?;
    let url = format!("http://{ip}:15006/");
    let (ok, out) = client_exec(
        o,
        "spoofer",
        "spoofer",
        &[
            "load",
            &url,
            "-H",
            "Host: llm",
            "-H",
            "x-infermesh-routed: llm/canary",
            "--requests=100",
            "--concurrency=4",
        ],
    );
    let s = load_summary(&out).ok_or_else(|| format!("no load summary in: {out}"))?;
    assert!(ok, "spoofed load had errors: {s}");
    println!(
        "[{:>4}s] spoofed llm/canary markers from {o}: {s}",
        started.elapsed().as_secs()
    );
    assert!(
        by_version(&s, "v2") <= 20 && by_version(&s, "v1") >= 80,
        "the spoofed marker was honoured: {s}"
    );
    assert_eq!(
        markers_refused(n, &pod, "unsigned")? - before,
        100,
        "{pod} counts each spoofed marker"
    );
    Ok(())
}

#[test]
fn the_mesh_installed_from_deploy_routes_splits_retries_and_streams() -> Result<(), String> {
    if kubeconfig_or_skip("the_mesh_installed_from_deploy_routes_splits_retries_and_streams")
        .is_none()
    {
        return Ok(());
    }
    let started = Instant::now();
    let mut install = Install::apply()?;
    println!(
        "[{:>4}s] deploy/ installed and rolled out",
        started.elapsed().as_secs()
    );
    let ns = Namespace::create("mesh", true)?;
    let n = ns.0.as_str();
    // The webhook mirrors the annotation onto the label its configuration selects on.
    wait_injecting(n)?;

    // A long-lived pod with the example binaries and a sidecar of its own: the mesh's client.
    // It starts before the namespace has any ModelService: its sidecar, with no config to read
    // yet, serves an empty one and gets ready (it then picks the config up as it appears).
    client_pod(n, "toolbox")?;

    // The example manifests, moved into the test's namespace; the server accepts them.
    let examples = render(&repo_root().join("examples/manifests"));
    let yaml = to_yaml(&into_namespace(&examples, n));
    run_stdin(&["apply", "--dry-run=server", "-f", "-"], &yaml)?;
    run_stdin(&["apply", "-f", "-"], &yaml)?;
    wait_rolled_out(n, &["llm-v1", "llm-v2"], "llm")?;
    println!("[{:>4}s] examples Ready", started.elapsed().as_secs());

    // Injection: every pod carries the native sidecar, and the webhook says so.
    let model_pods = pods(n, "app=llm");
    assert_eq!(model_pods.len(), 3, "llm-v1 x2 + llm-v2 x1");
    for p in model_pods.iter().chain(pods(n, "app=toolbox").iter()) {
        let init = p["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            init.iter()
                .any(|c| c["name"] == SIDECAR && c["restartPolicy"] == "Always"),
            "{} has no native sidecar",
            name(p)
        );
        assert_eq!(
            p["metadata"]["annotations"]["infermesh.io/injection-status"],
            "injected"
        );
    }
    let msvc = get_json(n, "msvc/llm").ok_or("no msvc/llm")?;
    assert_eq!(msvc["status"]["readyEndpoints"], 3, "{}", msvc["status"]);

    // Config propagation: ConfigMap -> every sidecar's /config.
    let rev = wait_propagated(n)?;
    println!(
        "[{:>4}s] every sidecar enforces revision {rev}",
        started.elapsed().as_secs()
    );

    // Split through the ModelService's Service (what users call).
    let s = load(
        n,
        &["load", "http://llm/", "--requests=1000", "--concurrency=8"],
    )?;
    assert_split(&s, 90.0, "90/10 through the Service");
    // Split through the toolbox's own sidecar (outbound 15001): its metrics count every request
    // once, by variant, and must agree with what the client saw.
    let before = toolbox_metrics(n)?;
    let s = load(
        n,
        &[
            "load",
            "http://127.0.0.1:15001/",
            "-H",
            "Host: llm",
            "--requests=1000",
            "--concurrency=8",
        ],
    )?;
    assert_split(&s, 90.0, "90/10 through the outbound sidecar");
    let after = toolbox_metrics(n)?;
    for (variant, version) in [("stable", "v1"), ("canary", "v2")] {
        let counted =
            requests_total(&after, "llm", variant) - requests_total(&before, "llm", variant);
        assert_eq!(
            counted,
            by_version(&s, version),
            "sidecar metrics for {variant} vs client"
        );
    }
    // The header route sends beta users to the canary only.
    let s = load(
        n,
        &[
            "load",
            "http://llm/",
            "-H",
            "x-user-cohort: beta",
            "--requests=50",
            "--concurrency=5",
        ],
    )?;
    assert_eq!(by_version(&s, "v2"), 50, "beta route: {s}");

    // Trust: a pod of another namespace sends `x-infermesh-routed: llm/canary` straight to a v1
    // pod's inbound port. It cannot read this namespace's mesh key, so the marker proves nothing:
    // the sidecar routes those requests by the weights (90/10) instead of handing them all to the
    // canary, and counts each refusal. Meshed traffic of this namespace, proven, counts none.
    spoofed_markers_are_routed_by_the_weights(n, &started)?;

    // A patch to 50/50 reaches every sidecar as a new revision, and the split follows.
    run(&[
        "-n",
        n,
        "patch",
        "msvc",
        "llm",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/variants/0/weight","value":50},{"op":"replace","path":"/spec/variants/1/weight","value":50}]"#,
    ])?;
    let rev2 = wait_for(Duration::from_secs(60), || {
        wait_propagated(n).ok().filter(|r| *r != rev)
    })
    .ok_or("the 50/50 patch did not reach the sidecars within 60s")?;
    println!(
        "[{:>4}s] 50/50 enforces revision {rev2}",
        started.elapsed().as_secs()
    );
    let s = load(
        n,
        &["load", "http://llm/", "--requests=1000", "--concurrency=8"],
    )?;
    assert_split(&s, 50.0, "50/50 through the Service");

    // Retries: a model pod is killed during a load through the toolbox's sidecar; the client
    // sees no error (connect failures, resets and 502/503/504 are retried on another pod).
    let mut child = client_spawn(
        n,
        "toolbox",
        "toolbox",
        &[
            "load",
            "http://127.0.0.1:15001/",
            "-H",
            "Host: llm",
            "--requests=30000",
            "--concurrency=4",
            "--timeout-secs=120",
            "--allow-errors",
        ],
    )
    .map_err(|e| format!("starting kubectl exec: {e}"))?;
    std::thread::sleep(Duration::from_millis(1000));
    let victim = pods(n, "app=llm,version=v1")
        .first()
        .map(name)
        .ok_or("no v1 pod")?;
    run(&["-n", n, "delete", "pod", &victim, "--wait=false"])?;
    let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
    let status = wait_for(Duration::from_secs(150), || child.try_wait().ok().flatten());
    let Some(_status) = status else {
        let _ = child.kill();
        return Err("the load under a pod kill did not finish within 150s".into());
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let s = load_summary(&out).ok_or_else(|| format!("no load summary in: {out}"))?;
    println!("load while {victim} was deleted: {s}");
    let retries: Vec<String> = toolbox_metrics(n)?
        .lines()
        .filter(|l| l.starts_with("infermesh_retries_total"))
        .map(str::to_string)
        .collect();
    println!("toolbox sidecar: {retries:?}");
    assert!(
        still_running,
        "the load ended before the pod was deleted: {s}"
    );
    assert_eq!(
        s["errors"], 0,
        "client-visible errors while a pod was killed: {s}"
    );
    assert_eq!(s["total"], 30000);

    // Inference is POSTs: the model process of a v1 pod is killed (SIGKILL, from the node) under
    // a POST load. Calls that reach the dead model fail at its sidecar before any byte reached a
    // model (502 upstream-unreachable) or are cut mid-request; the example turns
    // retryNonIdempotent on, so the client sees neither.
    let victim = pods(n, "app=llm,version=v1")
        .into_iter()
        .find(is_ready)
        .ok_or("no ready v1 pod")?;
    let uid = victim["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut child = client_spawn(
        n,
        "toolbox",
        "toolbox",
        &[
            "load",
            "http://127.0.0.1:15001/v1/completions",
            "-H",
            "Host: llm",
            "--body",
            r#"{"prompt":"hello mesh","max_tokens":2}"#,
            "--requests=20000",
            "--concurrency=4",
            "--timeout-secs=120",
            "--allow-errors",
        ],
    )
    .map_err(|e| format!("starting kubectl exec: {e}"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let killed = kill_model_process(&uid)?;
    let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
    let status = wait_for(Duration::from_secs(150), || child.try_wait().ok().flatten());
    let Some(_status) = status else {
        let _ = child.kill();
        return Err("the POST load under a kill -9 did not finish within 150s".into());
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let s = load_summary(&out).ok_or_else(|| format!("no load summary in: {out}"))?;
    println!(
        "POST load while pid {killed} of {} was killed: {s}",
        name(&victim)
    );
    assert!(still_running, "the POST load ended before the kill: {s}");
    assert_eq!(s["errors"], 0, "client-visible errors after a kill -9: {s}");
    assert_eq!(s["total"], 20000);

    // Streaming through two sidecars: toolbox sidecar (outbound) -> model pod's sidecar -> model.
    let (ok, out) = client_exec(
        n,
        "toolbox",
        "toolbox",
        &[
            "stream",
            "http://127.0.0.1:15001/v1/chat/completions",
            "-H",
            "Host: llm",
            "--body",
            r#"{"messages":[{"role":"user","content":"one two three"}],"max_tokens":12,"stream":true}"#,
        ],
    );
    assert!(ok, "stream failed: {out}");
    let events = stream_events(&out);
    println!("stream through two sidecars:\n{out}");
    assert!(events.len() >= 13, "12 tokens + [DONE]: {out}");
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("data: [DONE]"));
    // The model writes a token every 50 ms: arrivals spread the same way, none bunched at the end.
    let first = events[0].0;
    let last_token = events[events.len() - 2].0;
    assert!(
        last_token - first >= 400,
        "events arrived together (buffered): {out}"
    );
    let halfway = events[events.len() / 2].0;
    assert!(halfway - first >= 150, "first half arrived at once: {out}");

    drop(ns);
    install.uninstall()?;
    println!("[{:>4}s] uninstalled", started.elapsed().as_secs());
    Ok(())
}
