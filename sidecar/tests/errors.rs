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
