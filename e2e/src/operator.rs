//! What the operator's end-to-end tests need around a real cluster: the project's kubectl, a
//! throwaway namespace, the CRD installed from the generated YAML, and the operator binary running
//! as a host process against `KUBECONFIG` (killed when dropped).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// `kubectl get -n NS -o json ARGS...`, parsed; `None` when it failed or did not parse.
pub fn get_json(ns: &str, args: &[&str]) -> Option<serde_json::Value> {
    let mut full = vec!["get", "-n", ns, "-o", "json"];
    full.extend_from_slice(args);
    let out = kubectl(&full, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// `(status, reason, message)` of condition `type_` in `obj`'s status; empty when it has none.
pub fn condition(obj: &serde_json::Value, type_: &str) -> (String, String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let field = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (field("status"), field("reason"), field("message"))
}

/// The repository root (this crate lives in `<root>/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `Some(path)` when a cluster is configured; tests print why they skip otherwise.
pub fn kubeconfig_or_skip(test: &str) -> Option<String> {
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            eprintln!("SKIP {test}: KUBECONFIG is not set (no cluster to test against)");
            None
        }
    }
}

/// The kubectl to use: `$KUBECTL`, else the project's `build/bin/kubectl`, else `kubectl` on PATH.
pub fn kubectl_path() -> PathBuf {
    if let Ok(k) = std::env::var("KUBECTL") {
        return PathBuf::from(k);
    }
    let local = repo_root().join("build/bin/kubectl");
    if local.exists() {
        return local;
    }
    PathBuf::from("kubectl")
}

/// Runs kubectl with `args`, feeding `stdin` if given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_path());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {}: {e}; set KUBECTL to the project's kubectl",
            kubectl_path().display()
        ),
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // kubectl may exit early on a bad argument; its stderr tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .expect("kubectl runs to completion")
}

/// Runs kubectl and panics with its stderr unless it succeeds; returns stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs (or updates) the ModelService CRD from `deploy/crds/modelservice.yaml` and waits until
/// it is served. Done once per test process.
pub fn install_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = repo_root().join("deploy/crds/modelservice.yaml");
        kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                &path.to_string_lossy(),
            ],
            None,
        );
        kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/modelservices.infermesh.io",
            ],
            None,
        );
    });
}

/// A namespace `operator-e2e-<suffix>-<pid>`, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn create(suffix: &str) -> Self {
        let name = format!("operator-e2e-{suffix}-{}", std::process::id());
        let _ = kubectl(
            &["delete", "namespace", &name, "--wait=true", "--timeout=60s"],
            None,
        );
        kubectl_ok(&["create", "namespace", &name], None);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // ModelServices left behind (no operator running any more) would hold the namespace in
        // Terminating through their finalizer: strip it first.
        let names = kubectl(&["get", "msvc", "-n", &self.name, "-o", "name"], None);
        for obj in String::from_utf8_lossy(&names.stdout).lines() {
            let _ = kubectl(
                &[
                    "patch",
                    "-n",
                    &self.name,
                    obj,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
                None,
            );
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Path of the operator binary: `$INFERMESH_OPERATOR_BIN`, else built from this checkout.
pub fn operator_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        built_binary(
            "infermesh-operator",
            "infermesh-operator",
            "INFERMESH_OPERATOR_BIN",
        )
    })
    .clone()
}

/// Path of binary `bin` of workspace package `package`: `$<env>` when set, else built from this
/// checkout with cargo (an up-to-date build costs about a second; cargo releases its lock before
/// running tests).
pub fn built_binary(package: &str, bin: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", package, "--bin", bin])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join(bin)
}

/// A free loopback port for an admin server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The operator as a host process, scoped to one namespace (its Lease lives there too).
pub struct OperatorProcess {
    child: Child,
    namespace: String,
    pub admin_port: u16,
    pub log_path: PathBuf,
}

impl OperatorProcess {
    pub fn start(namespace: &str, identity: &str) -> Self {
        Self::start_with(namespace, identity, None)
    }

    /// Like [`OperatorProcess::start`], with another kubeconfig (e.g. one that impersonates the
    /// operator's service account).
    pub fn start_with(namespace: &str, identity: &str, kubeconfig: Option<&Path>) -> Self {
        let admin_port = free_port();
        let log_path =
            std::env::temp_dir().join(format!("infermesh-operator-{namespace}-{identity}.log"));
        let log = std::fs::File::create(&log_path).expect("operator log file");
        let mut cmd = Command::new(operator_binary());
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let child = cmd
            .args([
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ])
            .args(["--lease-seconds", "6"])
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("operator log file handle"))
            .stderr(log)
            .spawn()
            .expect("the operator binary starts");
        Self {
            child,
            namespace: namespace.to_string(),
            admin_port,
            log_path,
        }
    }

    /// GET `path` on the admin server: (status code, body), or `None` if it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.get(9..12)?.parse().ok()?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    /// The process's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for OperatorProcess {
    /// Deletes the namespace's ModelServices while the operator still runs their finalizers.
    fn drop(&mut self) {
        if !self.exited() {
            let _ = kubectl(
                &[
                    "delete",
                    "msvc",
                    "--all",
                    "-n",
                    &self.namespace,
                    "--timeout=30s",
                ],
                None,
            );
        }
        self.kill();
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deployment manifest (JSON) of `replicas` pods labelled `app=<app>, version=<version>` and
/// `infermesh.io/modelservice=<app>`, running `image` (the example model server, else pause).
pub fn deployment(name: &str, app: &str, version: &str, replicas: u32, image: &str) -> String {
    let container = if image.contains("examples") {
        serde_json::json!({
            "name": "model", "image": image, "imagePullPolicy": "Never",
            "command": ["/usr/local/bin/infermesh-model-server", "--port", "8080", "--version", version],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1}
        })
    } else {
        serde_json::json!({"name": "model", "image": image, "imagePullPolicy": "Never"})
    };
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "version": version}},
            "template": {
                "metadata": {"labels": {"app": app, "version": version, "infermesh.io/modelservice": app}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}
            }
        }
    })
    .to_string()
}

/// The example model-server image if the node has it, else the pause image.
pub fn workload_image() -> String {
    let images = kubectl(
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.images[*].names}",
        ],
        None,
    );
    let listed = String::from_utf8_lossy(&images.stdout);
    if listed.contains("infermesh/examples:0.1.0") {
        "infermesh/examples:0.1.0".into()
    } else {
        "infermesh/pause:0.1.0".into()
    }
}
