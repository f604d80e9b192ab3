//! Retry budget: retries may add at most `ratio` × requests + `min_per_second` × window over a
//! sliding 10 s window (linkerd2-proxy's default: 20 % + 10/s), so a sick backend never receives a
//! retry storm.

use std::sync::Mutex;

use tokio::time::Instant;

const SLOTS: usize = 10;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    pub(crate) ratio: f64,
    pub(crate) min_per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Whole seconds since `start` of the newest bucket.
    head: u64,
    deposits: [u32; SLOTS],
    withdrawals: [u32; SLOTS],
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        Self {
            ratio,
            min_per_second,
            state: Mutex::new(Window {
                start: now,
                head: 0,
                deposits: [0; SLOTS],
                withdrawals: [0; SLOTS],
            }),
        }
    }

    /// Counts one original request.
    pub(crate) fn deposit(&self, now: Instant) {
        let mut w = self.lock();
        let i = w.advance(now);
        w.deposits[i] = w.deposits[i].saturating_add(1);
    }

    /// Takes one retry from the budget; false when the budget is exhausted.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let mut w = self.lock();
        let i = w.advance(now);
        let deposits: u64 = w.deposits.iter().map(|d| u64::from(*d)).sum();
        let withdrawals: u64 = w.withdrawals.iter().map(|d| u64::from(*d)).sum();
        let allowed = self.ratio * deposits as f64 + f64::from(self.min_per_second) * SLOTS as f64;
        if (withdrawals + 1) as f64 <= allowed {
            w.withdrawals[i] = w.withdrawals[i].saturating_add(1);
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Never held across an await; a poisoned lock only means a panic elsewhere mid-update of
        // plain counters, which are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Window {
    /// Moves the window to `now`, clearing buckets that fell out; returns the current bucket.
    fn advance(&mut self, now: Instant) -> usize {
        let sec = now.saturating_duration_since(self.start).as_secs();
        if sec > self.head {
            let gap = (sec - self.head).min(SLOTS as u64);
            for k in 1..=gap {
                let i = ((self.head + k) % SLOTS as u64) as usize;
                self.deposits[i] = 0;
                self.withdrawals[i] = 0;
            }
            self.head = sec;
        }
        (self.head % SLOTS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ratio_bounds_retries_without_reserve() {
        let now = Instant::now();
        let b = RetryBudget::new(0.2, 0, now);
        assert!(!b.try_withdraw(now), "nothing deposited yet");
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_allows_min_per_second_over_the_window() {
        let now = Instant::now();
        let b = RetryBudget::new(0.2, 10, now);
        let granted = (0..500).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 100, "10/s over a 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let b = RetryBudget::new(0.5, 0, Instant::now());
        for _ in 0..10 {
            b.deposit(Instant::now());
        }
        assert_eq!(
            (0..10).filter(|_| b.try_withdraw(Instant::now())).count(),
            5
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(Instant::now()), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!b.try_withdraw(Instant::now()), "deposits expired too");
        b.deposit(Instant::now());
        b.deposit(Instant::now());
        assert!(
            b.try_withdraw(Instant::now()),
            "earlier withdrawals expired"
        );
        assert!(!b.try_withdraw(Instant::now()));
    }
}
