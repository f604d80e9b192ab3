//! Per-object exponential backoff for failed reconciles, kept in the controller context: each
//! consecutive failure of the same object doubles its delay (1 s, 2 s, 4 s, ... up to 5 min), and a
//! success resets it, so a broken object never hot-loops and healthy ones are not slowed down.
//!
//! Each delay is then spread by ±20 % at random (never past the 5 min cap): when many objects fail
//! at once (an API server restart, a webhook outage) they would otherwise all retry in the same
//! instant, again and again, and hit the recovering server in lockstep.

use std::{collections::HashMap, time::Duration};

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(300);
/// How far a delay may move from its nominal value, as a fraction of it.
pub const JITTER: f64 = 0.2;

/// Consecutive failure counts by object key (`namespace/name`).
#[derive(Debug)]
pub struct Backoff {
    failures: HashMap<String, u32>,
    /// Uniform draws in `[0, 1)` that place each delay in its jitter window.
    draw: fn() -> f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::with_draw(rand::random::<f64>)
    }
}

impl Backoff {
    /// A backoff whose jitter comes from `draw` (`|| 0.5` gives the nominal delays exactly).
    pub fn with_draw(draw: fn() -> f64) -> Self {
        Self {
            failures: HashMap::new(),
            draw,
        }
    }

    /// Counts a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&mut self, key: &str) -> Duration {
        let n = self.failures.entry(key.to_string()).or_insert(0);
        let delay = jittered(nominal(*n), (self.draw)());
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

/// The delay after `failures` earlier consecutive failures, before jitter.
fn nominal(failures: u32) -> Duration {
    BASE.saturating_mul(1u32 << failures.min(16)).min(MAX)
}

/// `delay` moved by up to ±[`JITTER`] of itself, placed by `unit` in `[0, 1)` (0.5 leaves it as
/// it is), and never past [`MAX`].
fn jittered(delay: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    // Whole nanoseconds in i128: exact for every delay up to MAX, so the midpoint is the nominal.
    let nanos = delay.as_nanos() as i128;
    let offset = (nanos as f64 * JITTER * (2.0 * unit - 1.0)).round() as i128;
    let moved = u64::try_from((nanos + offset).max(0)).unwrap_or(u64::MAX);
    Duration::from_nanos(moved).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without spread, so the doubling itself can be read off exactly.
    fn exact() -> Backoff {
        Backoff::with_draw(|| 0.5)
    }

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap() {
        let mut b = exact();
        let delays: Vec<u64> = (0..12).map(|_| b.failed("ns/a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.failures("ns/a"), 12);
    }

    #[test]
    fn objects_back_off_independently_and_success_resets() {
        let mut b = exact();
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

    #[test]
    fn jitter_stays_within_twenty_percent_and_spreads() {
        let nominal = Duration::from_secs(8);
        let (low, high) = (nominal.mul_f64(1.0 - JITTER), nominal.mul_f64(1.0 + JITTER));
        let draws: Vec<Duration> = (0..1000)
            .map(|_| jittered(nominal, rand::random::<f64>()))
            .collect();
        assert!(draws.iter().all(|d| (low..=high).contains(d)), "{draws:?}");
        assert!(draws.iter().any(|d| *d < nominal) && draws.iter().any(|d| *d > nominal));
        let mut distinct = draws.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 900,
            "only {} distinct delays",
            distinct.len()
        );
    }

    #[test]
    fn jitter_window_edges_and_the_cap() {
        let d = Duration::from_secs(10);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(8));
        assert_eq!(jittered(d, 0.5), d);
        assert_eq!(jittered(d, 1.0), Duration::from_secs(12));
        assert_eq!(jittered(d, f64::NAN), d);
        assert_eq!(jittered(MAX, 1.0), MAX, "never past the cap");
        assert_eq!(jittered(MAX, 0.0), MAX.mul_f64(1.0 - JITTER));
    }

    #[test]
    fn failures_of_many_objects_do_not_retry_in_lockstep() {
        let mut b = Backoff::default();
        for n in 0..1000 {
            b.failed(&format!("ns/{n}"));
        }
        let second: Vec<Duration> = (0..1000).map(|n| b.failed(&format!("ns/{n}"))).collect();
        let nominal = Duration::from_secs(2);
        assert!(
            second
                .iter()
                .all(|d| (nominal.mul_f64(0.8)..=nominal.mul_f64(1.2)).contains(d))
        );
        assert!(
            second.iter().any(|d| *d != second[0]),
            "all equal: {:?}",
            second[0]
        );
    }
}
