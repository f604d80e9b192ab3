//! Exponential backoff with jitter, shared by retries (25 ms → 1 s by default) and outlier ejection
//! (1 s → 60 s).

use std::time::Duration;

use crate::hash::random_unit;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    /// Fraction of each delay that is randomised, 0.0-1.0.
    pub(crate) jitter: f64,
}

impl Backoff {
    /// The delay before try `n + 1` (n = 0 for the first retry): `min(max, base * 2^n)`, of which
    /// the `jitter` fraction is drawn at random, so synchronised clients spread out.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, random_unit())
    }

    /// [`Backoff::delay`] with the random draw given (`u` in `[0, 1)`), for tests.
    pub(crate) fn delay_with(&self, n: u32, u: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Duration::try_from_secs_f64(capped.as_secs_f64() * (1.0 - jitter * u)).unwrap_or(capped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.5,
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff { jitter: 0.0, ..b() };
        let d: Vec<u64> = (0..8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(1000), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let b = b();
        assert_eq!(b.delay_with(2, 0.0), Duration::from_secs(4));
        assert_eq!(
            b.delay_with(2, 0.999_999),
            Duration::from_secs(4).mul_f64(1.0 - 0.5 * 0.999_999)
        );
        for n in 0..10 {
            let d = b.delay(n);
            let full = Backoff { jitter: 0.0, ..b }.delay(n);
            assert!(d <= full && d >= full / 2, "{d:?} vs {full:?}");
        }
    }
}

#[cfg(test)]
mod edge {
    use super::*;

    #[test]
    fn odd_inputs_never_panic() {
        let b = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter: f64::NAN,
        };
        assert_eq!(b.delay_with(40, f64::INFINITY), Duration::MAX);
        let z = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
            jitter: 2.0,
        };
        assert_eq!(z.delay(3), Duration::ZERO);
    }
}
