//! What a client sees when the sidecar answers itself: statuses and `x-infermesh-reason` tokens.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_statuses_and_reasons() {
    let a = backend("v1", Mode::Ok).await;
    let cfg = config(
        json!({}),
        &[("stable", 50, vec![a.addr]), ("empty", 50, vec![])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let r = get(&c, s.sidecar.inbound, "nope", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-infermesh-reason"], "unknown-service");
    let r = get(&c, s.sidecar.inbound, "llm.other-ns", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "another namespace's service is unknown here");
    let statuses: Vec<u16> =
        futures::future::join_all((0..4).map(|_| get(&c, s.sidecar.inbound, "llm", &[])))
            .await
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                if r.status == 503 {
                    assert_eq!(r.headers["x-infermesh-reason"], "no-ready-endpoint");
                }
                r.status.as_u16()
            })
            .collect();
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    // Garbage on the wire: a 400, and the sidecar keeps serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
        .await
        .unwrap();
    conn.write_all(b"\x00\x01GARBAGE \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // No Host at all (HTTP/1.0): 400 with a reason.
    let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 400") && out.contains("missing-host"),
        "{out}"
    );
    assert_eq!(
        get(&c, s.sidecar.inbound, "llm", &[])
            .await
            .unwrap()
            .status
            .as_u16()
            / 100,
        2
    );
}

/// A client's broken request body (a bad chunk, an upload abandoned midway) is the client's
/// fault: a 400 counted as a 4xx, never an upstream failure, and never fed to outlier ejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_a_client_fault_not_an_upstream_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = backend("a", Mode::Ok).await;
    let b = backend("b", Mode::Ok).await;
    let cfg = config(
        json!({"outlierDetection": {"consecutiveFailures": 2, "baseEjectionMs": 60000}}),
        &[("stable", 100, vec![a.addr, b.addr])],
    );
    let s = sidecar(&cfg).await;
    for i in 0..20 {
        let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
            .await
            .unwrap();
        conn.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: llm\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        if i % 2 == 0 {
            conn.write_all(b"zz-not-a-chunk-size\r\n").await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
            let out = String::from_utf8_lossy(&out);
            assert!(
                out.is_empty() || out.starts_with("HTTP/1.1 400"),
                "an invalid chunk is the client's fault: {out}"
            );
        } else {
            // Abandoned midway: the client goes away with the body unfinished.
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(
        m.contains("class=\"5xx\"} 0\n") && !m.contains("class=\"4xx\"} 0\n"),
        "client faults are counted as 4xx, not 5xx: {m}"
    );
    assert!(
        m.contains("infermesh_endpoint_ejections_total{service=\"llm\",variant=\"stable\"} 0"),
        "{m}"
    );
    // Both endpoints are still in rotation.
    let replies = load(s.sidecar.inbound, "llm", 40, 4, Duration::from_secs(20)).await;
    let v = by_version(&replies);
    assert!(v.get("a") > Some(&5) && v.get("b") > Some(&5), "{v:?}");
}
