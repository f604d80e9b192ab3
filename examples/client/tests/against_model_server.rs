//! Drives the real model server (on 127.0.0.1, ephemeral port) with the client's own code.

use std::net::SocketAddr;
use std::time::Duration;

use infermesh_client::cli::RequestArgs;
use infermesh_client::stream::{self, StreamItem};
use infermesh_client::{load, transport};
use infermesh_model_server::Config;
use tokio::sync::oneshot;

/// A model server running in this process; stops when dropped.
struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
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

fn args(url: String, body: Option<&str>) -> RequestArgs {
    RequestArgs {
        url,
        headers: vec![],
        body: body.map(str::to_owned),
        method: None,
        timeout_secs: 10,
    }
}

#[tokio::test]
async fn completion_answer_shape_and_version_header() {
    let server = start(Config::new("v3")).await;
    let spec = args(
        format!("http://{}/v1/completions", server.addr),
        Some(r#"{"model":"m","prompt":"alpha beta","max_tokens":3}"#),
    )
    .to_spec(None)
    .expect("valid args");
    let resp = transport::fetch(&transport::client(), &spec)
        .await
        .expect("answer");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.model_version(), Some("v3"));
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json body");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "alpha beta alpha");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    let spec = args(format!("http://{}/", server.addr), None)
        .to_spec(None)
        .expect("valid");
    let resp = transport::fetch(&transport::client(), &spec)
        .await
        .expect("answer");
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json body");
    assert_eq!(v["version"], "v3");
    assert_eq!(v["model"], "infermesh-demo");
}

#[tokio::test]
async fn malformed_json_and_unknown_path_carry_reason_and_version() {
    let server = start(Config::new("v1")).await;
    let client = transport::client();
    let spec = args(
        format!("http://{}/v1/chat/completions", server.addr),
        Some("{oops"),
    )
    .to_spec(None)
    .expect("valid");
    let resp = transport::fetch(&client, &spec).await.expect("answer");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.model_version(), Some("v1"));
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json body");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON"))
    );

    let spec = args(format!("http://{}/nope", server.addr), None)
        .to_spec(None)
        .expect("valid");
    let resp = transport::fetch(&client, &spec).await.expect("answer");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.model_version(), Some("v1"));
}

