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

/// While in-flight requests drain, the admin port still serves: `/ready` says draining (so the
/// pod leaves its Service's endpoints), `/live` stays 200 and `/metrics` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_draining_while_requests_finish() {
    let b = backend("v1", Mode::Slow(Duration::from_millis(800))).await;
    let s = sidecar(&config(json!({}), &[("s", 100, vec![b.addr])])).await;
    let (inbound, admin_addr) = (s.sidecar.inbound, s.sidecar.admin);
    let req = tokio::spawn(async move { get(&client(), inbound, "llm", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = tokio::spawn(s.sidecar.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = |path: &'static str| async move {
        let r = client()
            .request(
                http::Request::get(format!("http://{admin_addr}{path}"))
                    .body(http_body_util::Full::default())
                    .unwrap(),
            )
            .await
            .expect("the admin port serves while draining");
        r.status().as_u16()
    };
    assert_eq!(probe("/ready").await, 503);
    assert_eq!(probe("/live").await, 200);
    assert_eq!(probe("/metrics").await, 200);
    assert!(drain.await.unwrap(), "drained");
    assert_eq!(req.await.unwrap().unwrap().status, 200);
    // Aborted tasks are dropped by the runtime shortly after.
    let t = Instant::now();
    while tokio::net::TcpStream::connect(admin_addr).await.is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the admin port stops once drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
