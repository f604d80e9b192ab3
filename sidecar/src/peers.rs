//! Asking idle peers for their load, and publishing what is believed of every endpoint on
//! `/metrics` (`infermesh_endpoint_load`), once a second. A routing sidecar learns an endpoint's load from the
//! reports on its responses; an endpoint it has not sent anything to for a while has no fresh
//! report, and its estimate falls back to this sidecar's own count (zero), which says nothing
//! of the requests other sidecars are sending it. So once a second, the meshed endpoints of
//! InferenceAware variants with no fresh report and nothing in flight from here are asked
//! for one (`GET /load?service=NAME` on the peer's admin port), at most [`PER_TICK`] of them
//! per tick over all services, in turn: a bounded trickle per sidecar, not a scrape of every
//! pod by every pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::store::ConfigStore;
use crate::config::table::RoutingTable;
use crate::load::orca::{self, LoadReport};
use crate::metrics::EndpointSignalLabels;
use crate::upstream::body::RequestBody;
use crate::upstream::pool::ConnPool;

/// Time between two rounds.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// Peers asked per round, over all services.
pub(crate) const PER_TICK: usize = 8;
/// A peer slower than this to tell its load is skipped this round.
const TIMEOUT: Duration = Duration::from_millis(300);

/// Asks idle peers, on `admin_port`, until `stop` turns true.
pub(crate) async fn run(store: Arc<ConfigStore>, admin_port: u16, mut stop: watch::Receiver<bool>) {
    // Where the last round stopped, so every idle endpoint gets its turn.
    let mut cursor = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let table = store.current();
        let now = Instant::now();
        store.metrics.set_endpoint_load(estimates(&table, now));
        let mut idle = Vec::new();
        for svc in &table.services {
            for v in svc
                .variants
                .iter()
                .filter(|v| v.balancer.is_inference_aware())
            {
                for e in v.endpoints.iter().filter(|e| e.meshed) {
                    if e.state.in_flight() == 0 && e.state.load.view(now, 0).age.is_none() {
                        idle.push((svc.name.clone(), e.address.clone(), e.state.clone()));
                    }
                }
            }
        }
        if idle.is_empty() {
            continue;
        }
        let take = idle.len().min(PER_TICK);
        let start = cursor % idle.len();
        cursor = start + take;
        let asks = (0..take).map(|k| {
            let (svc, address, state) = idle[(start + k) % idle.len()].clone();
            async move {
                if let Some(r) = ask(&address, admin_port, &svc).await {
                    state.load.report(r, Instant::now(), state.in_flight());
                }
            }
        });
        futures::future::join_all(asks).await;
    }
}

/// Endpoints published per variant on `/metrics`, so a large pool does not flood it.
const PUBLISHED: usize = 64;

/// What InferenceAware believes of its endpoints, as gauge samples.
fn estimates(table: &RoutingTable, now: Instant) -> Vec<(EndpointSignalLabels, f64)> {
    let mut out = Vec::new();
    for svc in &table.services {
        for v in svc
            .variants
            .iter()
            .filter(|v| v.balancer.is_inference_aware())
        {
            for e in v.endpoints.iter().take(PUBLISHED) {
                let view = e.state.load.view(now, e.state.in_flight());
                let signals = [
                    ("requests", Some(view.requests)),
                    ("waiting", view.waiting),
                    ("kv_usage", view.kv_usage),
                    ("report_age_seconds", view.age.map(|a| a.as_secs_f64())),
                ];
                for (signal, value) in signals {
                    if let Some(value) = value {
                        let labels = EndpointSignalLabels {
                            service: svc.name.clone(),
                            variant: v.name.clone(),
                            endpoint: e.address.clone(),
                            signal,
                        };
                        out.push((labels, value));
                    }
                }
            }
        }
    }
    out
}

/// The report of the peer at `address` (its inbound `ip:port`) for `service`.
async fn ask(address: &str, admin_port: u16, service: &str) -> Option<LoadReport> {
    let ip = address.parse::<SocketAddr>().ok()?.ip();
    let authority = Authority::try_from(SocketAddr::new(ip, admin_port).to_string()).ok()?;
    let pool = ConnPool::new(authority.clone());
    let req = Request::get(format!("/load?service={service}"))
        .header(http::header::HOST, authority.as_str())
        .body(RequestBody::replay(&Bytes::new(), &None))
        .ok()?;
    let (resp, _lent) = tokio::time::timeout(TIMEOUT, pool.send(req, TIMEOUT))
        .await
        .ok()?
        .ok()?;
    LoadReport::parse(resp.headers().get(orca::HEADER)?.as_bytes())
}
