//! A routed marker skips routing only when a sidecar of the same namespace proves it: one sent by
//! hand, or by a sidecar holding another namespace's key, is routed like any other request; and
//! sidecars that cannot prove markers to each other stop passing a request back and forth.

mod common;

use common::*;
use serde_json::json;

/// A sidecar whose local model is `canary`'s (weight 0): a request reaches the canary only if a
/// proven marker names it; routed here, every request goes to `stable`.
async fn target() -> (Backend, Backend, Running) {
    let stable = backend("v1", Mode::Ok).await;
    let canary = backend("v2", Mode::Ok).await;
    let cfg = json!({"services": [{"name": "llm", "port": canary.addr.port(), "variants": [
        {"name": "stable", "weight": 100, "endpoints": [{"address": stable.addr.to_string()}]},
        {"name": "canary", "weight": 0},
    ]}]})
    .to_string();
    let s = sidecar(&cfg).await;
    (stable, canary, s)
}

/// A caller's sidecar sending everything to `canary` at `peer`, a meshed endpoint, with mesh key
/// `seed` (1 is the target's).
async fn caller(peer: std::net::SocketAddr, seed: u8) -> Running {
    let cfg = json!({"services": [{"name": "llm", "port": 1, "variants": [
        {"name": "canary", "weight": 100, "endpoints": [{"address": peer.to_string(), "meshed": true}]},
    ]}]})
    .to_string();
    sidecar_with(&cfg, |o| o.mesh_key_file = Some(key_file(seed))).await
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let line = format!("infermesh_routed_markers_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_marker_proven_with_the_namespace_key_reaches_the_named_variant() {
    let (_stable, canary, target) = target().await;
    let c = client();

    // The same namespace: the marker proves, the canary serves.
    let ours = caller(target.sidecar.inbound, 1).await;
    let r = get(&c, ours.sidecar.outbound, "llm", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.version()), (200, Some("v2")));
    assert!(
        !canary
            .last_headers
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .contains_key("x-infermesh-routed"),
        "the marker stops at the sidecar"
    );

    // By hand, straight to the inbound port: routed by the weights.
    for marker in ["llm/canary", "llm/canary;hop=1;t=1000000000;sig=AAAA"] {
        let r = get(
            &c,
            target.sidecar.inbound,
            "llm",
            &[("x-infermesh-routed", marker.into())],
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.version()),
            (200, Some("v1")),
            "{marker}"
        );
    }

    // A sidecar of another namespace (another key): routed by the weights too.
    let theirs = caller(target.sidecar.inbound, 2).await;
    let r = get(&c, theirs.sidecar.outbound, "llm", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.version()), (200, Some("v1")));

    let (_, m) = admin(&target.sidecar, "/metrics").await;
    assert_eq!(refused(&m, "unsigned"), 1, "{m}");
    assert_eq!(refused(&m, "bad-proof"), 1, "{m}");
    assert_eq!(
        refused(&m, "expired"),
        1,
        "the hand-made proof is years off: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_that_cannot_prove_markers_to_each_other_refuse_a_loop_with_508() {
    // Two sidecars without a key, each sending `llm` to the other as a meshed peer: each routes
    // the request again, until the hop limit.
    let placeholder = json!({"services": []}).to_string();
    let keyless = |o: &mut infermesh_sidecar::Options| o.mesh_key_file = None;
    let a = sidecar_with(&placeholder, keyless).await;
    let b = sidecar_with(&placeholder, keyless).await;
    let to = |peer: std::net::SocketAddr| {
        json!({"services": [{"name": "llm", "port": 1, "variants": [
            {"name": "stable", "weight": 100, "endpoints": [{"address": peer.to_string(), "meshed": true}]},
        ]}]})
        .to_string()
    };
    write_config(&a.config, &to(b.sidecar.inbound));
    write_config(&b.config, &to(a.sidecar.inbound));
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let r = loop {
        let r = get(&c, a.sidecar.outbound, "llm", &[]).await.unwrap();
        if r.status != 404 || std::time::Instant::now() > deadline {
            break r;
        }
        // The configs are still loading.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (_, ca) = admin(&a.sidecar, "/config").await;
    let (_, cb) = admin(&b.sidecar, "/config").await;
    assert_eq!(r.status, 508, "{:?} {ca} {cb}", r.body);
    assert_eq!(r.headers["x-infermesh-reason"], "routing-loop");
    assert!(
        String::from_utf8_lossy(&r.body).contains("infermesh-mesh-key"),
        "{:?}",
        r.body
    );
}
