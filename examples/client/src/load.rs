//! `load`: N requests at concurrency C within a time bound, summarised as counts by
//! `x-model-version` and by status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::RequestSpec;
use crate::transport::{self, HttpClient};

/// Key in `byVersion` for answers without an `x-model-version` header.
pub const NO_VERSION: &str = "none";

/// What one request ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A complete HTTP answer.
    Answer {
        status: u16,
        version: Option<String>,
    },
    /// No complete answer: connection, protocol or body failure.
    Failed(String),
}

/// The JSON line `load` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Requests asked for.
    pub total: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// `total - ok`: non-2xx answers, failures and requests not finished in time.
    pub errors: u64,
    /// Answers (any status) by `x-model-version`.
    pub by_version: BTreeMap<String, u64>,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<String, u64>,
    /// Requests that got no complete answer.
    pub failed: u64,
    /// Requests not finished when the time bound ran out.
    pub not_finished: u64,
    /// Wall time of the run.
    pub elapsed_ms: u64,
    /// The first failure's message, to tell what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

impl Summary {
    /// An empty summary for `total` requests.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            ..Self::default()
        }
    }

    /// Counts one finished request.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answer { status, version } => {
                if (200..300).contains(&status) {
                    self.ok += 1;
                }
                *self.by_status.entry(status.to_string()).or_default() += 1;
                let version = version.unwrap_or_else(|| NO_VERSION.to_owned());
                *self.by_version.entry(version).or_default() += 1;
            }
            Outcome::Failed(reason) => {
                self.failed += 1;
                self.first_failure.get_or_insert(reason);
            }
        }
    }

    /// Fills the derived counts once the run is over.
    pub fn finish(&mut self, elapsed: Duration) {
        let finished = self.by_status.values().sum::<u64>() + self.failed;
        self.not_finished = self.total.saturating_sub(finished);
        self.errors = self.total.saturating_sub(self.ok);
        self.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    }
}

async fn one(client: &HttpClient, spec: &RequestSpec) -> Outcome {
    match transport::fetch(client, spec).await {
        Ok(resp) => Outcome::Answer {
            status: resp.status.as_u16(),
            version: resp.model_version().map(str::to_owned),
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Sends `requests` requests with at most `concurrency` in flight, stopping at `spec.timeout`
/// (requests still running then count as not finished).
pub async fn run(
    client: &HttpClient,
    spec: &RequestSpec,
    requests: u64,
    concurrency: usize,
) -> Summary {
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let mut summary = Summary::new(requests);
    let next = Arc::new(AtomicU64::new(0));
    let spec = Arc::new(spec.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = JoinSet::new();
    let workers_wanted = u64::try_from(concurrency.max(1))
        .unwrap_or(u64::MAX)
        .min(requests);
    for _ in 0..workers_wanted {
        let (client, spec, next, tx) = (client.clone(), spec.clone(), next.clone(), tx.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                if tx.send(one(&client, &spec.nth(i)).await).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            outcome = rx.recv() => match outcome {
                Some(outcome) => summary.record(outcome),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    workers.abort_all();
    summary.finish(start.elapsed());
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, version: Option<&str>) -> Outcome {
        Outcome::Answer {
            status,
            version: version.map(str::to_owned),
        }
    }

    #[test]
    fn counts_by_version_and_status() {
        let mut s = Summary::new(6);
        s.record(answer(200, Some("v1")));
        s.record(answer(200, Some("v1")));
        s.record(answer(200, Some("v2")));
        s.record(answer(503, Some("v2")));
        s.record(answer(502, None));
        s.record(Outcome::Failed("connection refused".into()));
        s.finish(Duration::from_millis(12));
        assert_eq!(
            (s.total, s.ok, s.errors, s.failed, s.not_finished),
            (6, 3, 3, 1, 0)
        );
        assert_eq!(s.by_version["v1"], 2);
        assert_eq!(s.by_version["v2"], 2);
        assert_eq!(s.by_version[NO_VERSION], 1);
        assert_eq!(s.by_status["200"], 3);
        assert_eq!(s.by_status["503"], 1);
        assert_eq!(s.first_failure.as_deref(), Some("connection refused"));
    }

    #[test]
    fn unfinished_requests_are_errors() {
        let mut s = Summary::new(10);
        s.record(answer(200, Some("v1")));
        s.finish(Duration::from_secs(1));
        assert_eq!((s.ok, s.errors, s.not_finished), (1, 9, 9));
    }

    #[test]
    fn json_line_uses_contract_keys() {
        let mut s = Summary::new(1);
        s.record(answer(200, Some("v1")));
        s.finish(Duration::ZERO);
        let v = serde_json::to_value(&s).expect("serialises");
        assert_eq!(v["total"], 1);
        assert_eq!(v["ok"], 1);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["byVersion"]["v1"], 1);
        assert_eq!(v["byStatus"]["200"], 1);
        assert!(v.get("firstFailure").is_none());
    }
}
