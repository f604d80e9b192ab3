//! One upstream endpoint and what the sidecar knows about it while it serves: where it is and its
//! connections ([`Endpoint`]), its live state (in flight, latency, ejection; `state`), its
//! concurrency limit (`limit`), the load its sidecar reports (`load`), and the exponential backoff (`backoff`) that both ejection and
//! retries wait by. The per-service retry budget (`budget`) sits here too: like the limit, it is
//! state that survives config reloads and bounds the load sent to endpoints.
//!
//! Below `routing` (which chooses among endpoints) and `config` (which builds them), above
//! `upstream` (the connections an endpoint owns).

pub(crate) mod backoff;
pub(crate) mod budget;
pub(crate) mod limit;
pub(crate) mod load;
pub(crate) mod state;

use std::sync::Arc;

use self::limit::Limiter;
use self::state::EndpointState;
use crate::upstream::pool::ConnPool;

/// An endpoint of a variant, as compiled from the config; its state, limiter and connections are
/// carried over reloads for as long as its address stays.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) address: String,
    /// `address` hashed the same on every sidecar: its name in the prefix index and in the
    /// rendezvous order (`routing::affinity`).
    pub(crate) key: u64,
    /// Where to connect, and the connections kept there: the endpoint itself, or the service's
    /// local pool (`127.0.0.1:<service port>`) when the endpoint is this pod.
    pub(crate) conns: Arc<ConnPool>,
    /// The endpoint is this pod: its model is reached over loopback, its load read locally.
    pub(crate) local: bool,
    /// Send the request with `x-infermesh-routed` (the peer's sidecar delivers it).
    pub(crate) meshed: bool,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) limiter: Option<Arc<Limiter>>,
}
