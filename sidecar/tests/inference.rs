//! InferenceAware balancing on loopback: load reports from the engines' metrics travel on
//! responses between sidecars and keep a saturated endpoint out; a prompt prefix goes back to
//! the endpoint that served it, from every routing sidecar; bodies without a prompt are routed
//! all the same.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// A model server that answers `/metrics` with `metrics` (changeable) and every other path
/// with 200, `x-model-version: version` and the request body it received.
async fn engine(version: &'static str, metrics: Arc<Mutex<String>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let received = req.into_body().collect().await.unwrap().to_bytes();
                        let body = if path == "/metrics" {
                            Bytes::from(metrics.lock().unwrap().clone())
                        } else {
                            received
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-model-version", version)
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn vllm_metrics(waiting: u32, running: u32, kv: f64) -> String {
    format!(
        "# TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
    )
}

/// One chat completion through `addr`, asking for the scorer's choice.
async fn chat(addr: SocketAddr, body: Vec<u8>) -> Reply {
    let c = client();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("host", "llm")
        .header("content-type", "application/json")
        .header("x-infermesh-debug", "1")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("within 10 s")
        .expect("a response");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A routing sidecar's config: service `llm`, InferenceAware over these meshed endpoints.
fn aware_router(endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|a| json!({"address": a.to_string(), "meshed": true}))
        .collect();
    json!({"services": [{"name": "llm", "port": 1,
        "loadBalancing": {"policy": "InferenceAware"},
        "variants": [{"name": "v", "weight": 100, "endpoints": endpoints}]}]})
    .to_string()
}

fn chat_body(system: &str, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": "m", "stream": false, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_endpoint_stops_getting_requests_while_another_is_free() {
    let busy_metrics = Arc::new(Mutex::new(vllm_metrics(12, 8, 0.95)));
    let free_metrics = Arc::new(Mutex::new(vllm_metrics(0, 1, 0.10)));
    let busy = engine("busy", busy_metrics.clone()).await;
    let free = engine("free", free_metrics).await;
    // Each model's pod: a sidecar whose local model is that engine.
    let pod = |port: u16| {
        json!({"services": [{"name": "llm", "port": port, "engine": "vLLM",
            "variants": [{"name": "v", "weight": 100}]}]})
        .to_string()
    };
    let busy_pod = sidecar(&pod(busy.port())).await;
    let free_pod = sidecar(&pod(free.port())).await;
    let router = sidecar(&aware_router(&[
        busy_pod.sidecar.inbound,
        free_pod.sidecar.inbound,
    ]))
    .await;
    // Prompts apart, so prefix affinity plays no part.
    let body = |i: usize| chat_body(&format!("You are brief, {i}."), "hi");
    // Before any report the two are alike: both get requests, and start reading their engines.
    let mut warm = HashSet::new();
    for i in 0..30 {
        let r = chat(router.sidecar.inbound, body(i)).await;
        assert_eq!(r.status, 200);
        warm.insert(r.version().unwrap().to_owned());
        if warm.len() == 2 {
            break;
        }
    }
    assert_eq!(warm.len(), 2, "both endpoints served before any report");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut served = Vec::new();
    for i in 100..120 {
        let r = chat(router.sidecar.inbound, body(i)).await;
        assert_eq!(r.status, 200);
        assert!(
            !r.headers.contains_key("endpoint-load-metrics"),
            "the load report stops at the routing sidecar"
        );
        let score = r.headers["x-infermesh-score"].to_str().unwrap().to_owned();
        assert!(
            score.contains("total=") && score.contains("prefix="),
            "{score}"
        );
        served.push((r.version().unwrap().to_owned(), score));
    }
    let to_busy = served.iter().filter(|(v, _)| v == "busy").count();
    assert!(
        to_busy <= 1,
        "the busy endpoint got {to_busy} of 20 once its report said 12 waiting: {served:?}"
    );
    // At most the first request it got in this phase, the one whose response told.
    let after: Vec<_> = served
        .iter()
        .skip_while(|(v, _)| v != "busy")
        .skip(1)
        .collect();
    assert!(after.iter().all(|(v, _)| v == "free"), "{served:?}");
    // The routing sidecar shows what it believes, the pods what they report.
    let (_, load) = admin(&router.sidecar, "/load").await;
    let load: serde_json::Value = serde_json::from_str(&load).unwrap();
    let eps = load["endpoints"].as_array().unwrap();
    let busy_view = eps
        .iter()
        .find(|e| e["address"] == busy_pod.sidecar.inbound.to_string())
        .unwrap();
    assert_eq!(busy_view["kvUsage"], 0.95, "{load}");
    let (_, pod_load) = admin(&busy_pod.sidecar, "/load").await;
    assert!(pod_load.contains("named_metrics.queue=12"), "{pod_load}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prefix_goes_back_to_the_endpoint_that_served_it_from_every_router() {
    let backends = [
        backend("a", Mode::Ok).await,
        backend("b", Mode::Ok).await,
        backend("c", Mode::Ok).await,
        backend("d", Mode::Ok).await,
    ];
    let cfg = config(
        json!({"loadBalancing": {"policy": "InferenceAware"}}),
        &[("v", 100, backends.iter().map(|b| b.addr).collect())],
    );
    let routers = [
        sidecar(&cfg).await,
        sidecar(&cfg).await,
        sidecar(&cfg).await,
    ];
    let systems: Vec<String> = (0..6)
        .map(|k| format!("System prompt {k}. ") + &"Follow the house rules closely. ".repeat(60))
        .collect();
    let mut by_system: HashMap<usize, HashSet<String>> = HashMap::new();
    for q in 0..30 {
        let k = q % systems.len();
        let router = &routers[q % routers.len()];
        let r = chat(
            router.sidecar.inbound,
            chat_body(&systems[k], &format!("Question {q}?")),
        )
        .await;
        assert_eq!(r.status, 200);
        let endpoint = r.headers["x-infermesh-endpoint"]
            .to_str()
            .unwrap()
            .to_owned();
        by_system.entry(k).or_default().insert(endpoint);
    }
    for (k, eps) in &by_system {
        assert_eq!(
            eps.len(),
            1,
            "system prompt {k} went to {eps:?} across three routing sidecars"
        );
    }
    // The body reached the model byte for byte.
    let sent = chat_body(&systems[0], "exact?");
    let r = chat(routers[0].sidecar.inbound, sent.clone()).await;
    assert_eq!(r.headers["x-body-len"], sent.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_without_a_prompt_are_routed_without_affinity() {
    let a = backend("a", Mode::Ok).await;
    let b = backend("b", Mode::Ok).await;
    let s = sidecar(&config(
        json!({"loadBalancing": {"policy": "InferenceAware"}}),
        &[("v", 100, vec![a.addr, b.addr])],
    ))
    .await;
    let big = chat_body(&"x".repeat(300 << 10), "too long to read");
    for body in [b"not json at all".to_vec(), b"[1,2]".to_vec(), big.clone()] {
        let r = chat(s.sidecar.inbound, body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers["x-body-len"], body.len().to_string().as_str());
        assert!(
            r.headers["x-infermesh-score"]
                .to_str()
                .unwrap()
                .contains("prefix=0.000")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_route_picks_its_variant_and_the_rewrite_reaches_the_model() {
    let none = Arc::new(Mutex::new(String::new()));
    let base = engine("base", none.clone()).await;
    let lora = engine("lora", none).await;
    let s = sidecar(
        &json!({"services": [{"name": "llm", "port": 1,
            "routes": [{"model": "summarizer", "variant": "lora"}],
            "variants": [
                {"name": "base", "weight": 100, "endpoints": [{"address": base.to_string()}]},
                {"name": "lora", "weight": 0, "modelRewrite": "sql-lora",
                 "endpoints": [{"address": lora.to_string()}]}]}]})
        .to_string(),
    )
    .await;
    let asked = br#"{"model": "summarizer", "messages": [{"role": "user", "content": "sum up"}]}"#;
    let r = chat(s.sidecar.inbound, asked.to_vec()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), Some("lora"));
    assert_eq!(
        &r.body[..],
        br#"{"model": "sql-lora", "messages": [{"role": "user", "content": "sum up"}]}"#,
        "only the model changed"
    );
    let other = br#"{"model":"base-7b","messages":[]}"#;
    let r = chat(s.sidecar.inbound, other.to_vec()).await;
    assert_eq!(r.version(), Some("base"));
    assert_eq!(&r.body[..], &other[..], "byte for byte");
    // Not JSON: no model, the weights decide, the body passes unchanged.
    let r = chat(s.sidecar.inbound, b"summarizer".to_vec()).await;
    assert_eq!(
        (r.version(), &r.body[..]),
        (Some("base"), &b"summarizer"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_is_asked_for_its_load_before_any_request() {
    let busy = engine("busy", Arc::new(Mutex::new(vllm_metrics(12, 8, 0.95)))).await;
    let free = engine("free", Arc::new(Mutex::new(vllm_metrics(0, 0, 0.0)))).await;
    // The busy model's pod lists itself as the endpoint, so it reads its engine before any
    // request reaches it.
    let pod_cfg = |port: u16, me: Option<SocketAddr>| {
        let endpoints: Vec<_> = me
            .iter()
            .map(|a| json!({"address": a.to_string(), "meshed": true}))
            .collect();
        json!({"services": [{"name": "llm", "port": port, "engine": "vLLM",
            "variants": [{"name": "v", "weight": 100, "endpoints": endpoints}]}]})
        .to_string()
    };
    // Each pod on a loopback address of its own, as pods have their own IPs.
    let at = |ip: [u8; 4]| {
        move |o: &mut infermesh_sidecar::Options| {
            o.inbound = (ip, 0).into();
            o.admin = (ip, 0).into();
            o.pod_ip = Some(ip.into());
        }
    };
    let busy_pod = sidecar_with(&pod_cfg(busy.port(), None), at([127, 0, 0, 2])).await;
    write_config(
        &busy_pod.config,
        &pod_cfg(busy.port(), Some(busy_pod.sidecar.inbound)),
    );
    let free_pod = sidecar_with(&pod_cfg(free.port(), None), at([127, 0, 0, 3])).await;
    let router = sidecar_with(
        &aware_router(&[busy_pod.sidecar.inbound, free_pod.sidecar.inbound]),
        // Only the busy pod's admin port is known here: the free one is never asked.
        |o| o.peer_admin_port = busy_pod.sidecar.admin.port(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let busy_view = loop {
        let (_, load) = admin(&router.sidecar, "/load").await;
        let load: serde_json::Value = serde_json::from_str(&load).unwrap();
        let view = load["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == busy_pod.sidecar.inbound.to_string())
            .cloned()
            .unwrap();
        if view["kvUsage"] == 0.95 || tokio::time::Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(busy_view["kvUsage"], 0.95, "{busy_view}");
    assert_eq!(busy_view["waiting"], 12.0, "{busy_view}");
    // The same, on /metrics, once the next second's refresh ran.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, m) = admin(&router.sidecar, "/metrics").await;
    let line = format!(
        r#"infermesh_endpoint_load{{service="llm",variant="v",endpoint="{}",signal="kv_usage"}} 0.95"#,
        busy_pod.sidecar.inbound
    );
    assert!(m.contains(&line), "{m}");
    // The first request already knows: it goes to the free endpoint.
    let r = chat(router.sidecar.inbound, chat_body("You are brief.", "hi")).await;
    let (_, load) = admin(&router.sidecar, "/load").await;
    assert_eq!(r.version(), Some("free"), "{:?} {load}", r.headers);
}

/// vLLM's metrics with its LoRA state: `running` adapters loaded, `max` slots.
fn vllm_lora_metrics(running: &str, max: u32) -> String {
    format!(
        "{}vllm:lora_requests_info{{max_lora=\"{max}\",running_lora_adapters=\"{running}\",waiting_lora_adapters=\"\"}} 1.7e9\n",
        vllm_metrics(0, 0, 0.1)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_adapter_goes_to_the_endpoint_whose_engine_holds_it() {
    let mut pods = Vec::new();
    for (name, running) in [("a", "chat-lora"), ("b", "sql-lora"), ("c", "")] {
        let e = engine(name, Arc::new(Mutex::new(vllm_lora_metrics(running, 2)))).await;
        let cfg = json!({"services": [{"name": "llm", "port": e.port(), "engine": "vLLM",
            "variants": [{"name": "v", "weight": 100}]}]});
        pods.push(sidecar(&cfg.to_string()).await);
    }
    let eps: Vec<SocketAddr> = pods.iter().map(|p| p.sidecar.inbound).collect();
    let router = sidecar(&aware_router(&eps)).await;
    let body = |model: &str, i: usize| {
        serde_json::to_vec(&json!({"model": model,
            "messages": [{"role": "user", "content": format!("Question {i}?")}]}))
        .unwrap()
    };
    // The base model goes to every endpoint: once so that each pod starts reading its engine
    // (it does from its first request), then again so that each has reported what its engine
    // holds.
    let warm = |round: usize| {
        let router = router.sidecar.inbound;
        async move {
            let mut seen = HashSet::new();
            for i in 0..90 {
                let r = chat(router, body("m", 1000 * round + i)).await;
                assert_eq!(r.status, 200);
                assert!(
                    !r.headers["x-infermesh-score"]
                        .to_str()
                        .unwrap()
                        .contains("lora="),
                    "no endpoint holds the base model as an adapter: not scored for it"
                );
                seen.insert(r.version().unwrap().to_owned());
                if seen.len() == 3 {
                    break;
                }
            }
            assert_eq!(seen.len(), 3, "the base model went everywhere: {seen:?}");
        }
    };
    warm(0).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    warm(1).await;
    let mut to = HashMap::<String, u32>::new();
    for i in 0..20 {
        let r = chat(router.sidecar.inbound, body("sql-lora", i)).await;
        assert_eq!(r.status, 200);
        *to.entry(r.version().unwrap().to_owned()).or_default() += 1;
        if r.version() == Some("b") {
            let score = r.headers["x-infermesh-score"].to_str().unwrap();
            assert!(score.ends_with("lora=1.000"), "{score}");
        }
    }
    assert_eq!(
        to.get("b"),
        Some(&20),
        "sql-lora is loaded on b only: {to:?}"
    );
    // The routing sidecar shows what it believes on /config as on /load.
    let (_, config) = admin(&router.sidecar, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let b = config["estimates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == eps[1].to_string())
        .cloned()
        .unwrap();
    assert_eq!(
        (b["loraAdapters"].clone(), b["loraSlots"].clone()),
        (json!(1), json!(2)),
        "{b}"
    );
}
