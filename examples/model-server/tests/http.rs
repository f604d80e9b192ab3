//! The simulator over HTTP on 127.0.0.1 (real clock, step costs of a few milliseconds): OpenAI
//! error shapes, usage (cached tokens, the include_usage chunk), LoRA model selection, stop
//! reasons, pacing by engine steps, and /metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use infermesh_model_server::{Config, StepCost};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const MS: Duration = Duration::from_millis(1);

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Simulated mode with cheap steps (1 ms + 10 us per prompt token + 1 ms per decoding sequence).
fn config() -> Config {
    let mut c = Config::new("vsim");
    c.token_interval = Duration::ZERO;
    c.engine.cost = StepCost {
        base: MS,
        prefill_per_token: Duration::from_micros(10),
        decode_per_seq: MS,
        lora_load: 20 * MS,
    };
    c
}

async fn start(config: Config) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(infermesh_model_server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    Server { addr, _stop: stop }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(addr: SocketAddr, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
    let builder = Request::builder().uri(format!("http://{addr}{path}"));
    match body {
        Some(b) => builder
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(b.to_string()))),
        None => builder.method("GET").body(Full::new(Bytes::new())),
    }
    .expect("valid request")
}

/// Sends and reads the whole answer (bounded in time).
async fn call(addr: SocketAddr, path: &str, body: Option<Value>) -> (StatusCode, HeaderMap, Bytes) {
    let fut = async {
        let resp = client()
            .request(request(addr, path, body.as_ref()))
            .await
            .expect("answer");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, bytes)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("in time")
}

async fn call_json(addr: SocketAddr, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, bytes) = call(addr, path, Some(body)).await;
    let v = serde_json::from_slice(&bytes).expect("json answer");
    (status, headers, v)
}

/// The `data:` payloads of a stream, each with its arrival time since the request.
async fn stream(addr: SocketAddr, path: &str, body: Value) -> Vec<(Duration, String)> {
    let fut = async {
        let started = Instant::now();
        let resp = client()
            .request(request(addr, path, Some(&body)))
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut events = Vec::new();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("frame").into_data() else {
                continue;
            };
            pending.push_str(std::str::from_utf8(&data).expect("utf-8"));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data = event.trim().strip_prefix("data: ").expect("data event");
                events.push((started.elapsed(), data.to_owned()));
            }
        }
        events
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("in time")
}

