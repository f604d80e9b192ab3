//! Protocol strictness at the listeners: what a request may look like on the wire, and what a
//! connection that never finishes its first bytes costs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a new connection and reads what comes back until it closes (or 5 s).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_a_400() {
    let a = backend("v1", Mode::Ok).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![a.addr])])).await;
    let out = exchange(
        s.sidecar.inbound,
        b"GET / HTTP/1.1\r\nHost: llm\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("malformed-request"),
        "{out}"
    );
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// RFC 9112 §3.2.2: with an absolute-form target, the target's authority is the request's host;
/// the upstream sees that one Host, not the client's other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_authority_wins_over_host() {
    let a = backend("v1", Mode::Ok).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![a.addr])])).await;
    let out = exchange(
        s.sidecar.inbound,
        b"GET http://llm/v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let h = a.last_headers.lock().unwrap().clone().unwrap();
    let hosts: Vec<_> = h.get_all("host").iter().collect();
    assert_eq!(hosts, ["llm"], "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_cap_are_refused() {
    let a = backend("v1", Mode::Ok).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![a.addr])])).await;
    let big = "x".repeat(8 << 10);
    let mut req = String::from("GET / HTTP/1.1\r\nHost: llm\r\nConnection: close\r\n");
    for i in 0..12 {
        req.push_str(&format!("x-big-{i}: {big}\r\n"));
    }
    req.push_str("\r\n");
    let out = exchange(s.sidecar.inbound, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "96 KiB of headers: {out:.200}"
    );
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Well under the cap is served.
    let mut req = String::from("GET / HTTP/1.1\r\nHost: llm\r\nConnection: close\r\n");
    for i in 0..4 {
        req.push_str(&format!("x-big-{i}: {big}\r\n"));
    }
    req.push_str("\r\n");
    let out = exchange(s.sidecar.inbound, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "32 KiB of headers: {out:.200}"
    );
}

/// A protocol switch is refused in words, not silently turned into a plain request; `h2c`, which
/// a server may ignore (RFC 9113 §3.1), is served as HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_refused_with_a_reason() {
    let a = backend("v1", Mode::Ok).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![a.addr])])).await;
    let out = exchange(
        s.sidecar.inbound,
        b"GET /ws HTTP/1.1\r\nHost: llm\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("upgrade-unsupported"),
        "{out}"
    );
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let out = exchange(
        s.sidecar.inbound,
        b"GET / HTTP/1.1\r\nHost: llm\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
