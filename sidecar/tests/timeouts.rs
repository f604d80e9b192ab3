//! The first-byte and idle timeouts of a service, as a client sees them.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_and_idle_timeouts() {
    let hang = backend("v1", Mode::Hang).await;
    let cfg = config(
        json!({"timeouts": {"firstByteMs": 100}}),
        &[("s", 100, vec![hang.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let t = Instant::now();
    let r = get(&c, s.sidecar.inbound, "llm", &[]).await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.headers["x-infermesh-reason"], "upstream-timeout");
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );

    // A stream that stalls longer than idleMs is cut, after the events that did arrive.
    let mode = Mode::Sse {
        interval: Duration::from_millis(300),
        count: 3,
        written: Arc::new(Mutex::new(Vec::new())),
        cancelled: Arc::new(AtomicBool::new(false)),
    };
    let slow = backend("v1", mode).await;
    let cfg = config(
        json!({"timeouts": {"idleMs": 100}}),
        &[("s", 100, vec![slow.addr])],
    );
    let s = sidecar(&cfg).await;
    let req = Request::get(format!("http://{}/v1/completions", s.sidecar.inbound))
        .header("host", "llm")
        .body(Full::<Bytes>::default())
        .unwrap();
    let t = Instant::now();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = resp.into_body().collect().await;
    assert!(
        err.is_err(),
        "the stalled stream is reported as broken, not completed"
    );
    assert!(
        t.elapsed() < Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    // Its head said 200, but the client got a broken stream: an error in the metrics.
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(
        m.contains("infermesh_requests_total{service=\"llm\",variant=\"s\",class=\"5xx\"} 1\n")
            && m.contains("class=\"2xx\"} 0\n"),
        "{m}"
    );
    assert!(
        m.contains("infermesh_streams_cut_total{service=\"llm\",variant=\"s\"} 1\n"),
        "{m}"
    );
}

/// A client that stops in the middle of its request body gets 408 after the body timeout, with
/// and without retries (the body is then read for replay), and the endpoint is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend("v1", Mode::Ok).await;
    for extra in [json!({}), retries(3, &["5xx"], None, 0.2, 10)] {
        let cfg = config(extra, &[("s", 100, vec![b.addr])]);
        let s = sidecar_with(&cfg, |o| {
            o.request_body_timeout = Duration::from_millis(200)
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
            .await
            .unwrap();
        let t = Instant::now();
        conn.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: llm\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 408") && out.contains("request-body-timeout"),
            "{out}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let (_, m) = admin(&s.sidecar, "/metrics").await;
        assert!(m.contains("class=\"5xx\"} 0\n"), "{m}");
    }
}
