//! Choosing where a request goes: the variant of its service ([`router::Router`]: routes, sticky
//! cohorts, the exact weighted split) and then the endpoint of that variant
//! ([`balancer::Balancer`]: P2C least-request, PeakEWMA, round robin, consistent hash, or
//! InferenceAware: `score` over load reports and the prompt's prefix affinity, read by `prompt`
//! and remembered by `affinity`). Each
//! owns the state its choice needs (a schedule, a ring, a counter), built once per config, so the
//! request path only reads and bumps atomics.
//!
//! Above `endpoint` (the balancer reads endpoint state), below `config` (whose compiled table
//! holds a router per service and a balancer per variant).

pub(crate) mod affinity;
pub(crate) mod balancer;
pub(crate) mod prompt;
pub(crate) mod router;
pub(crate) mod score;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The next value of a round-robin counter.
fn next(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Relaxed)
}
