//! Choosing an endpoint of the chosen variant ([`Balancer`]): P2C least-request (default),
//! PeakEWMA (P2C over latency × load), round robin, consistent hash on a header, or
//! InferenceAware (load reports, KV cache and prefix affinity: `score`, `affinity`). Endpoints already tried by this
//! request, ejected, held by `Retry-After` or at their concurrency limit are avoided while others
//! remain; if none remain the least-bad one is used rather than failing outright.
//!
//! Fairness: an endpoint that is passed over (ejected, held, tried) leaves its share to all the
//! endpoints that qualify, drawn uniformly ([`uniform`]), never to its successor in the list; and
//! a retry takes no turn of the round-robin rotation, so first tries keep cycling over all.

use std::sync::atomic::AtomicUsize;

use http::HeaderMap;
use http::header::HeaderName;
use infermesh_crds::mesh::{InferenceScoring, LoadBalancingPolicy};
use tokio::time::Instant;

use super::affinity::{PrefixIndex, rendezvous};
use super::next;
use super::score::{Score, Scoring};
use crate::endpoint::Endpoint;
use crate::endpoint::load::LoadView;
use crate::hash::{random_below, stable_hash};

/// Consistent hashing with bounded loads (Mirrokni et al.): an endpoint with more than this
/// many times the candidates' mean requests (plus one) loses its prefix affinity, so a hot
/// prefix spills to the next endpoint in its order instead of queueing on one.
const LOAD_BOUND: f64 = 1.25;

/// The leading blocks (about 1 KiB of prompt) that rank endpoints for a prompt: short enough
/// that the requests of one system prompt share them, long enough to tell system prompts
/// apart.
const KEY_BLOCKS: usize = 4;

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
    scoring: Scoring,
}

/// What prefix affinity needs for one request: its prompt's chained block hashes
/// (`routing::prompt`) and the sidecar's index of who was sent what.
#[derive(Clone, Copy)]
pub(crate) struct Affinity<'a> {
    pub(crate) blocks: &'a [u64],
    pub(crate) index: &'a PrefixIndex,
    /// The key of the request's model, for LoRA-adapter affinity.
    pub(crate) model: Option<u64>,
}

/// The endpoint picked, and for InferenceAware the score that picked it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Choice {
    // u32: a request's future carries its choice while it waits.
    pub(crate) index: u32,
    pub(crate) score: Option<Score>,
}

impl From<usize> for Choice {
    fn from(index: usize) -> Self {
        Self {
            index: index as u32,
            score: None,
        }
    }
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
        scoring: InferenceScoring,
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
            scoring: scoring.into(),
        }
    }

    /// Whether picks use load reports and prompts (and so want the request's prompt).
    pub(crate) fn is_inference_aware(&self) -> bool {
        self.policy == LoadBalancingPolicy::InferenceAware
    }

    /// Whether the request's prompt (or its model) would be used: InferenceAware with a
    /// prefix or LoRA weight.
    pub(crate) fn wants_prompt(&self) -> bool {
        self.is_inference_aware() && (self.scoring.prefix > 0.0 || self.scoring.lora > 0.0)
    }

    /// The endpoint of `eps` (the variant's, as given to [`Balancer::new`]) for this try.
    pub(crate) fn pick(
        &self,
        eps: &[Endpoint],
        headers: &HeaderMap,
        tried: Tried,
        now: Instant,
        affinity: Option<Affinity<'_>>,
    ) -> Option<Choice> {
        if eps.is_empty() {
            return None;
        }
        if self.is_inference_aware() {
            return self.score_pick(eps, tried, now, affinity);
        }
        self.plain_pick(eps, headers, tried, now).map(Choice::from)
    }

    /// InferenceAware: the scorer's choice among the endpoints eligible at the first level
    /// that has any.
    fn score_pick(
        &self,
        eps: &[Endpoint],
        tried: Tried,
        now: Instant,
        affinity: Option<Affinity<'_>>,
    ) -> Option<Choice> {
        let level = LEVELS
            .into_iter()
            .find(|&l| (0..eps.len()).any(|i| eligible(&eps[i], i, tried, l, now)))?;
        let cands: Vec<usize> = (0..eps.len())
            .filter(|&i| eligible(&eps[i], i, tried, level, now))
            .collect();
        let loads: Vec<LoadView> = cands
            .iter()
            .map(|&i| eps[i].state.load.view(now, eps[i].state.in_flight()))
            .collect();
        let model = affinity.and_then(|a| a.model);
        let affinity = affinity.filter(|a| self.scoring.prefix > 0.0 && !a.blocks.is_empty());
        let prefix = match affinity {
            Some(a) => prefix_scores(a, &cands, eps, &loads),
            None => vec![0.0; cands.len()],
        };
        let (j, score) = self.scoring.choose(&loads, &prefix, model)?;
        let index = cands[j];
        // Remembered at the choice, not the response: the next request with this prefix,
        // often already on its way, follows it.
        if let Some(a) = affinity {
            a.index.record(a.blocks, eps[index].key);
        }
        Some(Choice {
            index: index as u32,
            score: Some(score),
        })
    }

    /// Every policy but InferenceAware.
    fn plain_pick(
        &self,
        eps: &[Endpoint],
        headers: &HeaderMap,
        tried: Tried,
        now: Instant,
    ) -> Option<usize> {
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

/// Each candidate's prefix score, 0..=1: the share of the prompt's blocks this sidecar sent
/// it, or for the candidate ranked first by [`rendezvous`] on the prompt's leading blocks (when
/// the prompt is longer than them), at least those. Every sidecar ranks a prompt's leading blocks the same way, so the first
/// request of a prefix goes to the same endpoint from all of them, and later ones follow the
/// index. A candidate over the load bound gets 0 and the next in the order takes the rank, so a
/// hot prefix spills the same way everywhere.
fn prefix_scores(
    a: Affinity<'_>,
    cands: &[usize],
    eps: &[Endpoint],
    loads: &[LoadView],
) -> Vec<f64> {
    let keys: Vec<u64> = cands.iter().map(|&i| eps[i].key).collect();
    let held = a.index.lookup(a.blocks, &keys);
    let mean = loads.iter().map(|l| l.requests).sum::<f64>() / loads.len().max(1) as f64;
    let bound = LOAD_BOUND * mean + 1.0;
    let within = |j: usize| loads[j].requests <= bound;
    // Only a prompt longer than its leading blocks can share them with others; a short one
    // would be sent by its hash alone, whatever the load, with no cache to gain there.
    let depth = if a.blocks.len() > KEY_BLOCKS {
        KEY_BLOCKS
    } else {
        0
    };
    let first = depth.checked_sub(1).and_then(|d| {
        (0..cands.len())
            .filter(|&j| within(j))
            .max_by_key(|&j| rendezvous(a.blocks[d], keys[j]))
    });
    let n = a.blocks.len() as f64;
    (0..cands.len())
        .map(|j| {
            if !within(j) {
                return 0.0;
            }
            let ranked = if Some(j) == first { depth } else { 0 };
            held[j].max(ranked) as f64 / n
        })
        .collect()
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
