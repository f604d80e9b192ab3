//! Choosing an endpoint of the chosen variant ([`Balancer`]): P2C least-request (default),
//! PeakEWMA (P2C over latency × load), round robin, or consistent hash on a header. Endpoints already tried by this
//! request, ejected, held by `Retry-After` or at their concurrency limit are avoided while others
//! remain; if none remain the least-bad one is used rather than failing outright.
//!
//! Fairness: an endpoint that is passed over (ejected, held, tried) leaves its share to all the
//! endpoints that qualify, drawn uniformly ([`uniform`]), never to its successor in the list; and
//! a retry takes no turn of the round-robin rotation, so first tries keep cycling over all.

use std::sync::atomic::AtomicUsize;

use http::HeaderMap;
use http::header::HeaderName;
use infermesh_crds::mesh::LoadBalancingPolicy;
use tokio::time::Instant;

use super::next;
use crate::endpoint::Endpoint;
use crate::hash::{random_below, stable_hash};

/// Virtual nodes per endpoint on the consistent-hash ring.
const RING_POINTS: u32 = 64;

/// A variant's endpoint choice: the service's policy and hash header, and the state the policy
/// keeps (the hash ring, the round-robin counter).
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: LoadBalancingPolicy,
    hash_on: Option<HeaderName>,
    /// Consistent-hash ring: (point, endpoint index), sorted by point.
    ring: Vec<(u64, u32)>,
    rr: AtomicUsize,
}

/// Endpoints this request already tried (bit i = endpoint i; endpoints past 63 are not tracked).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tried(u64);

impl Tried {
    pub(crate) fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
    pub(crate) fn contains(&self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// How picky a scan is; relaxed step by step until an endpoint qualifies.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// Untried, available, with a free concurrency slot.
    Best,
    /// Untried and available.
    Available,
    /// Untried.
    Untried,
    /// Anything.
    Any,
}

const LEVELS: [Level; 4] = [Level::Best, Level::Available, Level::Untried, Level::Any];

fn eligible(e: &Endpoint, i: usize, tried: Tried, level: Level, now: Instant) -> bool {
    if level == Level::Any {
        return true;
    }
    if tried.contains(i) {
        return false;
    }
    if level == Level::Untried {
        return true;
    }
    if !e.state.is_available(now) {
        return false;
    }
    level == Level::Available || e.limiter.as_ref().is_none_or(|l| l.has_capacity())
}

/// `first` if it is eligible (other than `skip`), else an eligible endpoint drawn uniformly. With
/// `first` itself uniform, the result is uniform over the eligible endpoints: the common case
/// (nothing passed over) costs one check, and no endpoint inherits another's share.
fn uniform(
    eps: &[Endpoint],
    first: usize,
    skip: Option<usize>,
    tried: Tried,
    level: Level,
    now: Instant,
) -> Option<usize> {
    let ok = |i: usize| Some(i) != skip && eligible(&eps[i], i, tried, level, now);
    if ok(first) {
        return Some(first);
    }
    let count = (0..eps.len()).filter(|&i| ok(i)).count();
    if count == 0 {
        return None;
    }
    (0..eps.len()).filter(|&i| ok(i)).nth(random_below(count))
}

impl Balancer {
    /// The balancer of a variant with these endpoints; the ring is built only for
    /// `ConsistentHash`.
    pub(crate) fn new(
        policy: LoadBalancingPolicy,
        hash_on: Option<HeaderName>,
        endpoints: &[Endpoint],
    ) -> Self {
        let mut ring = Vec::new();
        if policy == LoadBalancingPolicy::ConsistentHash {
            ring.reserve(endpoints.len() * RING_POINTS as usize);
            for (i, e) in endpoints.iter().enumerate() {
                for p in 0..RING_POINTS {
                    ring.push((
                        stable_hash(format!("{}#{p}", e.address).as_bytes()),
                        i as u32,
                    ));
                }
            }
            ring.sort_unstable();
        }
        Self {
            policy,
            hash_on,
            ring,
            rr: AtomicUsize::new(0),
        }
    }

    /// The endpoint of `eps` (the variant's, as given to [`Balancer::new`]) for this try.
    pub(crate) fn pick(
        &self,
        eps: &[Endpoint],
        headers: &HeaderMap,
        tried: Tried,
        now: Instant,
    ) -> Option<usize> {
        if eps.is_empty() {
            return None;
        }
        if eps.len() == 1 {
            return Some(0);
        }
        let policy = self.policy;
        if policy == LoadBalancingPolicy::ConsistentHash
            && let Some(h) = self.hash_on.as_ref().and_then(|h| headers.get(h))
        {
            return LEVELS
                .iter()
                .find_map(|l| self.ring_pick(eps, stable_hash(h.as_bytes()), tried, *l, now));
        }
        if policy == LoadBalancingPolicy::RoundRobin {
            // The rotation's turn is taken once per request, by its first try; a retry draws.
            let turn = if tried.is_empty() {
                next(&self.rr) % eps.len()
            } else {
                random_below(eps.len())
            };
            return LEVELS
                .iter()
                .find_map(|&level| uniform(eps, turn, None, tried, level, now));
        }
        LEVELS.iter().find_map(|&level| match policy {
            LoadBalancingPolicy::PeakEwma => p2c(eps, tried, level, now, |e| e.state.ewma_cost()),
            // Least request; also ConsistentHash when the request lacks the header.
            _ => p2c(eps, tried, level, now, |e| f64::from(e.state.in_flight())),
        })
    }

    /// The first eligible endpoint clockwise from the hash on the ring.
    fn ring_pick(
        &self,
        eps: &[Endpoint],
        h: u64,
        tried: Tried,
        level: Level,
        now: Instant,
    ) -> Option<usize> {
        let ring = &self.ring;
        if ring.is_empty() {
            return None;
        }
        let start = ring.partition_point(|(p, _)| *p < h);
        (0..ring.len())
            .map(|k| ring[(start + k) % ring.len()].1 as usize)
            .find(|&i| i < eps.len() && eligible(&eps[i], i, tried, level, now))
    }
}

/// Power of two choices: two distinct random eligible endpoints, the cheaper wins.
fn p2c(
    eps: &[Endpoint],
    tried: Tried,
    level: Level,
    now: Instant,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<usize> {
    let n = eps.len();
    let a = uniform(eps, random_below(n), None, tried, level, now)?;
    // The second draw is uniform among the others.
    let other = (a + 1 + random_below(n - 1)) % n;
    let Some(b) = uniform(eps, other, Some(a), tried, level, now) else {
        return Some(a);
    };
    if cost(&eps[b]) < cost(&eps[a]) {
        Some(b)
    } else {
        Some(a)
    }
}

#[cfg(test)]
mod tests;
