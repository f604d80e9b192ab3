//! `infermesh-webhook-bench`: starts `infermesh-webhook --standalone` on loopback, sends N
//! AdmissionReviews over C keep-alive HTTPS connections, and prints latency percentiles and the
//! webhook's resident memory.
//!
//!   cargo build --release -p infermesh-webhook
//!   target/release/infermesh-webhook-bench --requests 10000 --concurrency 64

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Method, StatusCode};
use infermesh_webhook::client::Connection;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the infermesh webhook over loopback")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The webhook binary (default: next to this one).
    #[arg(long)]
    webhook_bin: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn review(i: usize) -> Bytes {
    // Four in five pods are injected (namespace "ml" is enabled), the rest skipped.
    let ns = if i % 5 == 4 { "default" } else { "ml" };
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": ns, "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "generateName": "llm-7d9f-", "labels": { "app": "llm", "pod-template-hash": "7d9f" },
                              "annotations": { "prometheus.io/scrape": "true" } },
                "spec": {
                    "containers": [{
                        "name": "model", "image": "infermesh/examples:0.1.0",
                        "args": ["--port", "8080", "--version", "v1"],
                        "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                        "env": [{ "name": "MODEL", "value": "tiny" }],
                        "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                        "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }],
                    }],
                    "volumes": [{ "name": "kube-api-access", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }],
                    "serviceAccountName": "default", "restartPolicy": "Always",
                },
            },
            "oldObject": null, "dryRun": false,
        }
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = match args.webhook_bin.clone() {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("infermesh-webhook"),
    };
    let dir = std::env::temp_dir().join(format!("infermesh-webhook-bench-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(&bin)
        .args([
            "--standalone",
            "--standalone-inject-namespace",
            "ml",
            "--extra-san",
            "127.0.0.1",
        ])
        .arg(format!("--listen={addr}"))
        .arg("--cert-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} failed: build it with cargo build --release -p infermesh-webhook",
                bin.display()
            )
        })?;
    let webhook = Webhook(child);
    let pid = webhook.0.id();

    let name = "infermesh-webhook.infermesh-system.svc";
    let started = Instant::now();
    let ca = loop {
        if let Ok(ca) = std::fs::read_to_string(dir.join("ca.crt"))
            && let Ok(mut c) = Connection::open(addr, name, &ca).await
            && matches!(
                c.send(Method::GET, "/ready", Bytes::new()).await,
                Ok((StatusCode::OK, _))
            )
        {
            break ca;
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("the webhook did not become healthy on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (rss_idle, _) = rss_kib(pid);

    let bodies: Vec<Bytes> = (0..args.requests).map(review).collect();
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (bodies, next, ca) = (bodies.clone(), next.clone(), ca.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr, name, &ca).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let s = Instant::now();
                let (status, resp) = conn.send(Method::POST, "/mutate", body.clone()).await?;
                lat.push(s.elapsed());
                if status != StatusCode::OK || !resp.starts_with(b"{") {
                    anyhow::bail!("review {i} answered {status}");
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(args.requests);
    let joined = tokio::time::timeout(args.deadline, futures::future::join_all(workers))
        .await
        .context("the benchmark exceeded its deadline")?;
    for w in joined {
        all.extend(w??);
    }
    let wall = t0.elapsed();
    let (rss, hwm) = rss_kib(pid);
    all.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "requests": all.len(),
            "concurrency": args.concurrency,
            "wallSeconds": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
            "reviewsPerSecond": (all.len() as f64 / wall.as_secs_f64()).round(),
            "p50Ms": ms(percentile(&all, 0.50)),
            "p90Ms": ms(percentile(&all, 0.90)),
            "p99Ms": ms(percentile(&all, 0.99)),
            "maxMs": ms(all.last().copied().unwrap_or_default()),
            "webhookRssIdleKiB": rss_idle,
            "webhookRssKiB": rss,
            "webhookPeakRssKiB": hwm,
        })
    );
    drop(webhook);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