fn assert_openai_error(v: &Value, status: u16, kind: &str, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert_eq!(e["param"], json!(param), "{v}");
    assert_eq!(e["code"], status, "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only `error`: {v}");
}

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn errors_400_404_have_the_openai_shape() {
    let mut cfg = config();
    cfg.engine.max_model_len = 64;
    cfg.engine.loras = vec!["tuned".into()];
    let s = start(cfg).await;

    let (status, headers, v) = call_json(
        s.addr,
        "/v1/completions",
        json!({"prompt": words(100), "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["x-model-version"], "vsim");
    assert_openai_error(&v, 400, "invalid_request_error", Some("prompt"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum context length is 64 tokens"))
    );
    let (status, _, v) = call_json(
        s.addr,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": words(10)}], "max_tokens": 60}),
    )
    .await;
    assert_eq!(status, 400);
    assert_openai_error(&v, 400, "invalid_request_error", Some("max_tokens"));

    let (status, headers, v) = call_json(
        s.addr,
        "/v1/completions",
        json!({"model": "nope", "prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-model-version"], "vsim");
    assert_openai_error(&v, 404, "not_found_error", Some("model"));

    let (status, _, v) = call_json(
        s.addr,
        "/v1/completions",
        json!({"model": "tuned", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "tuned");
    let (status, _, v) = call_json(
        s.addr,
        "/v1/completions",
        json!({"model": "infermesh-demo", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let (_, _, models) = call(s.addr, "/v1/models", None).await;
    let models: Value = serde_json::from_slice(&models).expect("json");
    assert_eq!(models["data"][0]["id"], "infermesh-demo");
    assert_eq!(models["data"][1]["id"], "tuned");
    assert_eq!(models["data"][1]["parent"], "infermesh-demo");
    assert_eq!(models["data"][0]["max_model_len"], 64);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut cfg = config();
    cfg.engine.max_num_seqs = 1;
    cfg.engine.max_waiting = 1;
    cfg.engine.cost.decode_per_seq = 5 * MS;
    let s = start(cfg).await;
    let addr = s.addr;
    // A long answer holds the only batch slot, a second request waits, a third is refused.
    let long = tokio::spawn(async move {
        call(
            addr,
            "/v1/completions",
            Some(json!({"prompt": "a", "max_tokens": 300})),
        )
        .await
    });
    tokio::time::sleep(100 * MS).await;
    let waiting = tokio::spawn(async move {
        call(
            addr,
            "/v1/completions",
            Some(json!({"prompt": "b", "max_tokens": 1})),
        )
        .await
    });
    tokio::time::sleep(100 * MS).await;
    let (_, _, metrics) = call(addr, "/metrics", None).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics
            .contains("vllm:num_requests_waiting{model_name=\"infermesh-demo\",engine=\"0\"} 1.0"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("vllm:num_requests_running{model_name=\"infermesh-demo\",engine=\"0\"} 1.0")
    );
    let (status, headers, v) = call_json(addr, "/v1/completions", json!({"prompt": "c"})).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-model-version"], "vsim");
    assert_openai_error(&v, 429, "rate_limit_error", None);
    long.abort();
    waiting.abort();
}

#[tokio::test]
async fn include_usage_ends_the_stream_with_a_usage_chunk() {
    let s = start(config()).await;
    let events = stream(
        s.addr,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3,
               "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(events.len(), 5, "3 tokens, usage, [DONE]: {events:?}");
    let chunks: Vec<Value> = events[..4]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("json chunk"))
        .collect();
    for c in &chunks[..3] {
        assert!(c["usage"].is_null(), "{c}");
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
    }
    let text: String = chunks[..3]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    let last = &chunks[3];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["usage"]["completion_tokens"], 3);
    // <|user|> one two three <|assistant|>
    assert_eq!(last["usage"]["prompt_tokens"], 5);
    assert_eq!(last["usage"]["total_tokens"], 8);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(events[4].1, "[DONE]");
}

#[tokio::test]
async fn a_repeated_prompt_reports_cached_tokens_and_metrics_move() {
    let s = start(config()).await;
    let body = json!({"prompt": words(64), "max_tokens": 4});
    let (_, _, first) = call_json(s.addr, "/v1/completions", body.clone()).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, _, second) = call_json(s.addr, "/v1/completions", body).await;
    // 4 full blocks; the last is recomputed for its last token's logits.
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        48
    );
    assert_eq!(second["choices"][0]["text"], first["choices"][0]["text"]);

    let (status, headers, text) = call(s.addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-model-version"], "vsim");
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    let text = String::from_utf8_lossy(&text).into_owned();
    let l = "{model_name=\"infermesh-demo\",engine=\"0\"}";
    for line in [
        format!("vllm:prefix_cache_queries_total{l} 128.0"),
        format!("vllm:prefix_cache_hits_total{l} 48.0"),
        format!("vllm:prompt_tokens_total{l} 128.0"),
        format!("vllm:generation_tokens_total{l} 8.0"),
        format!("vllm:time_to_first_token_seconds_count{l} 2.0"),
        format!("vllm:inter_token_latency_seconds_count{l} 6.0"),
        format!("vllm:e2e_request_latency_seconds_count{l} 2.0"),
        format!("vllm:request_queue_time_seconds_count{l} 2.0"),
        format!("vllm:request_prefill_time_seconds_count{l} 2.0"),
        format!("vllm:request_prompt_tokens_sum{l} 128.0"),
        format!("vllm:request_generation_tokens_sum{l} 8.0"),
        format!("vllm:request_params_max_tokens_sum{l} 8.0"),
        format!("vllm:num_requests_running{l} 0.0"),
        format!("vllm:kv_cache_usage_perc{l} 0.0"),
        "# TYPE vllm:prompt_tokens counter".to_owned(),
        "# TYPE vllm:time_to_first_token_seconds histogram".to_owned(),
    ] {
        assert!(text.lines().any(|t| t == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("lora_requests_info"), "no LoRA configured");
}

#[tokio::test]
async fn stop_strings_and_end_of_sequence_finish_with_stop() {
    let mut cfg = config();
    cfg.engine.mean_output_tokens = 3.0;
    let s = start(cfg).await;
    let (_, _, v) = call_json(
        s.addr,
        "/v1/completions",
        json!({"prompt": "alpha beta gamma delta", "max_tokens": 10, "stop": ["gamma"], "ignore_eos": true}),
    )
    .await;
    assert_eq!(v["choices"][0]["text"], "alpha beta ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Seeded end-of-sequence: the same answer every time, mostly before max_tokens.
    let mut reasons = Vec::new();
    for k in 0..8 {
        let body = json!({"prompt": format!("p{k} q r"), "max_tokens": 50, "seed": 3});
        let (_, _, a) = call_json(s.addr, "/v1/completions", body.clone()).await;
        let (_, _, b) = call_json(s.addr, "/v1/completions", body).await;
        assert_eq!(a["choices"], b["choices"]);
        reasons.push(
            a["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert!(reasons.iter().any(|r| r == "stop"), "{reasons:?}");
}

#[tokio::test]
async fn streams_are_paced_by_engine_steps() {
    let mut cfg = config();
    cfg.engine.cost.base = 20 * MS;
    let s = start(cfg).await;
    let events = stream(
        s.addr,
        "/v1/completions",
        json!({"prompt": "one two", "max_tokens": 6, "stream": true}),
    )
    .await;
    assert_eq!(events.len(), 7);
    let first = events[0].0;
    let last = events[5].0;
    // Five decode steps of 21 ms after the first token, less the first arrival's jitter.
    assert!(
        last - first >= 4 * 21 * MS,
        "first {first:?}, last {last:?}"
    );
    assert!(first >= 20 * MS);
}

#[tokio::test]
async fn the_e2e_command_line_keeps_the_old_pacing() {
    use clap::Parser;
    let args = infermesh_model_server::Args::try_parse_from([
        "infermesh-model-server",
        "--port",
        "8080",
        "--version",
        "v1",
        "--model",
        "llm",
        "--token-interval-ms",
        "50",
    ])
    .expect("flags parse");
    let cfg = Config::from_args(&args, "pod".into()).expect("valid");
    let s = start(cfg).await;
    // Whole answers at once: the e2e POST loads send thousands of them.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, headers, v) = call_json(
            s.addr,
            "/v1/completions",
            json!({"prompt": "hello mesh", "max_tokens": 2}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-model-version"], "v1");
        assert_eq!(v["choices"][0]["text"], "hello mesh");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Streams: one token per 50 ms.
    let events = stream(
        s.addr,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 12, "stream": true}),
    )
    .await;
    assert_eq!(events.len(), 13);
    assert_eq!(events[12].1, "[DONE]");
    let (first, last) = (events[0].0, events[11].0);
    assert!(first >= 50 * MS, "{first:?}");
    // Eleven intervals between them, less the first arrival's jitter.
    assert!(last - first >= 10 * 50 * MS, "{:?}", last - first);
}

#[tokio::test]
async fn a_client_that_goes_away_aborts_its_request() {
    use tokio::io::AsyncWriteExt;
    let s = start(config()).await;
    let running = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("vllm:num_requests_running{"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let body = json!({"prompt": "a b", "max_tokens": 3000}).to_string();
    let mut conn = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connects");
    conn.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("sent");
    tokio::time::sleep(100 * MS).await;
    let (_, _, m) = call(s.addr, "/metrics", None).await;
    assert!(running(&String::from_utf8_lossy(&m)).ends_with(" 1.0"));
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, m) = call(s.addr, "/metrics", None).await;
        let m = String::from_utf8_lossy(&m).into_owned();
        if running(&m).ends_with(" 0.0") {
            assert!(m.contains(
                "vllm:kv_cache_usage_perc{model_name=\"infermesh-demo\",engine=\"0\"} 0.0"
            ));
            break;
        }
        assert!(Instant::now() < deadline, "still running: {m}");
        tokio::time::sleep(20 * MS).await;
    }
}
