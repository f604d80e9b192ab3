//! The memory kept for retries, across all requests: request bodies read so a retry can send them
//! again are counted against one cap (`--replay-buffer-bytes`). A body that does not fit streams
//! once, without retries, and is counted; so a burst of large uploads cannot grow the sidecar
//! without bound, whatever each request's own 1 MiB bound allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held for replay now, and the most there may be.
#[derive(Debug)]
pub(crate) struct ReplayPool {
    used: AtomicUsize,
    cap: usize,
}

impl ReplayPool {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// An empty hold on this pool, grown as a body is read.
    pub(crate) fn hold(self: &Arc<Self>) -> ReplayHold {
        ReplayHold {
            pool: self.clone(),
            bytes: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes of one request's body held for replay; given back when dropped.
#[derive(Debug)]
pub(crate) struct ReplayHold {
    pool: Arc<ReplayPool>,
    bytes: usize,
}

impl ReplayHold {
    /// Bytes this hold has taken.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `n` more bytes from the pool, or none when that would pass its cap.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let cap = self.pool.cap;
        let taken = self
            .pool
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= cap)
            })
            .is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }
}

impl Drop for ReplayHold {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_stay_within_the_cap_and_give_back_on_drop() {
        let pool = ReplayPool::new(100);
        let mut a = pool.hold();
        assert!(a.grow(60));
        let mut b = pool.hold();
        assert!(!b.grow(50), "60 + 50 would pass 100");
        assert!(b.grow(40));
        assert_eq!(pool.used(), 100);
        drop(a);
        assert_eq!(pool.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
