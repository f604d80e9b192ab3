//! A connection that sends part of the HTTP/2 preface and stops: served once the rest arrives,
//! closed when its client leaves, and never polled meanwhile. One test in its own binary, so the
//! CPU time it reads is the stalled connections' alone.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections that send part of the HTTP/2 preface and stop are not polled: the sidecar waits
/// for their bytes, and one whose client left is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_http2_preface_waits_without_polling() {
    let a = backend("v1", Mode::Ok).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![a.addr])])).await;
    // The rest of the preface arrives late: the connection is served as HTTP/2 then.
    let mut conn = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // A SETTINGS frame (empty) from the client; the server answers with its own SETTINGS.
    conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("served as HTTP/2")
        .unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame: {head:?}");
    // A client that leaves after a partial preface: closed at once, not after the 30 s bound.
    let mut conn = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    conn.write_all(b"PRI * HT").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the sidecar closed its side soon after the client left"
    );
    // What many stalled prefaces cost: their CPU time over a second, measured on this process.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(s.sidecar.inbound).await.unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time() - before;
    assert!(
        used < Duration::from_millis(100),
        "200 stalled prefaces used {used:?} of CPU in 1 s"
    );
}

/// This process's CPU time (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / 100)
}
