//! What the full-mesh tests need: infermesh installed from `deploy/` exactly as a user does it
//! (`kubectl apply -k`, operator and webhook as pods from the built images) and removed again,
//! the example manifests applied to a namespace of the test's own, and commands run inside pods
//! (`kubectl exec`), where the example image's `infermesh-client` is the only tool.
//!
//! Every wait is bounded; the install guard uninstalls on drop, so a failed test leaves nothing
//! behind (the CRD stays only when it was there before, since other users' ModelServices
//! depend on it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_yaml::Value;

use crate::operator::{kubectl, kubectl_ok, kubectl_path, repo_root, wait_for};

/// The CRD that `deploy/` installs.
pub const CRD: &str = "customresourcedefinitions.apiextensions.k8s.io/modelservices.infermesh.io";

/// `kubectl kustomize DIR`, split into documents.
pub fn render(dir: &Path) -> Vec<Value> {
    let text = kubectl_ok(&["kustomize", &dir.to_string_lossy()], None);
    documents(&text)
}

/// The non-empty YAML documents of a multi-document text.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `kind` of a document.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

/// Documents back to one multi-document YAML text.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .filter_map(|d| serde_yaml::to_string(d).ok())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Moves every namespaced object into `ns` (Namespace objects are left out): lets a server-side
/// dry run validate objects whose namespace does not exist yet.
pub fn into_namespace(docs: &[Value], ns: &str) -> Vec<Value> {
    docs.iter()
        .filter(|d| kind(d) != "Namespace")
        .cloned()
        .map(|mut d| {
            if d["metadata"]["namespace"].is_string() {
                d["metadata"]["namespace"] = Value::from(ns);
            }
            d
        })
        .collect()
}

/// Namespace where [`wait_admission_path`] tries a pod; injection is on there.
const ADMISSION_PROBE_NS: &str = "infermesh-admission-probe";

/// Waits until the API server can call the webhook through its Service. Right after the rollout
/// the Service may still refuse connections for a moment (the node's proxy has not programmed it
/// yet), and a pod created in an injecting namespace then fails. A server-side dry run of a pod in
/// such a namespace goes through the whole admission path without creating anything.
pub fn wait_admission_path() -> Result<(), String> {
    let ns = ADMISSION_PROBE_NS;
    let _ = kubectl(&["create", "namespace", ns], None);
    run(&[
        "label",
        "namespace",
        ns,
        "infermesh.io/inject=enabled",
        "--overwrite",
    ])?;
    run(&[
        "annotate",
        "namespace",
        ns,
        "infermesh.io/inject=enabled",
        "--overwrite",
    ])?;
    let probe = [
        "-n",
        ns,
        "run",
        "admission-probe",
        "--image=infermesh/pause:0.1.0",
        "--restart=Never",
        "--dry-run=server",
        "-o",
        "name",
    ];
    let admitted = wait_for(Duration::from_secs(60), || {
        kubectl(&probe, None).status.success().then_some(())
    });
    let _ = kubectl(&["delete", "namespace", ns, "--wait=false"], None);
    admitted.ok_or_else(|| {
        format!(
            "pods in an injecting namespace were still refused 60s after the rollout:\n{}",
            system_pods()
        )
    })
}

/// infermesh installed with `kubectl apply -k deploy/`; uninstalled by [`Install::uninstall`] or
/// on drop.
pub struct Install {
    dir: PathBuf,
    crd_was_there: bool,
    done: bool,
}

impl Install {
    /// Applies `deploy/` and waits until the operator and webhook are rolled out and the webhook
    /// has written its CA into the MutatingWebhookConfiguration.
    pub fn apply() -> Result<Self, String> {
        let dir = repo_root().join("deploy");
        let crd_was_there = kubectl(&["get", CRD], None).status.success();
        let me = Self {
            dir,
            crd_was_there,
            done: false,
        };
        run(&["apply", "-k", &me.dir.to_string_lossy()])?;
        run(&["wait", "--for=condition=Established", "--timeout=60s", CRD])?;
        for d in ["infermesh-operator", "infermesh-webhook"] {
            run(&[
                "-n",
                "infermesh-system",
                "rollout",
                "status",
                &format!("deployment/{d}"),
                "--timeout=180s",
            ])
            .map_err(|e| format!("{e}\n{}", system_pods()))?;
        }
        wait_for(Duration::from_secs(60), || {
            let out = kubectl(
                &[
                    "get",
                    "mutatingwebhookconfiguration",
                    "infermesh-webhook",
                    "-o",
                    "jsonpath={.webhooks[*].clientConfig.caBundle}",
                ],
                None,
            );
            (!out.stdout.is_empty()).then_some(())
        })
        .ok_or("the webhook did not write caBundle into its configuration within 60s")?;
        wait_admission_path()?;
        Ok(me)
    }

