//! Variant choice end to end: the exact weighted split, sticky cohorts, header routes, host forms
//! and absolute URIs, and a meshed peer's sidecar delivering a routed request locally.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::json;

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

/// A proven `x-infermesh-routed` marker is honoured only when it names a service and a variant
/// this sidecar enforces (a peer on a newer config may name one it does not know yet); anything
/// else is routed like any request, never delivered locally on trust. Unproven markers:
/// `tests/trust.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_header_naming_no_known_variant_is_routed_normally() {
    let local_model = backend("local", Mode::Ok).await;
    let routed_to = backend("routed", Mode::Ok).await;
    let cfg = json!({"services": [{"name": "llm", "port": local_model.addr.port(),
        "variants": [{"name": "stable", "weight": 100,
            "endpoints": [{"address": routed_to.addr.to_string()}]}]}]})
    .to_string();
    let s = sidecar(&cfg).await;
    let c = client();
    // A peer sidecar of the same namespace that routes every request to `variant` at `s`.
    let version = |variant: &'static str| {
        let c = c.clone();
        let inbound = s.sidecar.inbound;
        async move {
            let cfg = json!({"services": [{"name": "llm", "port": 1, "variants": [
                {"name": variant, "weight": 100,
                 "endpoints": [{"address": inbound.to_string(), "meshed": true}]}]}]})
            .to_string();
            let peer = sidecar(&cfg).await;
            let r = get(&c, peer.sidecar.outbound, "llm", &[]).await.unwrap();
            assert_eq!(r.status, 200, "{variant}");
            r.version().unwrap_or_default().to_owned()
        }
    };
    assert_eq!(
        version("stable").await,
        "local",
        "a known variant: delivered locally"
    );
    assert_eq!(
        version("canary").await,
        "routed",
        "a variant this sidecar does not know is routed"
    );
}
