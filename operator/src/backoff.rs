//! Per-object exponential backoff for failed reconciles, kept in the controller context: each
//! consecutive failure of the same object doubles its delay (1 s, 2 s, 4 s, ... up to 5 min), and a
//! success resets it, so a broken object never hot-loops and healthy ones are not slowed down.

use std::{collections::HashMap, time::Duration};

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(300);

/// Consecutive failure counts by object key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: HashMap<String, u32>,
}

impl Backoff {
    /// Counts a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&mut self, key: &str) -> Duration {
        let n = self.failures.entry(key.to_string()).or_insert(0);
        let delay = BASE.saturating_mul(1u32 << (*n).min(16)).min(MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// `key` reconciled successfully: its next failure starts from [`BASE`] again.
    pub fn succeeded(&mut self, key: &str) {
        self.failures.remove(key);
    }

    /// Consecutive failures of `key` so far.
    #[cfg(test)]
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.failed("ns/a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.failures("ns/a"), 12);
    }

    #[test]
    fn objects_back_off_independently_and_success_resets() {
        let mut b = Backoff::default();
        b.failed("ns/a");
        b.failed("ns/a");
        assert_eq!(b.failed("ns/b"), BASE);
        b.succeeded("ns/a");
        assert_eq!(b.failed("ns/a"), BASE);
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b.failed("ns/a") <= MAX);
        }
    }
}
