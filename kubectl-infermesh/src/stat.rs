//! `kubectl infermesh stat`: each variant's traffic over a window, summed over the `/stats` of
//! every meshed pod of the ModelService's namespace, read through the API server's pod proxy (no
//! Prometheus). A request is counted by the sidecar its client called, so the sum counts each
//! once, wherever the client runs in the namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use infermesh_crds::{ModelService, SIDECAR_INJECTED, SIDECAR_LABEL, ports};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::histogram::quantile;

/// Which ModelServices to show.
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    /// `None`: every ModelService in scope.
    pub name: Option<String>,
}

/// A pod's `/stats` answer (the fields this command reads).
#[derive(Debug, Deserialize)]
struct PodStats {
    variants: Vec<VariantStats>,
}

#[derive(Debug, Deserialize)]
struct VariantStats {
    service: String,
    variant: String,
    #[serde(flatten)]
    counts: Counts,
}

/// A variant's figures over the window: one pod's, or their sum.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    /// The time covered (the longest any pod covers, in a sum).
    seconds: f64,
    requests: u64,
    failures: u64,
    in_flight: i64,
    output_tokens: u64,
    ttft: Buckets,
    tpot: Buckets,
}

/// Per-bucket counts over upper bounds (one count more than bounds).
#[derive(Debug, Default, Clone, Deserialize)]
struct Buckets {
    bounds: Vec<f64>,
    counts: Vec<u64>,
}

impl Buckets {
    /// Adds `other`'s counts; a pod on other bounds (another sidecar version) is left out of
    /// the percentiles rather than mixed in wrongly.
    fn add(&mut self, other: &Buckets) {
        if self.bounds.is_empty() {
            *self = other.clone();
        } else if self.bounds == other.bounds && self.counts.len() == other.counts.len() {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
        }
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        quantile(q, &self.bounds, &self.counts)
    }
}

impl Counts {
    fn add(&mut self, v: &Counts) {
        // Pods younger than the window cover less of it; the window is the longest any covers.
        self.seconds = self.seconds.max(v.seconds);
        self.requests += v.requests;
        self.failures += v.failures;
        self.in_flight += v.in_flight;
        self.output_tokens += v.output_tokens;
        self.ttft.add(&v.ttft);
        self.tpot.add(&v.tpot);
    }
}

/// One line of the table: a variant of a ModelService over the window.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub model_service: String,
    pub variant: String,
    /// The weight in effect (the ModelService's status).
    pub weight: Option<i32>,
    pub requests: u64,
    pub failures: u64,
    pub requests_per_second: f64,
    /// Share of requests not answered with a 5xx nor cut; `None` without requests.
    pub success_rate: Option<f64>,
    pub ttft_p50_seconds: Option<f64>,
    pub ttft_p99_seconds: Option<f64>,
    pub tpot_p50_seconds: Option<f64>,
    pub output_tokens_per_second: f64,
    /// Requests routed and not ended, now.
    pub in_flight: i64,
    /// The time the sums cover (the window, or less when every pod is younger).
    pub window_seconds: f64,
}

/// What one run of `stat` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub rows: Vec<Row>,
    /// Meshed pods asked.
    pub pods: usize,
    /// Pods that did not answer, with why: their traffic is missing from the sums.
    pub unanswered: Vec<String>,
}