    /// Deletes what `deploy/` created and waits until it is gone (the CRD only when this install
    /// created it).
    pub fn uninstall(&mut self) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let docs: Vec<Value> = render(&self.dir)
            .into_iter()
            .filter(|d| !(self.crd_was_there && kind(d) == "CustomResourceDefinition"))
            .collect();
        run_stdin(
            &[
                "delete",
                "-f",
                "-",
                "--ignore-not-found",
                "--wait=true",
                "--timeout=120s",
            ],
            &to_yaml(&docs),
        )?;
        wait_for(Duration::from_secs(120), || {
            (!kubectl(&["get", "namespace", "infermesh-system"], None)
                .status
                .success())
            .then_some(())
        })
        .ok_or("namespace infermesh-system still exists 120s after kubectl delete")?;
        Ok(())
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if let Err(e) = self.uninstall() {
            eprintln!("uninstalling deploy/ failed: {e}");
        }
    }
}

/// One line per pod of infermesh-system, for failure messages.
pub fn system_pods() -> String {
    String::from_utf8_lossy(
        &kubectl(
            &["-n", "infermesh-system", "get", "pods", "-o", "wide"],
            None,
        )
        .stdout,
    )
    .into_owned()
}

/// Runs kubectl; Err(stderr) unless it succeeds.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = kubectl(args, None);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Runs kubectl with `stdin`; Err(stderr) unless it succeeds.
pub fn run_stdin(args: &[&str], stdin: &str) -> Result<String, String> {
    let out = kubectl(args, Some(stdin));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `kubectl -n NS exec POD -c CONTAINER -- infermesh-client ARGS...`, bounded by the client's
/// own `--timeout-secs`; returns (success, stdout).
pub fn client_exec(ns: &str, pod: &str, container: &str, args: &[&str]) -> (bool, String) {
    let mut full = vec![
        "-n",
        ns,
        "exec",
        pod,
        "-c",
        container,
        "--",
        "/usr/local/bin/infermesh-client",
    ];
    full.extend_from_slice(args);
    let out = kubectl(&full, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The same as [`client_exec`], started in the background.
pub fn client_spawn(ns: &str, pod: &str, container: &str, args: &[&str]) -> std::io::Result<Child> {
    Command::new(kubectl_path())
        .args(["-n", ns, "exec", pod, "-c", container, "--"])
        .arg("/usr/local/bin/infermesh-client")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// The last JSON line of `infermesh-client load` output.
pub fn load_summary(out: &str) -> Option<serde_json::Value> {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v.get("total").is_some())
}

/// Sum of `infermesh_requests_total` samples of `service`/`variant` (every status class) in a
/// Prometheus text.
pub fn requests_total(metrics: &str, service: &str, variant: &str) -> u64 {
    let want_s = format!("service=\"{service}\"");
    let want_v = format!("variant=\"{variant}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("infermesh_requests_total{"))
        .filter(|l| l.contains(&want_s) && l.contains(&want_v))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A namespace `deploy-e2e-<what>-<pid>`, deleted (and waited for) on drop.
pub struct Namespace(pub String);

impl Namespace {
    pub fn create(what: &str, inject: bool) -> Result<Self, String> {
        let name = format!("deploy-e2e-{what}-{}", std::process::id());
        let _ = kubectl(
            &["delete", "namespace", &name, "--wait=true", "--timeout=90s"],
            None,
        );
        let annotation = if inject {
            "  annotations:\n    infermesh.io/inject: enabled\n"
        } else {
            ""
        };
        run_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{annotation}"),
        )?;
        Ok(Self(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "namespace",
                &self.0,
                "--wait=true",
                "--timeout=120s",
            ],
            None,
        );
    }
}

/// Starts pod `name` (label `app=<name>`) in `ns` from the examples image, with the client
/// binary to exec and a model server keeping it alive, and waits until it is Ready.
pub fn client_pod(ns: &str, name: &str) -> Result<(), String> {
    run(&[
        "-n",
        ns,
        "run",
        name,
        "--image=infermesh/examples:0.1.0",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        &format!("--labels=app={name}"),
        "--command",
        "--",
        "/usr/local/bin/infermesh-model-server",
        "--port",
        "9090",
        "--version",
        name,
    ])?;
    run(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=120s",
    ])?;
    Ok(())
}

/// Waits until the webhook has mirrored `ns`'s injection annotation onto the label its
/// configuration selects on (pods created before that get no sidecar).
pub fn wait_injecting(ns: &str) -> Result<(), String> {
    wait_for(Duration::from_secs(30), || {
        let out = kubectl(&["get", "namespace", ns, "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["metadata"]["labels"]["infermesh.io/inject"] == "enabled").then_some(())
    })
    .ok_or_else(|| format!("the webhook did not label the annotated namespace {ns} within 30s"))
}

/// Waits until `deployments` of `ns` are rolled out and ModelService `msvc` is Ready.
pub fn wait_rolled_out(ns: &str, deployments: &[&str], msvc: &str) -> Result<(), String> {
    for d in deployments {
        run(&[
            "-n",
            ns,
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=180s",
        ])?;
    }
    run(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        &format!("msvc/{msvc}"),
        "--timeout=120s",
    ])?;
    Ok(())
}

/// The /metrics of the sidecar of pod `pod` in `ns`, read from inside its container `container`
/// (the sidecar's admin port is on the pod's loopback).
pub fn sidecar_metrics(ns: &str, pod: &str, container: &str) -> Result<String, String> {
    let (ok, out) = client_exec(
        ns,
        pod,
        container,
        &["get", "http://127.0.0.1:15020/metrics"],
    );
    if ok {
        Ok(out)
    } else {
        Err(format!("reading {pod}'s sidecar /metrics failed: {out}"))
    }
}

/// The event lines of `infermesh-client stream` output: (ms since the request, text).
pub fn stream_events(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let (ms, text) = l.trim_start().split_once("ms ")?;
            let ms = ms.parse().ok()?;
            text.starts_with("data:").then(|| (ms, text.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_and_namespace_moves() {
        let docs = documents(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: c}\n",
        );
        assert_eq!(docs.len(), 3);
        let moved = into_namespace(&docs, "b");
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0]["metadata"]["namespace"], Value::from("b"));
        assert!(moved[1]["metadata"]["namespace"].is_null());
        assert_eq!(documents(&to_yaml(&moved)).len(), 2);
    }

    #[test]
    fn counts_requests_of_one_variant_over_status_classes() {
        let text = "# HELP x\ninfermesh_requests_total{service=\"llm\",variant=\"stable\",class=\"2xx\"} 90\n\
                    infermesh_requests_total{service=\"llm\",variant=\"stable\",class=\"5xx\"} 2\n\
                    infermesh_requests_total{service=\"llm\",variant=\"canary\",class=\"2xx\"} 10\n\
                    infermesh_requests_total{service=\"other\",variant=\"stable\",class=\"2xx\"} 7\n";
        assert_eq!(requests_total(text, "llm", "stable"), 92);
        assert_eq!(requests_total(text, "llm", "canary"), 10);
        assert_eq!(requests_total(text, "llm", "none"), 0);
    }

    #[test]
    fn parses_load_summary_and_stream_events() {
        let s = load_summary("noise\n{\"total\":5,\"ok\":5,\"errors\":0}\n").expect("summary");
        assert_eq!(s["ok"], 5);
        assert!(load_summary("{\"x\":1}").is_none());
        let ev = stream_events(
            "HTTP/1.1 200 OK\n    12ms data: {\"a\":1}\n    70ms data: [DONE]\n# 2 events in 70 ms\n",
        );
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1], (70, "data: [DONE]".to_string()));
    }
}
