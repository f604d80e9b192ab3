//! Per-endpoint concurrency limit with a bounded wait queue: beyond the limit a request waits up to
//! the queue timeout for a slot; when the queue is full or the wait times out it is shed (503 +
//! `Retry-After`) instead of piling up memory and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) max_in_flight: u32,
    pub(crate) max_queue: u32,
    pub(crate) queue_timeout: Duration,
    slots: Arc<Semaphore>,
    queued: AtomicU32,
}

/// The request was shed; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shed {
    pub(crate) retry_after: Duration,
}

impl Limiter {
    pub(crate) fn new(max_in_flight: u32, max_queue: u32, queue_timeout: Duration) -> Self {
        Self {
            max_in_flight,
            max_queue,
            queue_timeout,
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            queued: AtomicU32::new(0),
        }
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Relaxed)
    }

    /// Whether a slot is free right now (used to prefer endpoints that will not queue).
    pub(crate) fn has_capacity(&self) -> bool {
        self.slots.available_permits() > 0
    }

    /// Takes a slot, waiting in the queue if allowed.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let shed = Shed {
            retry_after: self.queue_timeout.max(Duration::from_secs(1)),
        };
        if self.queued.fetch_add(1, Relaxed) >= self.max_queue {
            self.queued.fetch_sub(1, Relaxed);
            return Err(shed);
        }
        let _leave = Dequeue(&self.queued);
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(shed),
        }
    }
}

/// Leaves the queue however the wait ends (permit, timeout, or the request being dropped).
struct Dequeue<'a>(&'a AtomicU32);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queues_then_sheds() {
        let l = Arc::new(Limiter::new(2, 1, Duration::from_millis(100)));
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert!(!l.has_capacity());
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(l.queued(), 1);
        // Queue full: shed at once.
        assert!(l.acquire().await.is_err());
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(l.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wait_times_out() {
        let l = Limiter::new(1, 5, Duration::from_millis(100));
        let _a = l.acquire().await.unwrap();
        let t = tokio::time::Instant::now();
        let e = l.acquire().await.unwrap_err();
        assert_eq!(t.elapsed(), Duration::from_millis(100));
        assert_eq!(e.retry_after, Duration::from_secs(1));
        assert_eq!(l.queued(), 0);
    }
}
