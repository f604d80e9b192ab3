//! What the admin `/stats` answers: one variant's requests, failures, output tokens and its time
//! to first token and time per output token over the last minutes, kept in 10-second slots.
//! `kubectl infermesh stat` reads it from every pod through the API server and shows rates and
//! percentiles over a window at once, with no Prometheus and no second read a window later (what
//! cumulative counters would need).
//!
//! A request is counted by the sidecar its client called (the first to route it), so summing
//! every pod's window counts each request once. Memory is fixed: 31 slots of a few hundred bytes
//! per variant.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{TPOT_BOUNDS, TTFT_BOUNDS};

/// The length of a slot: the window's resolution.
pub(crate) const SLOT: Duration = Duration::from_secs(10);
/// Slots kept: 30 whole ones and the current one, so windows up to [`MAX_WINDOW`].
const SLOTS: usize = 31;
/// The longest window `/stats` answers for.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(300);

/// Bucket counts (not cumulative): `counts[i]` for values at most `bounds[i]` and above the
/// bound before; the last for values above every bound.
type Buckets<const N: usize> = [u32; N];

#[derive(Clone, Copy)]
struct Slot {
    /// Which slot since the window's start this one holds; a slot whose index is older than
    /// the current one's is stale and is reset before use.
    index: u64,
    requests: u64,
    failures: u64,
    output_tokens: u64,
    ttft: Buckets<{ TTFT_BOUNDS.len() + 1 }>,
    tpot: Buckets<{ TPOT_BOUNDS.len() + 1 }>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        index: 0,
        requests: 0,
        failures: 0,
        output_tokens: 0,
        ttft: [0; TTFT_BOUNDS.len() + 1],
        tpot: [0; TPOT_BOUNDS.len() + 1],
    };
}

/// One variant's recent requests, as this sidecar routed them.
pub(crate) struct Window {
    start: Instant,
    slots: Mutex<[Slot; SLOTS]>,
    in_flight: AtomicI64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window").finish_non_exhaustive()
    }
}

/// A window's sums, as `/stats` reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    /// The time the sums cover: the window asked for, or less while the variant is younger.
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    /// Requests answered with a 5xx, or cut after their head.
    pub(crate) failures: u64,
    /// Requests routed and not ended, now.
    pub(crate) in_flight: i64,
    pub(crate) output_tokens: u64,
    pub(crate) ttft: Histogram,
    pub(crate) tpot: Histogram,
}

/// Per-bucket counts over `bounds` (the last count is above every bound).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Histogram {
    pub(crate) bounds: &'static [f64],
    pub(crate) counts: Vec<u64>,
}

fn bucket(bounds: &[f64], value: f64) -> usize {
    bounds
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(bounds.len())
}

