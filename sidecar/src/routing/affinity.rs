//! Prefix affinity: which endpoints likely hold a prompt's prefix in their cache.
//!
//! Many sidecars route for one pool, each seeing the share of traffic kube-proxy gives it, and
//! they share no state. Two sources agree without it:
//! - [`PrefixIndex`], this sidecar's bounded memory of which endpoints it sent which prompt
//!   blocks (a sharded LRU of block hash → the last few endpoints), gives each endpoint the
//!   number of leading blocks it was sent;
//! - [`rendezvous`] ranks the endpoints by a hash of the prompt's leading blocks. Every sidecar
//!   ranks the same way, so the requests of a shared prefix (a system prompt sent by many
//!   users) go to the same endpoint from all of them, before any has an index entry for it; a
//!   hot prefix spills along that same order (the bound is the balancer's).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use crate::hash::mix;

/// Endpoints remembered per block: enough for a hot prefix spread over a few endpoints.
const HOLDERS: usize = 4;
/// Shards of the index, so concurrent requests rarely wait on one lock.
const SHARDS: usize = 16;
/// Blocks remembered by default: 64k blocks of 256 bytes, 16 MiB of prompt text, in about 5 MiB.
pub(crate) const DEFAULT_BLOCKS: usize = 1 << 16;

/// Endpoint keys (`Endpoint::key`), most recent first; 0 is empty.
type Holders = [u64; HOLDERS];

/// Keys are prompt hashes a client can steer, so the map's hasher is seeded per process
/// (foldhash: far cheaper than SipHash on one u64, and still not predictable from outside).
type Shard = LruCache<u64, Holders, foldhash::fast::RandomState>;

pub(crate) struct PrefixIndex {
    shards: Box<[Mutex<Shard>]>,
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("blocks", &self.len())
            .finish()
    }
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new(DEFAULT_BLOCKS)
    }
}

impl PrefixIndex {
    /// An index of at most `blocks` blocks (at least one per shard).
    pub(crate) fn new(blocks: usize) -> Self {
        let per_shard = NonZeroUsize::new(blocks.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(LruCache::with_hasher(
                        per_shard,
                        foldhash::fast::RandomState::default(),
                    ))
                })
                .collect(),
        }
    }

    fn shard(&self, block: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(block % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks held now.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// For each of `keys`, how many leading blocks of `blocks` this sidecar sent it.
    pub(crate) fn lookup(&self, blocks: &[u64], keys: &[u64]) -> Vec<usize> {
        let mut held = vec![0; keys.len()];
        for (depth, b) in blocks.iter().enumerate() {
            let Some(holders) = self.shard(*b).get(b).copied() else {
                break;
            };
            for (j, k) in keys.iter().enumerate() {
                if holders.contains(k) {
                    held[j] = depth + 1;
                }
            }
        }
        held
    }

    /// `blocks` were sent to the endpoint `key`.
    pub(crate) fn record(&self, blocks: &[u64], key: u64) {
        for b in blocks {
            let mut shard = self.shard(*b);
            let holders = shard.get_or_insert_mut(*b, || [0; HOLDERS]);
            let at = holders
                .iter()
                .position(|h| *h == key)
                .unwrap_or(HOLDERS - 1);
            holders.copy_within(0..at, 1);
            holders[0] = key;
        }
    }
}

/// The rendezvous (highest random weight) rank of `key` for the prefix ending in block `block`:
/// the same on every sidecar, and moving only that endpoint's prefixes when it comes or goes.
pub(crate) fn rendezvous(block: u64, key: u64) -> u64 {
    mix(block ^ mix(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_holds_the_blocks_it_was_sent() {
        let index = PrefixIndex::new(1024);
        let (a, b) = (11, 22);
        index.record(&[1, 2, 3, 4], a);
        index.record(&[1, 2, 9], b);
        assert_eq!(index.lookup(&[1, 2, 3, 5], &[a, b, 33]), vec![3, 2, 0]);
        assert_eq!(
            index.lookup(&[7, 1], &[a]),
            vec![0],
            "a chain starts at its first block"
        );
    }

    #[test]
    fn a_block_keeps_its_most_recent_holders() {
        let index = PrefixIndex::new(64);
        for key in 1..=6 {
            index.record(&[42], key);
        }
        index.record(&[42], 4);
        assert_eq!(
            index.lookup(&[42], &[1, 2, 3, 4, 5, 6]),
            vec![0, 0, 1, 1, 1, 1]
        );
    }

    #[test]
    fn the_index_stays_within_its_bound() {
        let index = PrefixIndex::new(1000);
        for i in 0..100_000u64 {
            index.record(&[i * 7919, i * 7919 + 1], i % 5);
        }
        let cap = 1000usize.div_ceil(SHARDS) * SHARDS;
        assert!(index.len() <= cap, "{} blocks held", index.len());
        // The newest are kept.
        let newest = 99_999u64 * 7919;
        assert_eq!(index.lookup(&[newest], &[99_999 % 5]), vec![1]);
    }

    #[test]
    fn rendezvous_spreads_prefixes_and_agrees_everywhere() {
        let keys = [101u64, 202, 303, 404];
        let mut wins = [0u32; 4];
        for block in 0..4000u64 {
            let best = (0..4)
                .max_by_key(|&j| rendezvous(mix(block), keys[j]))
                .unwrap();
            wins[best] += 1;
        }
        assert!(wins.iter().all(|w| (800..1200).contains(w)), "{wins:?}");
    }
}
