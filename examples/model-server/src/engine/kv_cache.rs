//! The KV cache's block pool, as vLLM V1's `BlockPool`: a fixed number of blocks, each with a
//! reference count (sequences using it) and, once full, the hash of its content. A block nobody
//! references is free but keeps its content: it stays findable by hash (a prefix-cache hit
//! revives it) until it is reused for something else. Free blocks are reused least recently
//! freed first (LRU eviction), and a finished sequence frees its blocks last-to-first, so the
//! tail of a prompt is evicted before its more widely shared head.

use std::collections::{BTreeMap, HashMap};

/// Index of a block in the pool.
pub type BlockId = usize;

#[derive(Debug, Clone, Default)]
struct Block {
    ref_cnt: u32,
    hash: Option<u64>,
    /// Position in the free queue, when free.
    free_at: Option<u64>,
}

/// The block pool and its prefix-cache index (bounded: at most one entry per block).
#[derive(Debug)]
pub struct KvCache {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks by the order they were freed: the first is evicted first.
    free: BTreeMap<u64, BlockId>,
    next_free_at: u64,
    /// Hash of a full block's content -> the block holding it.
    index: HashMap<u64, BlockId>,
}

impl KvCache {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        let mut cache = Self {
            block_size: block_size.max(1),
            blocks: vec![Block::default(); num_blocks],
            free: BTreeMap::new(),
            next_free_at: 0,
            index: HashMap::new(),
        };
        for id in 0..num_blocks {
            cache.push_free(id);
        }
        cache
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks in use by some sequence, 0..1 (vLLM's `kv_cache_usage_perc`: cached
    /// but unreferenced blocks count as free).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.blocks.len() as f64
    }

    fn push_free(&mut self, id: BlockId) {
        let at = self.next_free_at;
        self.next_free_at += 1;
        self.free.insert(at, id);
        self.blocks[id].free_at = Some(at);
    }

    /// Blocks holding the longest cached prefix of `hashes` (one per leading hit).
    pub fn lookup(&self, hashes: &[u64]) -> Vec<BlockId> {
        hashes
            .iter()
            .map_while(|h| self.index.get(h).copied())
            .collect()
    }

    /// Takes a reference on a cached block found by [`lookup`](Self::lookup).
    pub fn acquire(&mut self, id: BlockId) {
        let Some(block) = self.blocks.get_mut(id) else {
            return;
        };
        block.ref_cnt += 1;
        if let Some(at) = block.free_at.take() {
            self.free.remove(&at);
        }
    }

    /// Grows `blocks` to hold `num_tokens` tokens; false (and nothing taken) if too few are free.
    pub fn allocate(&mut self, blocks: &mut Vec<BlockId>, num_tokens: usize) -> bool {
        let needed = num_tokens.div_ceil(self.block_size);
        let more = needed.saturating_sub(blocks.len());
        if more > self.free.len() {
            return false;
        }
        for _ in 0..more {
            let Some((_, id)) = self.free.pop_first() else {
                return false;
            };
            let block = &mut self.blocks[id];
            block.free_at = None;
            block.ref_cnt = 1;
            // Reusing a cached block evicts its content from the prefix cache.
            if let Some(h) = block.hash.take()
                && self.index.get(&h) == Some(&id)
            {
                self.index.remove(&h);
            }
            blocks.push(id);
        }
        true
    }

    /// Drops a sequence's references, last block first; unreferenced blocks become free but keep
    /// their cached content.
    pub fn release(&mut self, blocks: Vec<BlockId>) {
        for id in blocks.into_iter().rev() {
            let Some(block) = self.blocks.get_mut(id) else {
                continue;
            };
            block.ref_cnt = block.ref_cnt.saturating_sub(1);
            if block.ref_cnt == 0 && block.free_at.is_none() {
                self.push_free(id);
            }
        }
    }

    /// Records that full block `id` holds the content hashed `hash`. If another block already
    /// holds it (two equal prompts computed at once), that one stays the cached copy.
    pub fn register(&mut self, id: BlockId, hash: u64) {
        if id >= self.blocks.len() || self.blocks[id].hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.index.entry(hash) {
            e.insert(id);
            self.blocks[id].hash = Some(hash);
        }
    }

    /// Number of blocks findable by hash (the prefix-cache index size).
    pub fn num_cached(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_and_refuses_when_full() {
        let mut kv = KvCache::new(4, 16);
        let mut a = Vec::new();
        assert!(kv.allocate(&mut a, 33)); // 3 blocks
        assert_eq!(a.len(), 3);
        assert_eq!(kv.usage(), 0.75);
        let mut b = Vec::new();
        assert!(!kv.allocate(&mut b, 17), "needs 2, 1 free");
        assert!(b.is_empty());
        assert!(kv.allocate(&mut a, 48), "still 3 blocks");
        assert_eq!(a.len(), 3);
        kv.release(a);
        assert_eq!(kv.num_free(), 4);
        assert_eq!(kv.usage(), 0.0);
    }

    #[test]
    fn freed_blocks_stay_cached_until_reused() {
        let mut kv = KvCache::new(3, 4);
        let mut a = Vec::new();
        assert!(kv.allocate(&mut a, 8));
        kv.register(a[0], 10);
        kv.register(a[1], 11);
        let held = a.clone();
        kv.release(a);
        assert_eq!(kv.lookup(&[10, 11, 12]), held);
        // A hit revives the block: it is no longer free.
        kv.acquire(held[0]);
        assert_eq!(kv.num_free(), 2);
        // Reusing free blocks evicts their content, least recently freed first: the untouched
        // third block went free first, then (reverse order) block a[1].
        let mut b = Vec::new();
        assert!(kv.allocate(&mut b, 4));
        assert_eq!(kv.lookup(&[10, 11]), vec![held[0], held[1]]);
        assert!(kv.allocate(&mut b, 8));
        assert_eq!(kv.lookup(&[10, 11]), vec![held[0]], "a[1] evicted");
        assert_eq!(kv.num_cached(), 1);
    }

    #[test]
    fn shared_blocks_are_freed_by_their_last_user() {
        let mut kv = KvCache::new(2, 4);
        let mut a = Vec::new();
        assert!(kv.allocate(&mut a, 4));
        kv.register(a[0], 1);
        kv.acquire(a[0]);
        kv.release(a.clone());
        assert_eq!(kv.num_free(), 1, "still used by the second holder");
        kv.release(a);
        assert_eq!(kv.num_free(), 2);
        // Registering an already cached hash keeps the first copy.
        let mut b = Vec::new();
        assert!(kv.allocate(&mut b, 4));
        kv.register(b[0], 1);
        assert_eq!(kv.num_cached(), 1);
    }
}
