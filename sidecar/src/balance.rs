//! Choosing an endpoint of the chosen variant: P2C least-request (default), PeakEWMA (P2C over
//! latency × load), round robin, or consistent hash on a header. Endpoints already tried by this
//! request, ejected, held by `Retry-After` or at their concurrency limit are avoided while others
//! remain; if none remain the least-bad one is used rather than failing outright.

use http::HeaderMap;
use infermesh_crds::mesh::LoadBalancingPolicy;
use tokio::time::Instant;

use crate::hash::{random_below, stable_hash};
use crate::table::{Endpoint, Service, Variant, next};

/// Endpoints this request already tried (bit i = endpoint i; endpoints past 63 are not tracked).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
    pub fn contains(&self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
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

/// First eligible endpoint at or after `start` (wrapping), other than `skip`.
fn scan(
    eps: &[Endpoint],
    start: usize,
    skip: Option<usize>,
    tried: Tried,
    level: Level,
    now: Instant,
) -> Option<usize> {
    let n = eps.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != skip && eligible(&eps[i], i, tried, level, now))
}

impl Service {
    pub fn pick_endpoint(
        &self,
        variant: &Variant,
        headers: &HeaderMap,
        tried: Tried,
        now: Instant,
    ) -> Option<usize> {
        let eps = &variant.endpoints;
        if eps.is_empty() {
            return None;
        }
        if eps.len() == 1 {
            return Some(0);
        }
        let policy = self.balancer;
        if policy == LoadBalancingPolicy::ConsistentHash
            && let Some(h) = self.hash_on.as_ref().and_then(|h| headers.get(h))
        {
            return LEVELS
                .iter()
                .find_map(|l| ring_pick(variant, stable_hash(h.as_bytes()), tried, *l, now));
        }
        LEVELS.iter().find_map(|&level| match policy {
            LoadBalancingPolicy::RoundRobin => {
                scan(eps, next(&variant.rr) % eps.len(), None, tried, level, now)
            }
            LoadBalancingPolicy::PeakEwma => p2c(eps, tried, level, now, |e| e.state.ewma_cost()),
            // Least request; also ConsistentHash when the request lacks the header.
            _ => p2c(eps, tried, level, now, |e| f64::from(e.state.in_flight())),
        })
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
    let a = scan(eps, random_below(n), None, tried, level, now)?;
    // Start the second draw uniformly among the others, so `a`'s successor is not favoured.
    let start = (a + 1 + random_below(n - 1)) % n;
    let Some(b) = scan(eps, start, Some(a), tried, level, now) else {
        return Some(a);
    };
    if cost(&eps[b]) < cost(&eps[a]) {
        Some(b)
    } else {
        Some(a)
    }
}

/// The first eligible endpoint clockwise from the hash on the ring.
fn ring_pick(v: &Variant, h: u64, tried: Tried, level: Level, now: Instant) -> Option<usize> {
    let ring = &v.ring;
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(p, _)| *p < h);
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1 as usize)
        .find(|&i| i < v.endpoints.len() && eligible(&v.endpoints[i], i, tried, level, now))
}

#[cfg(test)]
mod tests;