/// Reads every meshed pod's `/stats` over `since` and sums them per variant of the
/// ModelServices in `scope`.
pub async fn collect(client: &Client, scope: &Scope, since: Duration) -> anyhow::Result<Report> {
    let services = model_services(client, scope).await?;
    let mut namespaces: Vec<String> = services.iter().filter_map(|m| m.namespace()).collect();
    namespaces.dedup();
    let mut pods = Vec::new();
    for ns in &namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let selector = format!("{SIDECAR_LABEL}={SIDECAR_INJECTED}");
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing the meshed pods of namespace {ns}"))?;
        pods.extend(list.items.into_iter().filter(running).map(|p| {
            let name = p.name_any();
            (ns.clone(), name)
        }));
    }
    let window = format!("{}s", since.as_secs());
    let answers: Vec<_> = futures::stream::iter(pods.iter())
        .map(|(ns, pod)| {
            let window = window.clone();
            async move { (ns, pod, pod_stats(client, ns, pod, &window).await) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut sums: BTreeMap<(String, String, String), Counts> = BTreeMap::new();
    let mut unanswered = Vec::new();
    for (ns, pod, answer) in answers {
        match answer {
            Ok(stats) => {
                for v in &stats.variants {
                    let key = (ns.clone(), v.service.clone(), v.variant.clone());
                    sums.entry(key).or_default().add(&v.counts);
                }
            }
            Err(e) => unanswered.push(format!("{ns}/{pod}: {e:#}")),
        }
    }
    unanswered.sort();
    let seconds = since.as_secs_f64();
    let mut rows = Vec::new();
    for ms in &services {
        let ns = ms.namespace().unwrap_or_default();
        let name = ms.name_any();
        for v in &ms.spec.variants {
            let key = (ns.clone(), name.clone(), v.name.clone());
            let sum = sums.remove(&key).unwrap_or_default();
            let weight = ms.status.as_ref().and_then(|s| {
                s.variants
                    .iter()
                    .find(|x| x.name == v.name)
                    .map(|x| x.weight)
            });
            rows.push(row(&ns, &name, &v.name, weight, &sum, seconds));
        }
    }
    Ok(Report {
        rows,
        pods: pods.len(),
        unanswered,
    })
}

fn row(ns: &str, name: &str, variant: &str, weight: Option<i32>, s: &Counts, since: f64) -> Row {
    // Rates over the time the sums cover: the window, or less while every pod is younger.
    let covered = if s.seconds > 0.0 {
        s.seconds.min(since)
    } else {
        since
    };
    Row {
        namespace: ns.to_owned(),
        model_service: name.to_owned(),
        variant: variant.to_owned(),
        weight,
        requests: s.requests,
        failures: s.failures,
        requests_per_second: s.requests as f64 / covered,
        success_rate: (s.requests > 0)
            .then(|| (s.requests - s.failures.min(s.requests)) as f64 / s.requests as f64),
        ttft_p50_seconds: s.ttft.quantile(0.5),
        ttft_p99_seconds: s.ttft.quantile(0.99),
        tpot_p50_seconds: s.tpot.quantile(0.5),
        output_tokens_per_second: s.output_tokens as f64 / covered,
        in_flight: s.in_flight,
        window_seconds: covered,
    }
}

/// A pod whose sidecar can answer: running, with an IP, not being deleted.
fn running(p: &Pod) -> bool {
    let status = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status.and_then(|s| s.pod_ip.as_ref()).is_some()
}

/// The ModelServices in scope, sorted by namespace and name; an error naming what to fix when a
/// named one does not exist.
async fn model_services(client: &Client, scope: &Scope) -> anyhow::Result<Vec<ModelService>> {
    let api: Api<ModelService> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut list: Vec<ModelService> = api
        .list(&ListParams::default())
        .await
        .context("listing ModelServices (is infermesh installed? try kubectl infermesh check)")?
        .items
        .into_iter()
        .filter(|m| scope.name.as_ref().is_none_or(|n| *n == m.name_any()))
        .collect();
    if let (Some(name), true) = (&scope.name, list.is_empty()) {
        match &scope.namespace {
            Some(ns) => bail!(
                "modelservice {name} not found in namespace {ns}: see kubectl get modelservices -n {ns}, or pass -A"
            ),
            None => bail!("modelservice {name} not found in any namespace"),
        }
    }
    list.sort_by_key(|m| (m.namespace(), m.name_any()));
    Ok(list)
}

/// One pod's `/stats` through the API server's pod proxy, bounded in time.
async fn pod_stats(client: &Client, ns: &str, pod: &str, since: &str) -> anyhow::Result<PodStats> {
    let path = format!(
        "/api/v1/namespaces/{ns}/pods/{pod}:{}/proxy/stats?since={since}",
        ports::ADMIN
    );
    let req = http::Request::get(path).body(Vec::new())?;
    let text = tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
        .await
        .context("no answer within 5s")??;
    serde_json::from_str(&text).context("the sidecar's /stats is not what this plugin reads")
}

/// Durations as a person reads them: `320ms`, `1.25s`; `-` for none.
fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

/// The report as a table in kubectl's style (the namespace column with `-A`).
pub fn table(report: &Report, all_namespaces: bool) -> String {
    let mut lines: Vec<Vec<String>> = vec![
        [
            "MODELSERVICE",
            "VARIANT",
            "WEIGHT",
            "REQUESTS",
            "RPS",
            "SUCCESS",
            "TTFT_P50",
            "TTFT_P99",
            "TPOT_P50",
            "TOKENS/S",
            "IN_FLIGHT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &report.rows {
        lines.push(vec![
            r.model_service.clone(),
            r.variant.clone(),
            r.weight.map_or("-".into(), |w| w.to_string()),
            r.requests.to_string(),
            format!("{:.1}", r.requests_per_second),
            r.success_rate
                .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
            seconds(r.ttft_p50_seconds),
            seconds(r.ttft_p99_seconds),
            seconds(r.tpot_p50_seconds),
            format!("{:.1}", r.output_tokens_per_second),
            r.in_flight.to_string(),
        ]);
    }
    if all_namespaces {
        lines[0].insert(0, "NAMESPACE".into());
        for (line, r) in lines[1..].iter_mut().zip(&report.rows) {
            line.insert(0, r.namespace.clone());
        }
    }
    let mut out = crate::columns(&lines);
    if report.rows.is_empty() {
        out = "No ModelServices found.\n".into();
    }
    if !report.unanswered.is_empty() {
        out.push_str(&format!(
            "\n{} of {} meshed pods did not answer; their requests are missing above:\n",
            report.unanswered.len(),
            report.pods
        ));
        for u in &report.unanswered {
            out.push_str(&format!("  {u}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: u64, failures: u64, seconds: f64, ttft: &[u64]) -> Counts {
        Counts {
            seconds,
            requests,
            failures,
            in_flight: 1,
            output_tokens: requests * 10,
            ttft: Buckets {
                bounds: vec![0.1, 0.5],
                counts: ttft.to_vec(),
            },
            tpot: Buckets::default(),
        }
    }

    #[test]
    fn pods_are_summed_and_rates_are_over_the_window_they_cover() {
        let mut sum = Counts::default();
        sum.add(&stats(60, 3, 60.0, &[0, 60, 0]));
        sum.add(&stats(30, 0, 20.0, &[30, 0, 0]));
        let r = row("ns", "llm", "v1", Some(90), &sum, 60.0);
        assert_eq!((r.requests, r.failures, r.in_flight), (90, 3, 2));
        assert_eq!(r.requests_per_second, 1.5);
        assert_eq!(r.output_tokens_per_second, 15.0);
        assert_eq!(r.success_rate, Some(87.0 / 90.0));
        // A third of the samples below 0.1 s, the rest in (0.1, 0.5]: the median is in the
        // second bucket.
        let p50 = r.ttft_p50_seconds.unwrap();
        assert!(p50 > 0.1 && p50 < 0.5, "{p50}");
        assert_eq!(r.tpot_p50_seconds, None, "no stream, no TPOT");
        // Every pod younger than the window: rates over what they cover.
        let mut young = Counts::default();
        young.add(&stats(10, 0, 5.0, &[0, 0, 0]));
        assert_eq!(
            row("ns", "llm", "v1", None, &young, 60.0).requests_per_second,
            2.0
        );
    }

    /// What the sidecar's `/stats` writes (`sidecar/src/server/admin.rs`) is what this reads.
    #[test]
    fn a_sidecars_stats_answer_is_read_whole() {
        let text = r#"{"revision":"r1","windowSeconds":60,"variants":[{"service":"llm",
            "variant":"v1","seconds":12.5,"requests":3,"failures":1,"inFlight":2,
            "outputTokens":33,"ttft":{"bounds":[0.1],"counts":[1,2]},
            "tpot":{"bounds":[0.1],"counts":[3,0]}}]}"#;
        let p: PodStats = serde_json::from_str(text).unwrap();
        let v = &p.variants[0];
        assert_eq!((v.service.as_str(), v.variant.as_str()), ("llm", "v1"));
        let c = &v.counts;
        assert_eq!(
            (c.requests, c.failures, c.in_flight, c.output_tokens),
            (3, 1, 2, 33)
        );
        assert_eq!(
            (c.seconds, c.ttft.counts.len(), c.tpot.bounds.len()),
            (12.5, 2, 1)
        );
    }

    #[test]
    fn a_pod_on_other_bounds_stays_out_of_the_percentiles() {
        let mut b = Buckets {
            bounds: vec![0.1, 0.5],
            counts: vec![1, 1, 0],
        };
        b.add(&Buckets {
            bounds: vec![0.2],
            counts: vec![5, 5],
        });
        assert_eq!(b.counts, vec![1, 1, 0]);
        b.add(&Buckets {
            bounds: vec![0.1, 0.5],
            counts: vec![0, 2, 1],
        });
        assert_eq!(b.counts, vec![1, 3, 1]);
    }

    #[test]
    fn the_table_shows_each_variant_and_who_did_not_answer() {
        let mut sum = Counts::default();
        sum.add(&stats(900, 0, 60.0, &[0, 900, 0]));
        let report = Report {
            rows: vec![
                row("demo", "llm", "stable", Some(90), &sum, 60.0),
                row("demo", "llm", "canary", Some(10), &Counts::default(), 60.0),
            ],
            pods: 4,
            unanswered: vec!["demo/llm-v2-x: no answer within 5s".into()],
        };
        let t = table(&report, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   MODELSERVICE   VARIANT"),
            "{t}"
        );
        assert!(
            lines[1].contains("stable") && lines[1].contains("900"),
            "{t}"
        );
        assert!(
            lines[1].contains("100.00%") && lines[1].contains("15.0"),
            "{t}"
        );
        assert!(
            lines[2].contains("canary") && lines[2].contains(" - "),
            "{t}"
        );
        assert!(t.contains("1 of 4 meshed pods did not answer"), "{t}");
    }
}
