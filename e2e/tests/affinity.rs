//! Prefix affinity on the local cluster: two ModelServices over three engine simulators each
//! (cost-model mode, a KV cache that holds about two of the prompts), one balanced by
//! RoundRobin, the other with `engine: vLLM` (so InferenceAware). A client pod sends both the
//! same load through its sidecar: five long system prompts shared by many distinct questions.
//! With affinity each simulator keeps its share of the prompts cached; round robin sends every
//! prompt everywhere, and the caches thrash. The simulators' own prefix-cache counters tell.

use infermesh_e2e::mesh::{
    Install, Namespace, client_exec, client_pod, load_summary, run, run_stdin, wait_rolled_out,
};
use infermesh_e2e::operator::kubeconfig_or_skip;

/// Pods per ModelService.
const PODS: usize = 3;
/// Distinct system prompts in the load. Request i carries prompt i mod PROMPTS and round robin
/// sends it to pod i mod PODS, so a count that PODS divides would hand each pod a fixed pair of
/// prompts and give round robin perfect affinity by accident; five cycles every prompt through
/// every pod, as a real mix of users would.
const PROMPTS: u64 = 5;

fn manifests(name: &str, balancing: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {PODS}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}, infermesh.io/modelservice: {name}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: model
          image: infermesh/examples:0.1.0
          imagePullPolicy: IfNotPresent
          command: ["/usr/local/bin/infermesh-model-server"]
          # 160 KV blocks of 16 tokens: about two of the ~1,000-token prompts at once.
          args: ["--port", "8080", "--version", "{name}", "--model", "m", "--kv-blocks", "160",
                 "--max-model-len", "2048"]
          readinessProbe:
            httpGet: {{path: /health, port: 8080}}
            periodSeconds: 2
---
apiVersion: infermesh.io/v1alpha1
kind: ModelService
metadata:
  name: {name}
spec:
  port: 8080
  {balancing}
  variants:
    - name: v
      weight: 100
      selector:
        matchLabels: {{app: {name}}}
"#
    )
}

/// The summed prefix-cache hits and queries of the simulators of `app`, read from each pod.
fn prefix_cache(ns: &str, app: &str) -> Result<(f64, f64), String> {
    let pods = run(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let (mut hits, mut queries) = (0.0, 0.0);
    for pod in pods.split_whitespace() {
        let (ok, text) = client_exec(ns, pod, "model", &["get", "http://127.0.0.1:8080/metrics"]);
        if !ok {
            return Err(format!("{pod} /metrics: {text}"));
        }
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        hits += sum("vllm:prefix_cache_hits_total");
        queries += sum("vllm:prefix_cache_queries_total");
    }
    Ok((hits, queries))
}

#[test]
fn inference_aware_keeps_shared_prefixes_cached_where_round_robin_thrashes() -> Result<(), String> {
    let test = "inference_aware_keeps_shared_prefixes_cached_where_round_robin_thrashes";
    if kubeconfig_or_skip(test).is_none() {
        return Ok(());
    }
    let _install = Install::apply()?;
    let ns = Namespace::create("affinity", true)?;
    let n = ns.0.as_str();
    client_pod(n, "toolbox")?;
    let both = [
        ("prefix-rr", "loadBalancing: {policy: RoundRobin}"),
        ("prefix-ia", "engine: vLLM"),
    ];
    let yaml: Vec<String> = both.iter().map(|(m, b)| manifests(m, b)).collect();
    run_stdin(&["-n", n, "apply", "-f", "-"], &yaml.join("---\n"))?;
    for (name, _) in both {
        wait_rolled_out(n, &[name], name)?;
    }
    let rules = "Answer in one short sentence, plainly and politely, without lists. ".repeat(100);
    let body = serde_json::json!({
        "model": "m",
        "max_tokens": 8,
        "messages": [
            {"role": "system", "content": format!("System {{k}}. {rules}")},
            {"role": "user", "content": "Question {i}: what now?"},
        ],
    })
    .to_string();
    let mut rates = Vec::new();
    for (name, _) in both {
        let (ok, out) = client_exec(
            n,
            "toolbox",
            "toolbox",
            &[
                "load",
                "http://127.0.0.1:15001/v1/chat/completions",
                "-H",
                &format!("Host: {name}"),
                "--body",
                &body,
                "--vary",
                &PROMPTS.to_string(),
                "--requests",
                "60",
                "--concurrency",
                "2",
                "--timeout-secs",
                "240",
            ],
        );
        let summary = load_summary(&out).ok_or_else(|| format!("no summary: {out}"))?;
        assert!(ok && summary["errors"] == 0, "{name}: {out}");
        let (hits, queries) = prefix_cache(n, name)?;
        let rate = hits / queries.max(1.0);
        println!("{name}: prefix-cache hit rate {rate:.3} ({hits} of {queries} prompt tokens)");
        rates.push(rate);
    }
    assert!(
        rates[1] > rates[0],
        "InferenceAware's hit rate {:.3} is not above RoundRobin's {:.3}",
        rates[1],
        rates[0]
    );
    Ok(())
}
