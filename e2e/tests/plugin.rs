//! `kubectl infermesh` on the local cluster. In a namespace set up as the demo is (the
//! examples: `llm` split 90/10 over llm-v1 and llm-v2), `check` passes on the healthy install; a
//! load of streamed chat completions, through the Service and through a client pod's own
//! sidecar, is shown by `stat llm` with both variants' request counts equal to the client's
//! (within 1 %) and their time to first token; then a pod that carries the ModelService label
//! but opted out of injection makes `check` fail, naming it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use infermesh_e2e::mesh::{
    Install, Namespace, client_exec, client_pod, into_namespace, load_summary, render, run,
    run_stdin, to_yaml, wait_injecting, wait_rolled_out,
};
use infermesh_e2e::operator::{built_binary, kubeconfig_or_skip, repo_root, wait_for};
use serde_json::Value;

fn plugin_binary() -> PathBuf {
    built_binary(
        "kubectl-infermesh",
        "kubectl-infermesh",
        "INFERMESH_PLUGIN_BIN",
    )
}

/// Runs the plugin (it reads `KUBECONFIG`, as kubectl does); returns (success, stdout+stderr).
fn plugin(args: &[&str]) -> (bool, String) {
    let out = Command::new(plugin_binary())
        .args(args)
        .output()
        .expect("kubectl-infermesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

const CHAT: &str = r#"{"model":"llm","max_tokens":4,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two three"}]}"#;

/// A load of `n` streamed chat completions from the toolbox pod to `url`; its count by version.
fn load(ns: &str, url: &str, host: Option<&str>, n: u32) -> Result<Value, String> {
    let requests = n.to_string();
    let mut args = vec![
        "load",
        url,
        "--body",
        CHAT,
        "--requests",
        &requests,
        "--concurrency",
        "8",
    ];
    let host = host.map(|h| format!("Host: {h}"));
    if let Some(h) = &host {
        args.extend(["-H", h]);
    }
    let (ok, out) = client_exec(ns, "toolbox", "toolbox", &args);
    let summary = load_summary(&out).ok_or_else(|| format!("no load summary in: {out}"))?;
    if !ok || summary["errors"] != 0 {
        return Err(format!("load to {url} had errors: {out}"));
    }
    Ok(summary["byVersion"].clone())
}

fn count(by_version: &Value, v: &str) -> u64 {
    by_version[v].as_u64().unwrap_or(0)
}

#[test]
fn stat_counts_what_the_client_sent_and_check_names_a_pod_without_sidecar() -> Result<(), String> {
    let test = "stat_counts_what_the_client_sent_and_check_names_a_pod_without_sidecar";
    if kubeconfig_or_skip(test).is_none() {
        return Ok(());
    }
    let (ok, help) = plugin(&["--help"]);
    assert!(
        ok && help.contains("stat") && help.contains("check"),
        "{help}"
    );
    let _install = Install::apply()?;
    let ns = Namespace::create("plugin", true)?;
    let n = ns.0.as_str();
    wait_injecting(n)?;
    client_pod(n, "toolbox")?;
    let examples = render(&repo_root().join("examples/manifests"));
    run_stdin(
        &["apply", "-f", "-"],
        &to_yaml(&into_namespace(&examples, n)),
    )?;
    wait_rolled_out(n, &["llm-v1", "llm-v2"], "llm")?;

    // A healthy install: every check passes (once the sidecars enforce the new config).
    let mut last = String::new();
    let healthy = wait_for(Duration::from_secs(90), || {
        let (ok, out) = plugin(&["check"]);
        last = out;
        ok.then_some(())
    });
    println!("kubectl infermesh check:\n{last}");
    healthy.ok_or_else(|| format!("check did not pass on a healthy install:\n{last}"))?;

    // Streamed completions through the Service (a model pod's sidecar routes them) and through
    // the toolbox's own sidecar.
    let via_service = load(n, "http://llm/v1/chat/completions", None, 300)?;
    let via_sidecar = load(
        n,
        "http://127.0.0.1:15001/v1/chat/completions",
        Some("llm"),
        300,
    )?;
    let sent = |v: &str| count(&via_service, v) + count(&via_sidecar, v);
    let want = [("stable", sent("v1")), ("canary", sent("v2"))];
    assert_eq!(want[0].1 + want[1].1, 600, "{via_service} {via_sidecar}");

    // Each request is counted when its stream ends, just after the client saw the end.
    let mut rows = Value::Null;
    let agreed = wait_for(Duration::from_secs(15), || {
        let (ok, out) = plugin(&["stat", "llm", "-n", n, "--since", "5m", "-o", "json"]);
        assert!(ok, "stat failed: {out}");
        rows = serde_json::from_str::<Value>(&out).ok()?["rows"].clone();
        want.iter()
            .all(|(variant, sent)| stat_row(&rows, variant)["requests"] == *sent)
            .then_some(())
    });
    let (_, table) = plugin(&["stat", "llm", "-n", n, "--since", "5m"]);
    println!("kubectl infermesh stat llm:\n{table}");
    if agreed.is_none() {
        for (variant, sent) in want {
            let got = stat_row(&rows, variant)["requests"].as_u64().unwrap_or(0);
            let off = got.abs_diff(sent) as f64 / sent.max(1) as f64;
            assert!(
                off <= 0.01,
                "{variant}: stat counts {got}, the client sent {sent}\n{table}"
            );
        }
    }
    for (variant, _) in want {
        let row = stat_row(&rows, variant);
        assert_eq!(row["failures"], 0, "{row}");
        assert!(
            row["ttftP50Seconds"].as_f64().is_some_and(|t| t > 0.0),
            "{variant}: streams have a time to first token: {row}"
        );
        assert!(
            row["outputTokensPerSecond"]
                .as_f64()
                .is_some_and(|t| t > 0.0),
            "{row}"
        );
    }
    assert!(
        table.contains("stable") && table.contains("canary") && table.contains("TTFT_P99"),
        "{table}"
    );

    // A pod that carries the ModelService label but opted out of injection.
    run(&[
        "-n",
        n,
        "run",
        "bare",
        "--image=infermesh/examples:0.1.0",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--labels=app=bare,infermesh.io/modelservice=llm",
        "--annotations=infermesh.io/inject=disabled",
        "--command",
        "--",
        "/usr/local/bin/infermesh-model-server",
        "--port",
        "9090",
    ])?;
    let (ok, out) = plugin(&["check"]);
    println!("kubectl infermesh check, with the bare pod:\n{out}");
    assert!(!ok, "check passed with a pod without sidecar:\n{out}");
    assert!(
        out.contains(&format!(
            "× pod {n}/bare carries infermesh.io/modelservice=llm but runs no sidecar"
        )),
        "{out}"
    );
    Ok(())
}

fn stat_row<'a>(rows: &'a Value, variant: &str) -> &'a Value {
    rows.as_array()
        .and_then(|r| r.iter().find(|x| x["variant"] == variant))
        .unwrap_or(&Value::Null)
}
