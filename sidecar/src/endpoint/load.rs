//! What a routing sidecar believes about an endpoint's load ([`LoadEstimate`]): the last report
//! the endpoint's sidecar put on a response (`endpoint-load-metrics`), trusted for
//! [`FRESH_FOR`], changed by as much as this sidecar's own in-flight count there changed since.
//! The report counts every caller's requests, which this sidecar's own count cannot see; a
//! request this sidecar sent after it is added because the report does not know it yet, and
//! one that ended after it is taken off because the report still counts it (a report rides on
//! the response of a request it counts: without this, an endpoint that just answered would look
//! busy for [`FRESH_FOR`]). The own count is a floor. Without a fresh report, the view falls
//! back to this sidecar's own count (the generic signal).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::adapters::Adapters;
use crate::load::orca::LoadReport;

/// How long a report stands for the endpoint's load (the llm-d router's metrics go stale after
/// 2 s too): long enough to bridge the gaps between responses of a busy endpoint, short enough
/// that a drained endpoint is not avoided for long.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct LoadEstimate(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// The report, when it came, and this sidecar's requests in flight there then.
    report: Option<(LoadReport, Instant, u32)>,
}

/// The estimate at one moment, as the scorer reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LoadView {
    /// Requests at the endpoint's model.
    pub(crate) requests: f64,
    /// Requests waiting in its engine, when the engine tells.
    pub(crate) waiting: Option<f64>,
    /// KV-cache usage, 0..=1, when the engine tells.
    pub(crate) kv_usage: Option<f64>,
    /// LoRA adapters the endpoint's engine holds, when it tells.
    pub(crate) adapters: Adapters,
    /// Age of the report the view rests on; `None`: no fresh report.
    pub(crate) age: Option<Duration>,
}

impl LoadEstimate {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint's sidecar reported `r` on a response received at `now`, while this
    /// sidecar had `own_in_flight` requests there (the one the response answers included).
    pub(crate) fn report(&self, r: LoadReport, now: Instant, own_in_flight: u32) {
        self.inner().report = Some((r, now, own_in_flight));
    }

    /// The load at `now`; `own_in_flight` is this sidecar's count of requests at the endpoint.
    pub(crate) fn view(&self, now: Instant, own_in_flight: u32) -> LoadView {
        let i = self.inner();
        let own = f64::from(own_in_flight);
        let Some((r, at, own_then)) = i.report else {
            return LoadView::own(own);
        };
        let age = now.saturating_duration_since(at);
        if age >= FRESH_FOR {
            return LoadView::own(own);
        }
        // Sent since, less ended since.
        let since = own - f64::from(own_then);
        let engine = r.waiting.zip(r.running).map(|(w, run)| w + run);
        let Some(reported) = r.in_flight.or(engine) else {
            return LoadView {
                kv_usage: r.kv_usage,
                adapters: r.adapters,
                age: Some(age),
                ..LoadView::own(own)
            };
        };
        LoadView {
            // Never below what this sidecar alone has there.
            requests: (reported + since).max(own),
            waiting: r.waiting.map(|w| w + since.max(0.0)),
            kv_usage: r.kv_usage,
            adapters: r.adapters,
            age: Some(age),
        }
    }
}

impl LoadView {
    fn own(requests: f64) -> Self {
        Self {
            requests,
            waiting: None,
            kv_usage: None,
            adapters: Adapters::default(),
            age: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(in_flight: f64, waiting: f64, kv: f64) -> LoadReport {
        LoadReport {
            in_flight: Some(in_flight),
            waiting: Some(waiting),
            running: Some(in_flight - waiting),
            kv_usage: Some(kv),
            ..Default::default()
        }
    }

    #[test]
    fn without_a_report_the_own_count_is_the_load() {
        let e = LoadEstimate::default();
        let v = e.view(Instant::now(), 3);
        assert_eq!(
            (v.requests, v.waiting, v.kv_usage, v.age),
            (3.0, None, None, None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_counts_every_callers_requests_plus_what_was_sent_since() {
        let e = LoadEstimate::default();
        let t0 = Instant::now();
        // One request of ours in flight when the report came; two more sent since.
        e.report(report(6.0, 2.0, 0.5), t0, 1);
        let v = e.view(t0 + Duration::from_millis(100), 3);
        assert_eq!(v.requests, 8.0, "6 reported + 2 sent since");
        assert_eq!(v.waiting, Some(4.0));
        assert_eq!(v.kv_usage, Some(0.5));
        assert_eq!(v.age, Some(Duration::from_millis(100)));
        // Own requests are a floor: a report can lag behind what reached the endpoint.
        e.report(report(0.0, 0.0, 0.1), t0, 3);
        assert_eq!(e.view(t0, 3).requests, 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_ended_since_the_report_are_taken_off() {
        let e = LoadEstimate::default();
        let t0 = Instant::now();
        // The report rides on the response of our one request, and counts it; then it ends.
        e.report(report(1.0, 0.0, 0.1), t0, 1);
        let v = e.view(t0 + Duration::from_millis(10), 0);
        assert_eq!(
            (v.requests, v.waiting),
            (0.0, Some(0.0)),
            "idle once it ended"
        );
        // Sent and ended between two reports: no trace.
        e.report(report(4.0, 1.0, 0.1), t0, 2);
        assert_eq!(e.view(t0, 2).requests, 4.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_report_gives_way_to_the_own_count() {
        let e = LoadEstimate::default();
        let t0 = Instant::now();
        e.report(report(9.0, 5.0, 0.9), t0, 1);
        assert_eq!(e.view(t0 + FRESH_FOR / 2, 1).requests, 9.0);
        let v = e.view(t0 + FRESH_FOR, 1);
        assert_eq!((v.requests, v.kv_usage, v.age), (1.0, None, None));
    }

    #[test]
    fn a_report_without_counts_still_gives_its_kv_usage() {
        let e = LoadEstimate::default();
        let now = Instant::now();
        e.report(
            LoadReport {
                kv_usage: Some(0.7),
                ..Default::default()
            },
            now,
            2,
        );
        let v = e.view(now, 2);
        assert_eq!((v.requests, v.kv_usage), (2.0, Some(0.7)));
    }
}
