//! Per-endpoint concurrency limits: the excess is shed quickly with `Retry-After`, not queued forever.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::time::Instant;

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
