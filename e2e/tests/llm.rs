//! A real LLM behind the mesh, on the local cluster: llama.cpp's llama-server running
//! SmolLM2-135M-Instruct (image `infermesh/llama-server`, made by `hack/llama-server.sh` and
//! `IMAGES=llama-server hack/images.sh`), installed from `examples/llm` into a namespace of the
//! test's own, with infermesh installed from `deploy/`. A client pod streams a chat completion
//! through its own sidecar and the model pod's: the tokens arrive one by one, the final `usage`
//! chunk arrives intact, and the client's sidecar counts the request.

use std::time::Instant;

use infermesh_e2e::mesh::{
    Install, Namespace, client_exec, client_pod, into_namespace, render, requests_total, run,
    run_stdin, sidecar_metrics, stream_events, to_yaml,
};
use infermesh_e2e::operator::{kubeconfig_or_skip, kubectl, repo_root};
use serde_json::Value;

const IMAGE: &str = "docker.io/infermesh/llama-server:0.1.0";

/// Whether the node's containerd has the image (`crictl`-free: the node's image list).
fn node_has_image() -> bool {
    let out = kubectl(&["get", "nodes", "-o", "json"], None);
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    nodes["items"].as_array().into_iter().flatten().any(|n| {
        n["status"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| {
                i["names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|name| name == IMAGE)
            })
    })
}

fn served(metrics: &str) -> u64 {
    requests_total(metrics, "smollm", "stable") + requests_total(metrics, "smollm", "canary")
}

#[test]
fn a_real_model_streams_a_chat_completion_through_the_mesh_token_by_token() -> Result<(), String> {
    let test = "a_real_model_streams_a_chat_completion_through_the_mesh_token_by_token";
    if kubeconfig_or_skip(test).is_none() {
        return Ok(());
    }
    assert!(
        node_has_image(),
        "the node has no {IMAGE}: run hack/llama-server.sh, then IMAGES=llama-server hack/images.sh \
         (make test does both)"
    );
    let started = Instant::now();
    let _install = Install::apply()?;
    let ns = Namespace::create("llm", true)?;
    let n = ns.0.as_str();
    client_pod(n, "toolbox")?;

    let docs = render(&repo_root().join("examples/llm"));
    run_stdin(&["apply", "-f", "-"], &to_yaml(&into_namespace(&docs, n)))?;
    for d in ["smollm-v1", "smollm-v2"] {
        run(&[
            "-n",
            n,
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=240s",
        ])?;
    }
    run(&[
        "-n",
        n,
        "wait",
        "--for=condition=Ready",
        "msvc/smollm",
        "--timeout=120s",
    ])?;
    println!("[{:>4}s] examples/llm Ready", started.elapsed().as_secs());

    let before = sidecar_metrics(n, "toolbox", "toolbox")?;
    let body = serde_json::json!({
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colours of the rainbow."},
        ],
        "max_tokens": 24,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    // Through the toolbox's own sidecar (outbound 15001) to a model pod's sidecar.
    let (ok, out) = client_exec(
        n,
        "toolbox",
        "toolbox",
        &[
            "stream",
            "http://127.0.0.1:15001/v1/chat/completions",
            "-H",
            "Host: smollm",
            "--body",
            &body,
            "--timeout-secs",
            "120",
        ],
    );
    println!("{out}");
    assert!(ok, "the stream failed: {out}");
    let events = stream_events(&out);
    let chunks: Vec<(u64, Value)> = events
        .iter()
        .filter_map(|(ms, e)| {
            let json = e.strip_prefix("data:")?.trim();
            Some((*ms, serde_json::from_str(json).ok()?))
        })
        .collect();
    let content: Vec<u64> = chunks
        .iter()
        .filter(|(_, c)| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .map(|(ms, _)| *ms)
        .collect();
    assert!(content.len() >= 5, "few content events: {out}");
    // Token by token: the content events are spread over the generation, not one burst.
    let spread = content.last().unwrap() - content.first().unwrap();
    assert!(
        spread >= 20,
        "content arrived in one burst ({spread} ms): {out}"
    );
    let usage = chunks
        .iter()
        .map(|(_, c)| &c["usage"])
        .find(|u| u.is_object())
        .ok_or_else(|| format!("no usage chunk: {out}"))?;
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        usage["prompt_tokens"].as_u64().unwrap_or(0) > 10 && (5..=24).contains(&completion),
        "usage: {usage}"
    );
    assert!(
        events
            .last()
            .is_some_and(|(_, e)| e.trim() == "data: [DONE]"),
        "{out}"
    );

    let after = sidecar_metrics(n, "toolbox", "toolbox")?;
    assert_eq!(
        served(&after) - served(&before),
        1,
        "the toolbox's sidecar counts the stream once"
    );
    println!(
        "[{:>4}s] streamed {} content events over {spread} ms, usage {usage}",
        started.elapsed().as_secs(),
        content.len()
    );
    Ok(())
}
