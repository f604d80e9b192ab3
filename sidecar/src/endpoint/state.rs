//! Per-endpoint live state: in-flight requests, the peak-EWMA latency estimate, passive outlier
//! ejection, and `Retry-After` holds. It is shared by `Arc` and carried over config reloads for every
//! endpoint that survives, so a reload never forgets that an endpoint is sick or busy.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use infermesh_crds::mesh::OutlierDetectionConfig;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::load::LoadEstimate;

/// Fraction of each ejection time drawn at random, so endpoints ejected together (one bad node,
/// many sidecars) are not readmitted in lockstep.
pub(crate) const EJECTION_JITTER: f64 = 0.5;

/// Outlier-ejection settings (failure accrual).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub(crate) consecutive_failures: u32,
    /// Ejection time: 1 s doubling to 60 s with jitter by default.
    pub(crate) backoff: Backoff,
}

impl Default for EjectionPolicy {
    /// The mesh contract's defaults (`OutlierDetectionConfig::DEFAULT_*`).
    fn default() -> Self {
        Self::new(
            OutlierDetectionConfig::DEFAULT_CONSECUTIVE_FAILURES,
            Duration::from_millis(OutlierDetectionConfig::DEFAULT_BASE_EJECTION_MS),
            Duration::from_millis(OutlierDetectionConfig::DEFAULT_MAX_EJECTION_MS),
        )
    }
}

impl EjectionPolicy {
    /// Ejection after `consecutive_failures`, for `base` doubling up to `max`, with
    /// [`EJECTION_JITTER`].
    pub(crate) fn new(consecutive_failures: u32, base: Duration, max: Duration) -> Self {
        Self {
            consecutive_failures,
            backoff: Backoff {
                base,
                max,
                jitter: EJECTION_JITTER,
            },
        }
    }

    /// This policy with a service's own settings in place of the ones it sets. The longest
    /// ejection is never below the first.
    pub(crate) fn overridden_by(&self, o: &OutlierDetectionConfig) -> Self {
        let base = o
            .base_ejection_ms
            .map_or(self.backoff.base, Duration::from_millis);
        let max = o
            .max_ejection_ms
            .map_or(self.backoff.max, Duration::from_millis);
        Self {
            consecutive_failures: o.consecutive_failures.unwrap_or(self.consecutive_failures),
            backoff: Backoff {
                base,
                max: max.max(base),
                ..self.backoff
            },
        }
    }
}

/// PeakEWMA settings: the estimate before any sample, and the decay time constant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EwmaPolicy {
    pub(crate) default_rtt: Duration,
    pub(crate) decay: Duration,
}

impl EwmaPolicy {
    /// The estimate of an endpoint that has not answered yet: a typical in-cluster round trip.
    pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
    /// Long enough that one fast response does not erase a slow streak.
    pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);
}

impl Default for EwmaPolicy {
    fn default() -> Self {
        Self {
            default_rtt: Self::DEFAULT_RTT,
            decay: Self::DEFAULT_DECAY,
        }
    }
}

#[derive(Debug)]
pub(crate) struct EndpointState {
    epoch: Instant,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// How many times in a row this endpoint was ejected (drives the ejection backoff).
    ejections: AtomicU32,
    /// Nanoseconds since `epoch` before which the endpoint should not be picked (ejected or held by
    /// `Retry-After`); 0 = available.
    unavailable_until: AtomicU64,
    ewma: Mutex<Ewma>,
    /// The load its sidecar reports (InferenceAware).
    pub(crate) load: LoadEstimate,
}

#[derive(Debug)]
struct Ewma {
    /// Latency estimate, nanoseconds.
    estimate: f64,
    stamp: Instant,
}

impl EndpointState {
    pub(crate) fn new(now: Instant, ewma: EwmaPolicy) -> Self {
        Self {
            epoch: now,
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            unavailable_until: AtomicU64::new(0),
            ewma: Mutex::new(Ewma {
                estimate: ewma.default_rtt.as_nanos() as f64,
                stamp: now,
            }),
            load: LoadEstimate::default(),
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Marks a request as started; the returned guard ends it on drop.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// False while ejected or held by a `Retry-After`.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        let until = self.unavailable_until.load(Relaxed);
        until == 0 || self.nanos(now) >= until
    }

    /// Keeps the endpoint out of rotation until `now + d` (never shortens an existing hold).
    pub(crate) fn hold_for(&self, now: Instant, d: Duration) {
        let until = now
            .checked_add(d)
            .map_or(u64::MAX, |t| self.nanos(t))
            .max(1);
        self.unavailable_until.fetch_max(until, Relaxed);
    }

    /// A try succeeded: the failure streak ends and the ejection backoff resets once readmitted.
    pub(crate) fn record_success(&self, now: Instant) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 && self.is_available(now) {
            self.ejections.store(0, Relaxed);
        }
    }

