//! Graceful shutdown: in-flight requests finish within the drain timeout.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let b = backend("v1", Mode::Slow(Duration::from_millis(300))).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![b.addr])])).await;
    let addr = s.sidecar.inbound;
    let req = tokio::spawn(async move { get(&client(), addr, "llm", &[]).await });
    // A client that connected but never sent a byte does not hold the drain up.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert!(s.sidecar.shutdown(Duration::from_secs(5)).await, "drained");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(req.await.unwrap().unwrap().status, 200);
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
