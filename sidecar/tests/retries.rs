//! Retries hide failing endpoints within the retry budget; outlier ejection, `Retry-After` and
//! request bodies replayed (or streamed once) as retries need.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::json;

/// One endpoint of three fails in `mode`; retries hide it from every client.
async fn retries_hide(mode: Mode) {
    let good = [backend("v1", Mode::Ok).await, backend("v1", Mode::Ok).await];
    let bad = backend("v1", mode).await;
    let cfg = config(
        retries(3, &["5xx", "reset", "connect-failure"], Some(150), 0.2, 100),
        &[("stable", 100, vec![good[0].addr, good[1].addr, bad.addr])],
    );
    let s = sidecar(&cfg).await;
    let replies = load(s.sidecar.inbound, "llm", 300, 8, Duration::from_secs(60)).await;
    let v = by_version(&replies);
    assert_eq!(v.get("v1"), Some(&300), "{v:?}");
    assert!(
        bad.hits.load(Ordering::SeqCst) >= 1,
        "the failing endpoint was tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_an_endpoint_answering_503() {
    retries_hide(Mode::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_an_endpoint_resetting_connections() {
    retries_hide(Mode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_hanging_endpoint() {
    retries_hide(Mode::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_extra_load_on_a_failing_variant() {
    let bad = [
        backend("v1", Mode::Status(503)).await,
        backend("v1", Mode::Status(503)).await,
    ];
    let cfg = config(
        retries(5, &["5xx"], None, 0.2, 0),
        &[("stable", 100, vec![bad[0].addr, bad[1].addr])],
    );
    let s = sidecar_with(&cfg, |o| o.eject_after = 0).await;
    let n = 500;
    let replies = load(s.sidecar.inbound, "llm", n, 8, Duration::from_secs(60)).await;
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status == 503))
    );
    let hits: usize = bad.iter().map(|b| b.hits.load(Ordering::SeqCst)).sum();
    let extra = hits - n;
    assert!(
        extra <= n / 5,
        "{extra} retries for {n} requests exceed 20%"
    );
    assert!(
        extra >= n / 10,
        "the budget allowed retries at all: {extra}"
    );
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(
        m.contains(r#"infermesh_retry_budget_exhausted_total{service="llm"}"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_sets_its_own_outlier_ejection() {
    let bad = backend("v1", Mode::Status(503)).await;
    let good = backend("v1", Mode::Ok).await;
    let cfg = config(
        json!({"outlierDetection": {"consecutiveFailures": 2, "baseEjectionMs": 60000}}),
        &[("stable", 100, vec![bad.addr, good.addr])],
    );
    // The sidecar's own default (7 failures) is overridden by the service's 2.
    let s = sidecar(&cfg).await;
    let n = 40;
    let replies = load(s.sidecar.inbound, "llm", n, 1, Duration::from_secs(30)).await;
    let ok = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200))
        .count();
    assert_eq!(
        bad.hits.load(Ordering::SeqCst),
        2,
        "ejected after 2 failures"
    );
    assert_eq!(ok, n - 2);
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(
        m.contains(r#"infermesh_endpoint_ejections_total{service="llm",variant="stable"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_that_endpoint() {
    let busy = backend("v1", Mode::RetryAfter(5)).await;
    let cfg = config(
        retries(3, &["5xx"], None, 1.0, 100),
        &[("s", 100, vec![busy.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let r = get(&c, s.sidecar.inbound, "llm", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers["retry-after"], "5",
        "the upstream's answer is passed on"
    );
    assert_eq!(
        busy.hits.load(Ordering::SeqCst),
        1,
        "not retried on the endpoint that asked to wait"
    );
    // With a second endpoint the retry goes there instead.
    let ok = backend("v1", Mode::Ok).await;
    let cfg = config(
        retries(3, &["5xx"], None, 1.0, 100),
        &[("s", 100, vec![busy.addr, ok.addr])],
    );
    let s = sidecar(&cfg).await;
    for _ in 0..20 {
        assert_eq!(
            get(&c, s.sidecar.inbound, "llm", &[]).await.unwrap().status,
            200
        );
    }
    assert!(
        busy.hits.load(Ordering::SeqCst) <= 2,
        "held for 5 s after its first 503"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_of_any_size_reach_the_backend_with_retries_on() {
    let b = backend("v1", Mode::Ok).await;
    let cfg = config(
        retries(3, &["5xx", "connect-failure"], None, 0.2, 10),
        &[("s", 100, vec![b.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    for len in [0usize, 10 << 10, 1 << 20, 3 << 20] {
        let req = Request::post(format!("http://{}/v1/completions", s.sidecar.inbound))
            .header("host", "llm")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-body-len"],
            len.to_string().as_str(),
            "content-length body of {len}"
        );
    }
    // Chunked, of unknown size: buffered up to 1 MiB, then the rest streams on.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for chunks in [3usize, 12] {
        let mut conn = tokio::net::TcpStream::connect(s.sidecar.inbound)
            .await
            .unwrap();
        conn.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: llm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'y'; 256 << 10];
        for _ in 0..chunks {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
            conn.write_all(&chunk).await.unwrap();
            conn.write_all(b"\r\n").await.unwrap();
        }
        conn.write_all(b"0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        let want = format!("x-body-len: {}", chunks * (256 << 10));
        assert!(
            out.starts_with("HTTP/1.1 200") && out.contains(&want),
            "{chunks} chunks: {out}"
        );
    }
}

/// A POST that failed before any byte reached a model is retried, whatever the method: no
/// connection, a 503 refusal, and a peer sidecar whose own model is gone (its 502
/// `upstream-unreachable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_retried_when_no_model_saw_them() {
    let good = backend("v1", Mode::Ok).await;
    let refusing = backend("v1", Mode::Status(503)).await;
    let nothing = closed_port().await;
    // A peer sidecar whose model port has no listener: it answers 502 upstream-unreachable.
    let model_gone = closed_port().await;
    let peer = sidecar(
        &json!({"services": [{"name": "llm", "port": model_gone.port(),
        "variants": [{"name": "stable", "weight": 100}]}]})
        .to_string(),
    )
    .await;
    let endpoint =
        |a: std::net::SocketAddr, meshed: bool| json!({"address": a.to_string(), "meshed": meshed});
    let cfg = json!({"services": [{"name": "llm", "port": 1,
        "retries": {"attempts": 4, "retryOn": ["connect-failure", "gateway-error"],
                    "backoffBaseMs": 1, "backoffMaxMs": 2, "budgetRatio": 1.0, "budgetMinPerSecond": 1000},
        "outlierDetection": {"consecutiveFailures": 0},
        "variants": [{"name": "stable", "weight": 100, "endpoints": [
            endpoint(good.addr, false), endpoint(refusing.addr, false),
            endpoint(nothing, false), endpoint(peer.sidecar.inbound, true)]}]}]});
    let s = sidecar(&cfg.to_string()).await;
    let c = client();
    for i in 0..60 {
        let r = post(&c, s.sidecar.inbound, "llm", r#"{"prompt":"hi"}"#)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "POST {i}: {:?} {:?}", r.headers, r.body);
    }
    assert!(
        refusing.hits.load(Ordering::SeqCst) > 0,
        "the 503 endpoint was tried"
    );
    let (_, m) = admin(&peer.sidecar, "/metrics").await;
    assert!(m.contains("class=\"5xx\""), "the peer answered 502s: {m}");
}

/// A reset may come after the model started work: a POST is retried on it only when the service
/// says repeats are safe (`retryNonIdempotent`), a GET always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_post_is_retried_only_with_retry_non_idempotent() {
    let good = backend("v1", Mode::Ok).await;
    let resets = backend("v1", Mode::Reset).await;
    for allowed in [false, true] {
        let cfg = json!({"services": [{"name": "llm", "port": 1,
            "retries": {"attempts": 3, "retryOn": ["reset"], "retryNonIdempotent": allowed,
                        "backoffBaseMs": 1, "backoffMaxMs": 2, "budgetRatio": 1.0, "budgetMinPerSecond": 1000},
            "loadBalancing": {"policy": "RoundRobin"},
            "outlierDetection": {"consecutiveFailures": 0},
            "variants": [{"name": "stable", "weight": 100, "endpoints": [
                {"address": good.addr.to_string()}, {"address": resets.addr.to_string()}]}]}]});
        let s = sidecar(&cfg.to_string()).await;
        let c = client();
        let mut failed = 0;
        for _ in 0..20 {
            let r = post(&c, s.sidecar.inbound, "llm", r#"{"prompt":"hi"}"#)
                .await
                .unwrap();
            if r.status != 200 {
                assert_eq!(r.status, 502);
                failed += 1;
            }
        }
        for _ in 0..10 {
            let g = get(&c, s.sidecar.inbound, "llm", &[]).await.unwrap();
            assert_eq!(g.status, 200, "a GET is retried on a reset");
        }
        if allowed {
            assert_eq!(failed, 0, "retryNonIdempotent retries the POSTs");
        } else {
            assert!(
                failed >= 5,
                "without it, POSTs meeting the reset fail: {failed} of 20"
            );
        }
    }
}

/// Bodies kept for retries count against one sidecar-wide cap: past it, requests still go
/// through, once and without retries, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_buffers_stay_within_the_sidecar_wide_cap() {
    let b = backend("v1", Mode::Slow(Duration::from_millis(400))).await;
    let cfg = config(
        retries(3, &["5xx", "connect-failure"], None, 0.2, 10),
        &[("s", 100, vec![b.addr])],
    );
    let s = sidecar_with(&cfg, |o| o.replay_buffer_bytes = 2 << 20).await;
    let c = client();
    let body = Bytes::from(vec![b'x'; 1 << 20]);
    let sends = (0..10).map(|_| {
        let req = Request::post(format!("http://{}/v1/completions", s.sidecar.inbound))
            .header("host", "llm")
            .body(Full::new(body.clone()))
            .unwrap();
        c.request(req)
    });
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    let full: u64 = m
        .lines()
        .find(|l| l.starts_with("infermesh_replay_pool_full_total{service=\"llm\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        (8..=10).contains(&full),
        "two 1 MiB bodies fit in 2 MiB, the rest streamed: {full}"
    );
}
