//! Stable hashing (the same input maps to the same value on every sidecar, in every process) and a
//! cheap per-thread random source for load balancing and jitter.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use infermesh_crds::mesh::{FNV1A_OFFSET, fnv1a, fnv1a_extend};

/// FNV-1a 64 (the mesh contract's hash, `infermesh_crds::mesh`) followed by a 64-bit finaliser:
/// deterministic across processes, so sticky cohorts and consistent hashing agree between sidecars.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a(bytes))
}

/// FNV-1a as a [`Hasher`] for maps looked up on every request: on short keys far cheaper than
/// SipHash. Only for keys that come from the config (a client cannot choose colliding entries).
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV1A_OFFSET)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_extend(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// A `HashMap` keyed by config values, hashed with [`Fnv`].
pub(crate) type ConfigMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// splitmix64 finaliser: spreads FNV's weak low bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

/// A fast non-cryptographic random u64 (xorshift64*), seeded per thread.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Uniform in `0..n` (`n > 0`); the modulo bias is negligible for the small `n` used here.
pub(crate) fn random_below(n: usize) -> usize {
    (random_u64() % n.max(1) as u64) as usize
}

/// Uniform in `[0, 1)`.
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_deterministic_and_spreads() {
        assert_eq!(stable_hash(b"user-1"), stable_hash(b"user-1"));
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
        let odd = (0..1000)
            .filter(|i| stable_hash(format!("u{i}").as_bytes()) % 2 == 1)
            .count();
        assert!((400..600).contains(&odd), "{odd}");
    }

    /// Cohorts and ring points are where these values put them: a change here moves users
    /// between variants on every sidecar at once.
    #[test]
    fn stable_hash_values_do_not_change() {
        assert_eq!(stable_hash(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(b"user-1"), 0xc499_b5f8_a721_df58);
        let mut h = Fnv::default();
        h.write(b"user-");
        h.write(b"1");
        assert_eq!(h.finish(), stable_hash(b"user-1"));
    }

    #[test]
    fn random_values_stay_in_range() {
        for _ in 0..1000 {
            assert!(random_below(7) < 7);
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
