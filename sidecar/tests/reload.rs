//! The mesh config changing under the sidecar: swaps under load fail no request, readiness waits
//! for a first config, and invalid configs are refused while the last good one serves.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::time::Instant;

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
        r#"{"services":[{"name":"llm","port":1,"variants":[],"retires":{}}]}"#,
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

/// A ModelService breaking a rule (a regex that does not compile) is left out on its own: the
/// service beside it keeps taking updates, and its own requests get 503 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_is_refused_alone_and_the_others_keep_updating() {
    let (v1, v2) = (backend("v1", Mode::Ok).await, backend("v2", Mode::Ok).await);
    let doc = |good: &SocketAddr, regex: &str| {
        json!({"services": [
            {"name": "good", "port": 1, "variants": [{"name": "s", "weight": 100,
                "endpoints": [{"address": good.to_string()}]}]},
            {"name": "bad", "port": 1, "variants": [{"name": "s", "weight": 100,
                "endpoints": [{"address": good.to_string()}]}],
             "routes": [{"headers": [{"name": "x-user", "regex": regex}], "variant": "s"}]},
        ]})
        .to_string()
    };
    let s = sidecar(&doc(&v1.addr, "ok")).await;
    let c = client();
    assert_eq!(
        get(&c, s.sidecar.inbound, "bad", &[]).await.unwrap().status,
        200
    );
    write_config(&s.config, &doc(&v2.addr, "([a-z"));
    let t = Instant::now();
    loop {
        let r = get(&c, s.sidecar.inbound, "good", &[]).await.unwrap();
        if r.version() == Some("v2") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the good service never took its update"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(&c, s.sidecar.inbound, "bad", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-infermesh-reason"], "service-refused");
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("does not compile"), "{body}");
    let (_, cfg) = admin(&s.sidecar, "/config").await;
    assert!(
        cfg.contains("does not compile"),
        "/config lists the refusal: {cfg}"
    );
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert!(m.contains("infermesh_config_services_refused 1"), "{m}");
    assert!(m.contains("infermesh_config_rejections_total 0"), "{m}");
}
