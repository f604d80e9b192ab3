//! The sidecar in-process against real hyper backends on loopback: splits, stickiness, retries and
//! budgets, streaming, cancellation, hot reload, overload, meshed delivery, errors and admin.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

fn retries(
    attempts: u32,
    on: &[&str],
    per_try_ms: Option<u64>,
    ratio: f64,
    min: u32,
) -> serde_json::Value {
    json!({"retries": {"attempts": attempts, "retryOn": on, "perTryTimeoutMs": per_try_ms,
        "backoffBaseMs": 1, "backoffMaxMs": 5, "backoffJitter": 0.5,
        "budgetRatio": ratio, "budgetMinPerSecond": min}})
}

fn by_version(replies: &[Result<Reply, String>]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        let k = match r {
            Ok(r) if r.status == 200 => r.version().unwrap_or("?").to_owned(),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error {e}"),
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_over_10000_requests_is_within_one_percent() {
    let (a, b) = (backend("v1", Mode::Ok).await, backend("v2", Mode::Ok).await);
    let s = sidecar(&config(
        json!({}),
        &[("stable", 90, vec![a.addr]), ("canary", 10, vec![b.addr])],
    ))
    .await;
    let replies = load(
        s.sidecar.inbound,
        "llm",
        10_000,
        16,
        Duration::from_secs(60),
    )
    .await;
    let v = by_version(&replies);
    assert_eq!(replies.len(), 10_000);
    let (v1, v2) = (
        v.get("v1").copied().unwrap_or(0),
        v.get("v2").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 10_000, "{v:?}");
    assert!((8_900..=9_100).contains(&v1), "{v:?}");
    assert!((900..=1_100).contains(&v2), "{v:?}");
    // Upstream connections are kept alive: at most one per concurrent request and backend.
    let conns = (
        a.conns.load(Ordering::SeqCst),
        b.conns.load(Ordering::SeqCst),
    );
    assert!(conns.0 <= 16 && conns.1 <= 16, "{conns:?}");
    // Per-variant choices are visible in the metrics.
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(
        m.contains(r#"infermesh_requests_total{service="llm",variant="canary",class="2xx"} 1000"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_keeps_each_user_on_one_variant() {
    let (a, b) = (backend("v1", Mode::Ok).await, backend("v2", Mode::Ok).await);
    let cfg = config(
        json!({"stickyHeader": "x-user"}),
        &[("a", 50, vec![a.addr]), ("b", 50, vec![b.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let mut users = [0usize; 2];
    for u in 0..100 {
        let h = [("x-user", format!("user-{u}"))];
        let first = get(&c, s.sidecar.inbound, "llm", &h).await.unwrap();
        let v = first.version().unwrap().to_owned();
        for _ in 0..4 {
            let r = get(&c, s.sidecar.inbound, "llm", &h).await.unwrap();
            assert_eq!(r.version(), Some(v.as_str()), "user-{u} moved");
        }
        users[usize::from(v == "v2")] += 1;
    }
    assert!(
        users[0] >= 30 && users[1] >= 30,
        "cohorts are about half each: {users:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_host_forms_and_absolute_uris() {
    let (a, b) = (backend("v1", Mode::Ok).await, backend("v2", Mode::Ok).await);
    let cfg = config(
        json!({"routes": [{"headers": [{"name": "x-user", "prefix": "beta-"}], "variant": "canary"}]}),
        &[("stable", 100, vec![a.addr]), ("canary", 0, vec![b.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let beta = [("x-user", "beta-7".to_string())];
    assert_eq!(
        get(&c, s.sidecar.inbound, "llm", &beta)
            .await
            .unwrap()
            .version(),
        Some("v2")
    );
    for host in [
        "llm",
        "llm:8000",
        "llm.team",
        "llm.team.svc",
        "LLM.team.svc.cluster.local:80",
    ] {
        let r = get(&c, s.sidecar.outbound, host, &[]).await.unwrap();
        assert_eq!(r.version(), Some("v1"), "host {host}");
    }
    // Outbound proxy form: the absolute URI names the service.
    let req = Request::get("http://llm.team/v1/models")
        .body(Full::<Bytes>::default())
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(s.sidecar.outbound)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = req;
    conn.write_all(
        b"GET http://llm.team/v1/models HTTP/1.1\r\nHost: llm.team\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("x-model-version: v1"),
        "{out}"
    );
    // The backend saw the forwarding headers.
    let h = a.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.contains_key("x-request-id") && h.contains_key("forwarded"));
    assert!(!h.contains_key("connection"));
}

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
async fn twenty_config_swaps_under_load_fail_no_request() {
    let (a, b) = (backend("v1", Mode::Ok).await, backend("v2", Mode::Ok).await);
    let first = config(
        json!({}),
        &[("stable", 100, vec![a.addr]), ("canary", 0, vec![b.addr])],
    );
    let s = sidecar(&first).await;
    let addr = s.sidecar.inbound;
    // Constant load until the swaps are done (bounded: 100,000 requests or 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (c, t, mut out) = (client(), Instant::now(), Vec::new());
                while !stop.load(Ordering::SeqCst)
                    && out.len() < 25_000
                    && t.elapsed() < Duration::from_secs(60)
                {
                    out.push(get(&c, addr, "llm", &[]).await);
                }
                out
            })
        })
        .collect();
    for i in 0..20u32 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let w = (i * 5) % 100;
        let eps = if i % 2 == 0 {
            vec![a.addr, b.addr]
        } else {
            vec![b.addr]
        };
        let cfg = config(
            json!({"retries": {"attempts": 1 + i % 3, "backoffBaseMs": 1, "backoffMaxMs": 2, "backoffJitter": 0.0,
                               "budgetRatio": 0.2, "budgetMinPerSecond": 10}}),
            &[("stable", 100 - w, vec![a.addr]), ("canary", w, eps)],
        )
        .replace(r#""services""#, &format!(r#""revision":"rev-{i}","services""#));
        write_config(&s.config, &cfg);
        // Each swap is applied before the next one is written.
        let t = Instant::now();
        while !admin(&s.sidecar, "/config")
            .await
            .1
            .contains(&format!(r#""revision":"rev-{i}""#))
        {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "rev-{i} never applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        workers.iter().all(|w| !w.is_finished()),
        "the load lasted through every swap"
    );
    stop.store(true, Ordering::SeqCst);
    let mut replies = Vec::new();
    for w in workers {
        replies.extend(w.await.unwrap());
    }
    let v = by_version(&replies);
    assert!(replies.len() > 100, "{}", replies.len());
    assert_eq!(
        v.get("v1").unwrap_or(&0) + v.get("v2").unwrap_or(&0),
        replies.len(),
        "{v:?}"
    );
    let (_, cfg) = admin(&s.sidecar, "/config").await;
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["revision"], "rev-19");
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(m.contains("infermesh_config_reloads_total 21"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_times_the_concurrency_limit_sheds_the_excess_quickly() {
    let b = backend("v1", Mode::Slow(Duration::from_millis(400))).await;
    let cfg = config(
        json!({"concurrency": {"maxInFlightPerEndpoint": 4, "maxQueue": 4, "queueTimeoutMs": 150}}),
        &[("s", 100, vec![b.addr])],
    );
    let s = sidecar(&cfg).await;
    let c = client();
    let t = Instant::now();
    let replies = futures::future::join_all((0..16).map(|_| {
        let c = c.clone();
        let addr = s.sidecar.inbound;
        async move {
            let r = get(&c, addr, "llm", &[]).await.unwrap();
            (r, t.elapsed())
        }
    }))
    .await;
    let ok = replies.iter().filter(|(r, _)| r.status == 200).count();
    let shed: Vec<_> = replies.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(ok + shed.len(), 16);
    assert!(ok >= 4, "accepted requests succeed: {ok}");
    assert!(shed.len() >= 8, "the excess is shed: {}", shed.len());
    for (r, at) in shed {
        assert_eq!(r.headers["x-infermesh-reason"], "overloaded");
        assert!(r.headers.contains_key("retry-after"));
        assert!(*at < Duration::from_millis(150 + 200), "shed after {at:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_endpoint_gets_the_routed_header_and_its_sidecar_delivers_locally() {
    let model = backend("v1", Mode::Ok).await;
    // The peer pod's sidecar: its config knows the service's local port.
    let peer_cfg = json!({"services": [{"name": "llm", "port": model.addr.port(),
        "variants": [{"name": "stable", "weight": 100}]}]})
    .to_string();
    let peer = sidecar(&peer_cfg).await;
    let here_cfg = json!({"services": [{"name": "llm", "port": 1, "variants": [{"name": "stable", "weight": 100,
        "endpoints": [{"address": peer.sidecar.inbound.to_string(), "meshed": true}]}]}]})
    .to_string();
    let here = sidecar(&here_cfg).await;
    let c = client();
    let r = get(
        &c,
        here.sidecar.outbound,
        "llm",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), Some("v1"));
    let h = model.last_headers.lock().unwrap().clone().unwrap();
    assert!(
        !h.contains_key("x-infermesh-routed"),
        "the marker stops at the peer sidecar"
    );
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1, 127.0.0.1",
        "both hops recorded"
    );
    let (_, m) = admin(&peer.sidecar, "/metrics").await;
    assert!(
        m.contains(r#"infermesh_requests_total{service="llm",variant="stable",class="2xx"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_a_config_and_invalid_configs_are_refused() {
    let path = temp_path("late");
    let mut opts = infermesh_sidecar::Options::loopback(path.clone());
    opts.config_poll_interval = Duration::from_millis(20);
    let s = infermesh_sidecar::start(opts).await.unwrap();
    assert_eq!(admin(&s, "/live").await.0, 200);
    assert_eq!(admin(&s, "/ready").await.0, 503);
    let r = get(&client(), s.inbound, "llm", &[]).await.unwrap();
    assert_eq!(r.headers["x-infermesh-reason"], "config-not-loaded");
    let b = backend("v1", Mode::Ok).await;
    write_config(&path, &config(json!({}), &[("s", 100, vec![b.addr])]));
    let t = Instant::now();
    while admin(&s, "/ready").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(3), "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, before) = admin(&s, "/config").await;
    write_config(
        &path,
        r#"{"services":[{"name":"llm","port":1,"variants":[]}]}"#,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        admin(&s, "/config").await.1,
        before,
        "the last good config stays"
    );
    let (_, m) = admin(&s, "/metrics").await;
    assert!(m.contains("infermesh_config_rejections_total 1"), "{m}");
    assert_eq!(
        get(&client(), s.inbound, "llm", &[]).await.unwrap().status,
        200
    );
}

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
