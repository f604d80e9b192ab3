//! Drives the real model server (on 127.0.0.1, ephemeral port) with the client's own code.

use std::net::SocketAddr;
use std::time::Duration;

use infermesh_client::cli::RequestArgs;
use infermesh_client::transport;
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
