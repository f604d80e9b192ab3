//! Streamed responses: SSE events pass through at once and in order, and a client hanging up
//! cancels the upstream request or stream.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::time::Instant;

/// One SSE stream through the sidecar; the delay of each event from backend write to client read.
async fn sse_delays() -> Vec<Duration> {
    let written = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(AtomicBool::new(false));
    let mode = Mode::Sse {
        interval: Duration::from_millis(50),
        count: 8,
        written: written.clone(),
        cancelled,
    };
    let b = backend("v1", mode).await;
    let cfg = config(
        json!({"timeouts": {"firstByteMs": 2000, "idleMs": 1000}}),
        &[("s", 100, vec![b.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let req = Request::get(format!("http://{}/v1/completions", s.sidecar.inbound))
        .header("host", "llm")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got.push((Instant::now(), d));
        }
    }
    let written = written.lock().unwrap().clone();
    assert_eq!(got.len(), 8, "one frame per event, none batched");
    got.iter()
        .enumerate()
        .map(|(i, (at, data))| {
            assert_eq!(data, &Bytes::from(format!("data: {i}\n\n")), "in order");
            at.saturating_duration_since(written[i])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_pass_through_at_once_and_in_order() {
    // Scheduling noise on a busy machine can delay one run; buffering would delay every run by
    // a whole event interval (50 ms). Up to three runs, one must show the first event < 10 ms.
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let delays = sse_delays().await;
        assert!(
            delays.iter().all(|d| *d < Duration::from_millis(50)),
            "an event waited for the next: {delays:?}"
        );
        firsts.push(delays[0]);
        if delays[0] < Duration::from_millis(10) {
            return;
        }
    }
    panic!("first event never under 10 ms: {firsts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hang_up_cancels_the_upstream_stream() {
    let written = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(AtomicBool::new(false));
    let mode = Mode::Sse {
        interval: Duration::from_millis(20),
        count: 1000,
        written,
        cancelled: cancelled.clone(),
    };
    let b = backend("v1", mode).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![b.addr])])).await;
    let c = client();
    let req = Request::get(format!("http://{}/v1/completions", s.sidecar.inbound))
        .header("host", "llm")
        .body(Full::<Bytes>::default())
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    drop(c);
    let t = Instant::now();
    while !cancelled.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "backend never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hang_up_before_the_response_head_drops_the_upstream_request() {
    let b = backend("v1", Mode::Hang).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![b.addr])])).await;
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
        .await
        .unwrap();
    conn.write_all(b"GET /v1/models HTTP/1.1\r\nHost: llm\r\n\r\n")
        .await
        .unwrap();
    let in_flight = r#"infermesh_in_flight{service="llm",variant="s"} "#;
    let t = Instant::now();
    while !admin(&s.sidecar, "/metrics")
        .await
        .1
        .contains(&format!("{in_flight}1"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    let t = Instant::now();
    while !admin(&s.sidecar, "/metrics")
        .await
        .1
        .contains(&format!("{in_flight}0"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the upstream request outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
