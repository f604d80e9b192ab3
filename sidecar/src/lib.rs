//! infermesh sidecar: the data plane of the infermesh service mesh for AI inference.
//!
//! One request path (`request`) serves the inbound listener (requests for this pod's ModelService,
//! 15006) and the outbound one (the model calling other ModelServices, 15001): identify the
//! service, choose a variant (routes, sticky cohorts, exact weighted split), balance over its
//! endpoints, retry within a budget, and stream the response back untouched. The mesh config comes
//! from a file or the Kubernetes API and is swapped atomically (`config`). The admin port (15020)
//! serves readiness, liveness, Prometheus metrics and the config in force (`server`).
#![forbid(unsafe_code)]

// Bottom up: each module uses only the ones listed before it (`tests/layout.rs` fails on a
// cycle). Small shared leaves:
mod detach;
mod hash;
// Token counts and timings read from OpenAI-style responses (recorded by `metrics`):
mod metrics;
mod named_watch;
mod tokens;
// Load signals: the engines' metrics, the reports sidecars send each other:
mod load;
// Connections and bodies to an upstream address:
mod upstream;
// Endpoint state, limits, budget and backoff:
mod endpoint;
// The choice of variant and endpoint:
mod routing;
// The mesh config in force, compiled into the table the request path reads:
mod config;
// Proof between sidecars that a peer routed a request:
mod trust;
// This pod's models and the load they report:
mod serving;
// Idle peers asked for their load:
mod peers;
// The request path:
mod request;
// Listeners and the admin port:
mod server;
// The flags, read by `start`:
mod options;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::source;
use crate::config::store::ConfigStore;
use crate::endpoint::state::{EjectionPolicy, EwmaPolicy};
pub use crate::options::Options;
use crate::request::headers::Forwarding;
use crate::request::{ConnInfo, Direction, Proxy};
use crate::routing::affinity::PrefixIndex;
use crate::server::admin::Admin;
use crate::server::listener;
use crate::serving::LocalModels;
use crate::trust::Trust;
use crate::upstream::forward::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}; pick a free address with --{what}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "no mesh config source: pass --config-file PATH, or set POD_NAMESPACE (or --namespace) to watch the ConfigMap"
    )]
    NoConfigSource,
    #[error("{0}; fix --mesh-key-file")]
    MeshKey(String),
}

/// A running sidecar.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    admin_state: Arc<Admin>,
    /// Stops the proxy listeners (the drain starts).
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener, once the drain is over: `/ready` says draining until then.
    admin_stop: watch::Sender<bool>,
    proxies: JoinSet<()>,
    background: JoinSet<()>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds the three listeners, loads the config source and starts serving.
pub async fn start(opts: Options) -> Result<Sidecar, StartError> {
    if opts.config_file.is_none() && opts.namespace.is_none() {
        return Err(StartError::NoConfigSource);
    }
    let inbound = bind("inbound", opts.inbound).await?;
    let outbound = bind("outbound", opts.outbound).await?;
    let admin_l = bind("admin", opts.admin).await?;
    let addr = |l: &TcpListener, a| l.local_addr().unwrap_or(a);
    let (inbound_addr, outbound_addr, admin_addr) = (
        addr(&inbound, opts.inbound),
        addr(&outbound, opts.outbound),
        addr(&admin_l, opts.admin),
    );

    let metrics = Arc::new(metrics::Metrics::new());
    let ewma = EwmaPolicy {
        default_rtt: opts.ewma_default_rtt,
        decay: opts.ewma_decay,
    };
    let store =
        Arc::new(ConfigStore::new(metrics, opts.pod_ip, ewma).with_model_host(opts.model_host));
    let (shutdown, rx) = watch::channel(false);
    let (admin_stop, admin_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    if let Some(path) = opts.config_file.clone() {
        background.spawn(source::watch_file(
            path,
            opts.config_poll_interval,
            store.clone(),
            rx.clone(),
        ));
    } else if let Some(ns) = opts.namespace.clone() {
        background.spawn(source::watch_configmap(ns, store.clone(), rx.clone()));
    }
    let trust = Arc::new(Trust::default());
    if let Some(path) = &opts.mesh_key_file {
        trust.set(trust::source::keys_from_file(path).map_err(StartError::MeshKey)?);
    } else if let Some(ns) = opts.namespace.clone() {
        background.spawn(trust::source::watch_secret(ns, trust.clone(), rx.clone()));
    }

    let local = Arc::new(LocalModels::default());
    background.spawn(serving::scrape::run(
        store.clone(),
        local.clone(),
        rx.clone(),
    ));
    background.spawn(peers::run(store.clone(), opts.peer_admin_port, rx.clone()));
    let proxy = Arc::new(Proxy {
        store: store.clone(),
        trust,
        upstream: Upstream::new(
            opts.connect_timeout,
            opts.request_body_timeout,
            opts.replay_buffer_bytes,
        ),
        ejection: EjectionPolicy::new(opts.eject_after, opts.eject_base, opts.eject_max),
        ewma,
        prefixes: PrefixIndex::new(opts.prefix_index_blocks),
        local: local.clone(),
    });
    let mut proxies = JoinSet::new();
    for (listener, name, direction) in [
        (inbound, "inbound", Direction::Inbound),
        (outbound, "outbound", Direction::Outbound),
    ] {
        let proxy = proxy.clone();
        let make = move |peer: SocketAddr| {
            let proxy = proxy.clone();
            let conn = Arc::new(ConnInfo {
                direction,
                forwarding: Forwarding::new(peer.ip()),
            });
            move |req| proxy.clone().handle(conn.clone(), req)
        };
        proxies.spawn(listener::serve(
            listener,
            name,
            opts.max_header_bytes,
            make,
            rx.clone(),
        ));
    }
    let admin_state = Arc::new(Admin {
        store: store.clone(),
        local,
        listeners_up: Default::default(),
        draining: Default::default(),
    });
    {
        let admin = admin_state.clone();
        let make = move |peer: SocketAddr| {
            let admin = admin.clone();
            move |req| admin.clone().handle(peer.ip(), req)
        };
        background.spawn(listener::serve(
            admin_l,
            "admin",
            opts.max_header_bytes,
            make,
            admin_rx,
        ));
    }
    admin_state.listeners_up.store(true, Ordering::Release);
    tracing::info!(inbound = %inbound_addr, outbound = %outbound_addr, admin = %admin_addr, "listening");
    Ok(Sidecar {
        inbound: inbound_addr,
        outbound: outbound_addr,
        admin: admin_addr,
        admin_state,
        shutdown,
        admin_stop,
        proxies,
        background,
    })
}

impl Sidecar {
    /// Stops accepting, lets in-flight requests finish for up to `drain`, then stops everything.
    /// The admin port serves throughout, `/ready` answering 503 "draining", so probes and
    /// metrics see the drain; it stops last. Returns true when every request finished within
    /// the grace period.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.admin_state.draining.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(drain, async {
            while self.proxies.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing the remaining connections"
            );
        }
        self.proxies.abort_all();
        let _ = self.admin_stop.send(true);
        self.background.abort_all();
        drained
    }
}
