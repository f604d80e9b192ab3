//! Block hashes for automatic prefix caching, as vLLM computes them: the hash of a full block
//! chains the previous block's hash, the LoRA adapter (the same tokens under another adapter
//! have other KV values) and the block's token ids. Equal hashes mean equal whole prefixes, so a
//! lookup walks a new request's hashes from the start and stops at the first miss.

use crate::tokenizer::mix;

/// Hash of the block after `parent` (None for the first block) holding `tokens`.
pub fn block_hash(parent: Option<u64>, lora: Option<usize>, tokens: &[u64]) -> u64 {
    let mut h = mix(parent.unwrap_or(0x0b1c_0c4e));
    h = mix(h ^ lora.map_or(u64::MAX, |l| l as u64));
    for t in tokens {
        h = mix(h ^ t);
    }
    h
}

/// Extends `hashes` to cover every full block of `tokens` (blocks of `block_size`).
pub fn extend_hashes(
    hashes: &mut Vec<u64>,
    tokens: &[u64],
    block_size: usize,
    lora: Option<usize>,
) {
    let full = tokens.len() / block_size.max(1);
    while hashes.len() < full {
        let k = hashes.len();
        let h = block_hash(
            hashes.last().copied(),
            lora,
            &tokens[k * block_size..(k + 1) * block_size],
        );
        hashes.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_over_full_blocks_only() {
        let tokens: Vec<u64> = (0..10).collect();
        let mut h = Vec::new();
        extend_hashes(&mut h, &tokens, 4, None);
        assert_eq!(h.len(), 2, "the partial third block has no hash");
        // Same second block after another first block: another hash.
        let mut other: Vec<u64> = tokens.clone();
        other[0] = 99;
        let mut h2 = Vec::new();
        extend_hashes(&mut h2, &other, 4, None);
        assert_ne!(h[0], h2[0]);
        assert_ne!(h[1], h2[1]);
        // Same tokens under a LoRA adapter: other hashes.
        let mut h3 = Vec::new();
        extend_hashes(&mut h3, &tokens, 4, Some(0));
        assert_ne!(h[0], h3[0]);
        // Growing is the same as hashing at once.
        let mut grown = Vec::new();
        extend_hashes(&mut grown, &tokens[..5], 4, None);
        extend_hashes(&mut grown, &tokens, 4, None);
        assert_eq!(grown, h);
    }
}