#[tokio::test]
async fn error_rate_one_always_gives_error_status() {
    let mut config = Config::new("v2");
    config.error_rate = 1.0;
    config.error_status = http::StatusCode::BAD_GATEWAY;
    let server = start(config).await;
    let client = transport::client();
    for path in ["/", "/v1/completions"] {
        let spec = args(format!("http://{}{path}", server.addr), Some("{}"))
            .to_spec(None)
            .expect("valid");
        let mut spec = spec;
        if path == "/" {
            spec.method = http::Method::GET;
        }
        let resp = transport::fetch(&client, &spec).await.expect("answer");
        assert_eq!(resp.status, 502, "{path}");
        assert_eq!(resp.model_version(), Some("v2"));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json body");
        assert_eq!(v["error"]["type"], "injected_error");
    }
    // Health stays up so the pod keeps receiving traffic.
    let spec = args(format!("http://{}/health", server.addr), None)
        .to_spec(None)
        .expect("valid");
    let resp = tokio::time::timeout(Duration::from_secs(10), transport::fetch(&client, &spec))
        .await
        .expect("in time")
        .expect("answer");
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn streamed_tokens_arrive_one_by_one_at_the_token_interval() {
    const INTERVAL: Duration = Duration::from_millis(80);
    const TOKENS: usize = 5;
    let mut config = Config::new("v2");
    config.token_interval = INTERVAL;
    let server = start(config).await;
    let body = format!(r#"{{"prompt":"one two three","max_tokens":{TOKENS},"stream":true}}"#);
    let spec = args(
        format!("http://{}/v1/completions", server.addr),
        Some(&body),
    )
    .to_spec(None)
    .expect("valid");
    let mut items = Vec::new();
    let end = stream::run(&transport::client(), &spec, |item| items.push(item.clone()))
        .await
        .expect("stream completes");
    assert_eq!(end.status, 200);
    assert!(end.done, "stream ends with [DONE]");
    assert_eq!(end.events, TOKENS + 1);

    let StreamItem::Head { version, .. } = &items[0] else {
        panic!("first item is the head: {items:?}");
    };
    assert_eq!(version.as_deref(), Some("v2"));
    let events: Vec<(Duration, String)> = items[1..]
        .iter()
        .map(|i| match i {
            StreamItem::Event { at, text } => (*at, text.clone()),
            StreamItem::Head { .. } => panic!("one head only"),
        })
        .collect();
    let texts: Vec<String> = events[..TOKENS]
        .iter()
        .map(|(_, t)| {
            let json = t.strip_prefix("data: ").expect("data event");
            let v: serde_json::Value = serde_json::from_str(json).expect("json chunk");
            v["choices"][0]["text"].as_str().expect("text").to_owned()
        })
        .collect();
    assert_eq!(texts, ["one", " two", " three", " one", " two"]);
    assert_eq!(events[TOKENS].1, "data: [DONE]");
    // Arrival times never go backwards.
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    // The first token was delivered while the rest were still being produced: a buffered
    // answer would deliver all of them at once.
    let first = events[0].0;
    let last = events[TOKENS - 1].0;
    // The last token is produced TOKENS intervals after the request (timers never fire early).
    assert!(
        first < INTERVAL * TOKENS as u32,
        "first event only arrived at {first:?}"
    );
    assert!(
        last - first >= INTERVAL * (TOKENS as u32 - 1) / 2,
        "tokens arrived together (first {first:?}, last {last:?})"
    );
    assert!(
        end.elapsed < Duration::from_secs(5),
        "took {:?}",
        end.elapsed
    );
}

#[tokio::test]
async fn chat_stream_uses_chunk_objects() {
    let mut config = Config::new("v1");
    config.token_interval = Duration::from_millis(1);
    let server = start(config).await;
    let spec = args(format!("http://{}/v1/chat/completions", server.addr), None)
        .to_spec(Some(stream::default_body("/v1/chat/completions")))
        .expect("valid");
    let mut texts = Vec::new();
    let end = stream::run(&transport::client(), &spec, |item| {
        if let StreamItem::Event { text, .. } = item {
            texts.push(text.clone());
        }
    })
    .await
    .expect("stream completes");
    assert!(end.done);
    assert_eq!(texts.len(), 17, "16 tokens then [DONE]");
    let v: serde_json::Value =
        serde_json::from_str(texts[0].trim_start_matches("data: ")).expect("json chunk");
    assert_eq!(v["object"], "chat.completion.chunk");
    assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
}

#[tokio::test]
async fn load_counts_versions_and_statuses() {
    let v1 = start(Config::new("v1")).await;
    let spec = args(format!("http://{}/", v1.addr), None)
        .to_spec(None)
        .expect("valid");
    let client = transport::client();
    let summary = load::run(&client, &spec, 40, 4).await;
    assert_eq!((summary.total, summary.ok, summary.errors), (40, 40, 0));
    assert_eq!(summary.by_version.get("v1"), Some(&40));
    assert_eq!(summary.by_status.get("200"), Some(&40));

    let mut config = Config::new("v2");
    config.error_rate = 1.0;
    let failing = start(config).await;
    let spec = args(format!("http://{}/", failing.addr), None)
        .to_spec(None)
        .expect("valid");
    let summary = load::run(&client, &spec, 10, 3).await;
    assert_eq!((summary.total, summary.ok, summary.errors), (10, 0, 10));
    assert_eq!(summary.by_status.get("503"), Some(&10));
    assert_eq!(summary.by_version.get("v2"), Some(&10));
}

#[tokio::test]
async fn load_stops_at_the_time_bound() {
    let mut config = Config::new("v1");
    config.latency = Duration::from_secs(3);
    let slow = start(config).await;
    let mut spec = args(format!("http://{}/", slow.addr), None)
        .to_spec(None)
        .expect("valid");
    spec.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let summary = load::run(&transport::client(), &spec, 5, 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        (summary.ok, summary.errors, summary.not_finished),
        (0, 5, 5)
    );
}

#[tokio::test]
async fn unreachable_server_counts_as_failure() {
    // Bind then drop, so the port is (very likely) closed.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let spec = args(format!("http://{addr}/"), None)
        .to_spec(None)
        .expect("valid");
    let summary = load::run(&transport::client(), &spec, 3, 1).await;
    assert_eq!((summary.failed, summary.errors), (3, 3));
    assert!(summary.first_failure.is_some());
}

#[tokio::test]
async fn shutdown_lets_a_running_stream_finish_then_returns() {
    let mut config = Config::new("v1");
    config.token_interval = Duration::from_millis(40);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(infermesh_model_server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let spec = args(
        format!("http://{addr}/v1/completions"),
        Some(r#"{"prompt":"a b","max_tokens":6,"stream":true}"#),
    )
    .to_spec(None)
    .expect("valid");
    let mut stop = Some(stop);
    let end = stream::run(&transport::client(), &spec, |item| {
        // Ask for shutdown as soon as the first token is in.
        if matches!(item, StreamItem::Event { .. })
            && let Some(stop) = stop.take()
        {
            let _ = stop.send(());
        }
    })
    .await
    .expect("stream completes despite shutdown");
    assert!(end.done);
    assert_eq!(end.events, 7);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server returns after draining")
        .expect("server task did not panic");
}

#[tokio::test]
async fn models_list_and_wrong_method() {
    let server = start(Config::new("v1")).await;
    let client = transport::client();
    let spec = args(format!("http://{}/v1/models", server.addr), None)
        .to_spec(None)
        .expect("valid");
    let resp = transport::fetch(&client, &spec).await.expect("answer");
    assert_eq!(resp.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json body");
    assert_eq!(v["data"][0]["id"], "infermesh-demo");

    let spec = args(format!("http://{}/v1/completions", server.addr), None)
        .to_spec(None)
        .expect("valid");
    let resp = transport::fetch(&client, &spec).await.expect("answer");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.headers["allow"], "POST");
    assert_eq!(resp.model_version(), Some("v1"));
}