    /// A try failed; returns the ejection time when this failure ejects the endpoint.
    pub(crate) fn record_failure(&self, now: Instant, policy: &EjectionPolicy) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures {
            return None;
        }
        self.consecutive_failures.store(0, Relaxed);
        let level = self.ejections.fetch_add(1, Relaxed);
        let d = policy.backoff.delay(level);
        self.hold_for(now, d);
        Some(d)
    }

    /// Feeds one response-head latency into the peak-EWMA estimate: a slower sample is taken at
    /// once (peak), faster ones decay in with time constant `decay`.
    pub(crate) fn observe_rtt(&self, now: Instant, rtt: Duration, policy: &EwmaPolicy) {
        let sample = rtt.as_nanos() as f64;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        if sample > e.estimate {
            e.estimate = sample;
        } else {
            let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
            let tau = policy.decay.as_secs_f64().max(1e-9);
            let w = (-elapsed / tau).exp();
            e.estimate = e.estimate * w + sample * (1.0 - w);
        }
        e.stamp = now;
    }

    /// PeakEWMA load: estimated latency × (in-flight + 1).
    pub(crate) fn ewma_cost(&self) -> f64 {
        let e = self.ewma.lock().unwrap_or_else(|p| p.into_inner()).estimate;
        e * f64::from(self.in_flight() + 1)
    }
}

/// One request in flight on an endpoint.
#[derive(Debug)]
pub(crate) struct InFlight(std::sync::Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_service_overrides_what_it_sets_and_the_longest_ejection_follows_the_first() {
        let flags = EjectionPolicy::default();
        let same = flags.overridden_by(&OutlierDetectionConfig::default());
        assert_eq!(same.consecutive_failures, 7);
        assert_eq!(same.backoff.base, flags.backoff.base);
        assert_eq!(same.backoff.max, flags.backoff.max);
        let o = OutlierDetectionConfig {
            consecutive_failures: Some(0),
            base_ejection_ms: Some(120_000),
            max_ejection_ms: None,
        };
        let p = flags.overridden_by(&o);
        assert_eq!(p.consecutive_failures, 0);
        assert_eq!(p.backoff.base, Duration::from_secs(120));
        assert_eq!(
            p.backoff.max,
            Duration::from_secs(120),
            "60s default raised"
        );
        assert_eq!(p.backoff.jitter, flags.backoff.jitter);
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_recovers() {
        let p = EjectionPolicy {
            backoff: Backoff {
                jitter: 0.0,
                ..EjectionPolicy::default().backoff
            },
            ..EjectionPolicy::default()
        };
        let s = EndpointState::new(Instant::now(), EwmaPolicy::default());
        for _ in 0..6 {
            assert_eq!(s.record_failure(Instant::now(), &p), None);
        }
        s.record_success(Instant::now());
        for _ in 0..6 {
            assert_eq!(s.record_failure(Instant::now(), &p), None);
        }
        assert_eq!(
            s.record_failure(Instant::now(), &p),
            Some(Duration::from_secs(1))
        );
        assert!(!s.is_available(Instant::now()));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(s.is_available(Instant::now()));
        // Failing again right after readmission doubles the ejection.
        for _ in 0..6 {
            s.record_failure(Instant::now(), &p);
        }
        assert_eq!(
            s.record_failure(Instant::now(), &p),
            Some(Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        s.record_success(Instant::now());
        for _ in 0..6 {
            s.record_failure(Instant::now(), &p);
        }
        assert_eq!(
            s.record_failure(Instant::now(), &p),
            Some(Duration::from_secs(1)),
            "a success after readmission resets the backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_takes_peaks_and_decays() {
        let pol = EwmaPolicy::default();
        let s = EndpointState::new(Instant::now(), pol);
        assert_eq!(s.ewma_cost(), 30e6);
        s.observe_rtt(Instant::now(), Duration::from_millis(100), &pol);
        assert_eq!(s.ewma_cost(), 100e6);
        tokio::time::advance(Duration::from_secs(10)).await;
        s.observe_rtt(Instant::now(), Duration::from_millis(10), &pol);
        let e = s.ewma_cost() / 1e6;
        assert!(
            (e - (100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E))).abs()
                < 0.01,
            "{e}"
        );
        let s = Arc::new(s);
        let g = s.start();
        assert!((s.ewma_cost() / 1e6 - 2.0 * e).abs() < 0.01);
        drop(g);
        assert_eq!(s.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_hold_is_never_shortened() {
        let s = EndpointState::new(Instant::now(), EwmaPolicy::default());
        s.hold_for(Instant::now(), Duration::from_secs(5));
        s.hold_for(Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!s.is_available(Instant::now()));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(s.is_available(Instant::now()));
    }
}