impl Window {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            slots: Mutex::new([Slot::EMPTY; SLOTS]),
            in_flight: AtomicI64::new(0),
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_millis() / SLOT.as_millis()) as u64
    }

    /// Runs `f` on the slot of `now`, reset first if it held an older slot's counts.
    fn at(&self, now: Instant, f: impl FnOnce(&mut Slot)) {
        let i = self.index(now);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[(i % SLOTS as u64) as usize];
        if slot.index != i {
            *slot = Slot {
                index: i,
                ..Slot::EMPTY
            };
        }
        f(slot);
    }

    /// A request was routed.
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A routed request ended: answered with `status`, or `None` when its client left before
    /// any answer (then it is not counted, as in `infermesh_requests_total`).
    pub(crate) fn ended(&self, now: Instant, status: Option<http::StatusCode>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(status) = status else { return };
        self.at(now, |s| {
            s.requests += 1;
            s.failures += u64::from(status.is_server_error());
        });
    }

    /// A metered response's timings and output tokens.
    pub(crate) fn tokens(
        &self,
        now: Instant,
        ttft: Option<Duration>,
        tpot: Option<Duration>,
        output: Option<u64>,
    ) {
        self.at(now, |s| {
            if let Some(d) = ttft {
                s.ttft[bucket(&TTFT_BOUNDS, d.as_secs_f64())] += 1;
            }
            if let Some(d) = tpot {
                s.tpot[bucket(&TPOT_BOUNDS, d.as_secs_f64())] += 1;
            }
            s.output_tokens += output.unwrap_or(0);
        });
    }

    /// The sums over the last `since` (at most [`MAX_WINDOW`]) at `now`, to the slot: the slot
    /// of `now` and as many before it as `since` spans.
    pub(crate) fn summary(&self, now: Instant, since: Duration) -> Summary {
        let since = since.clamp(SLOT, MAX_WINDOW);
        let current = self.index(now);
        let span = since.as_millis().div_ceil(SLOT.as_millis()) as u64;
        let oldest = (current + 1).saturating_sub(span);
        let mut sum = Summary {
            seconds: 0.0,
            requests: 0,
            failures: 0,
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0),
            output_tokens: 0,
            ttft: Histogram {
                bounds: &TTFT_BOUNDS,
                counts: vec![0; TTFT_BOUNDS.len() + 1],
            },
            tpot: Histogram {
                bounds: &TPOT_BOUNDS,
                counts: vec![0; TPOT_BOUNDS.len() + 1],
            },
        };
        let slots = *self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots
            .iter()
            .filter(|s| (oldest..=current).contains(&s.index))
        {
            sum.requests += s.requests;
            sum.failures += s.failures;
            sum.output_tokens += s.output_tokens;
            for (to, from) in sum.ttft.counts.iter_mut().zip(s.ttft) {
                *to += u64::from(from);
            }
            for (to, from) in sum.tpot.counts.iter_mut().zip(s.tpot) {
                *to += u64::from(from);
            }
        }
        let begins = self.start + SLOT * u32::try_from(oldest).unwrap_or(u32::MAX);
        sum.seconds = now.saturating_duration_since(begins).as_secs_f64();
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const OK: Option<StatusCode> = Some(StatusCode::OK);

    #[test]
    fn a_window_sums_the_slots_it_spans_and_forgets_older_ones() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in [1, 12, 25, 25] {
            w.started();
            w.ended(at(s), OK);
        }
        w.started();
        w.ended(at(25), Some(StatusCode::BAD_GATEWAY));
        let last_20s = w.summary(at(29), Duration::from_secs(20));
        assert_eq!((last_20s.requests, last_20s.failures), (4, 1));
        assert_eq!(last_20s.seconds, 19.0, "from the start of slot 1 to 29 s");
        let all = w.summary(at(29), Duration::from_secs(60));
        assert_eq!(all.requests, 5);
        assert_eq!(all.seconds, 29.0, "a window longer than the variant's life");
        // Five minutes on, every slot is stale, even the ones reused by index modulo 31.
        let later = w.summary(at(29 + 310), Duration::from_secs(300));
        assert_eq!(later.requests, 0);
        w.started();
        w.ended(at(29 + 310), OK);
        assert_eq!(w.summary(at(29 + 310), MAX_WINDOW).requests, 1);
    }

    #[test]
    fn in_flight_follows_starts_and_ends_and_a_client_that_left_is_not_a_request() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        w.started();
        w.started();
        assert_eq!(w.summary(t0, SLOT).in_flight, 2);
        w.ended(t0, None);
        let s = w.summary(t0, SLOT);
        assert_eq!((s.in_flight, s.requests), (1, 0));
    }

    #[test]
    fn timings_fall_in_the_bucket_whose_bound_holds_them() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        let ms = Duration::from_millis;
        w.tokens(t0, Some(ms(300)), Some(ms(40)), Some(7));
        w.tokens(t0, Some(ms(250)), None, Some(3));
        w.tokens(t0, Some(Duration::from_secs(60)), None, None);
        let s = w.summary(t0, SLOT);
        assert_eq!(s.output_tokens, 10);
        let at = |h: &Histogram, bound: f64| {
            h.counts[h.bounds.iter().position(|b| *b == bound).unwrap()]
        };
        assert_eq!(at(&s.ttft, 0.5), 1, "300 ms: above 0.25, within 0.5");
        assert_eq!(at(&s.ttft, 0.25), 1, "250 ms: exactly on the bound");
        assert_eq!(s.ttft.counts.last(), Some(&1), "60 s: above every bound");
        assert_eq!(at(&s.tpot, 0.05), 1);
        assert_eq!(s.tpot.counts.iter().sum::<u64>(), 1);
    }
}
