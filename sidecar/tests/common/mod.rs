//! Test fixtures shared by the per-concern test files: real hyper backends on 127.0.0.1 ephemeral
//! ports, an in-process sidecar reading a config file, a pooled HTTP client with a bounded load
//! loop, and the config pieces several concerns use.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use infermesh_sidecar::{Options, Sidecar};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone)]
pub enum Mode {
    Ok,
    Status(u16),
    /// 503 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// Reads the request, then closes the connection without answering.
    Reset,
    /// Never answers.
    Hang,
    /// Answers after a delay.
    Slow(Duration),
    /// An SSE stream: `count` events, one per `interval`; each write instant is logged; a failed
    /// write (the proxy dropped the stream) sets `cancelled`.
    Sse {
        interval: Duration,
        count: usize,
        written: Arc<Mutex<Vec<Instant>>>,
        cancelled: Arc<AtomicBool>,
    },
}

pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// Headers of the last request received.
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).boxed()
}

pub async fn backend(version: &'static str, mode: Mode) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(Mutex::new(None));
    let (h, lh, accepted) = (hits.clone(), last_headers.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (hits, last, mode) = (h.clone(), lh.clone(), mode.clone());
            tokio::spawn(async move {
                if let Mode::Reset = mode {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    hits.fetch_add(1, Ordering::SeqCst);
                    return; // dropped: the connection closes without a response
                }
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (hits, last, mode) = (hits.clone(), last.clone(), mode.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        *last.lock().unwrap() = Some(req.headers().clone());
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let resp = |status: u16, body: BoxBody| {
                            Response::builder()
                                .status(status)
                                .header("x-model-version", version)
                                .body(body)
                                .unwrap()
                        };
                        Ok::<_, Infallible>(match mode {
                            Mode::Ok => {
                                let mut r = resp(200, full(version));
                                r.headers_mut().insert("x-body-len", len.into());
                                r
                            }
                            Mode::Status(s) => resp(s, full("failing")),
                            Mode::RetryAfter(secs) => {
                                let mut r = resp(503, full("busy"));
                                r.headers_mut().insert("retry-after", secs.into());
                                r
                            }
                            Mode::Reset => unreachable!(),
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                resp(200, full(version))
                            }
                            Mode::Slow(d) => {
                                tokio::time::sleep(d).await;
                                resp(200, full(version))
                            }
                            Mode::Sse {
                                interval,
                                count,
                                written,
                                cancelled,
                            } => {
                                let (tx, rx) = tokio::sync::mpsc::channel::<
                                    Result<Frame<Bytes>, Infallible>,
                                >(1);
                                tokio::spawn(async move {
                                    for i in 0..count {
                                        tokio::time::sleep(interval).await;
                                        let ev = Frame::data(Bytes::from(format!("data: {i}\n\n")));
                                        written.lock().unwrap().push(Instant::now());
                                        if tx.send(Ok(ev)).await.is_err() {
                                            cancelled.store(true, Ordering::SeqCst);
                                            return;
                                        }
                                    }
                                    // Park until the receiver goes away or the stream is done.
                                    drop(tx);
                                });
                                let body = StreamBody::new(tokio_stream(rx));
                                let mut r = resp(200, BodyExt::boxed(body));
                                r.headers_mut()
                                    .insert("content-type", "text/event-stream".parse().unwrap());
                                r
                            }
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        hits,
        conns,
        last_headers,
    }
}

/// An mpsc receiver as a futures stream.
fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("infermesh-sidecar-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{n}.json"))
}

/// Writes the file atomically (write + rename), so a poll never sees half a document.
pub fn write_config(path: &PathBuf, json: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A mesh key file holding one key of 32 bytes `seed`: sidecars given the same seed are of one
/// namespace (they prove their routed markers to each other), others are not.
pub fn key_file(seed: u8) -> PathBuf {
    use base64::Engine as _;
    let path = temp_path(&format!("mesh-key-{seed}"));
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode([seed; 32]),
    )
    .unwrap();
    path
}

pub struct Running {
    pub sidecar: Sidecar,
    pub config: PathBuf,
}

pub async fn sidecar(config: &str) -> Running {
    sidecar_with(config, |_| {}).await
}

pub async fn sidecar_with(config: &str, tweak: impl FnOnce(&mut Options)) -> Running {
    let path = temp_path("mesh");
    write_config(&path, config);
    let mut opts = Options::loopback(path.clone());
    opts.config_poll_interval = Duration::from_millis(20);
    opts.mesh_key_file = Some(key_file(1));
    tweak(&mut opts);
    let sidecar = infermesh_sidecar::start(opts).await.unwrap();
    Running {
        sidecar,
        config: path,
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn version(&self) -> Option<&str> {
        self.headers
            .get("x-model-version")
            .and_then(|v| v.to_str().ok())
    }
}

/// One GET through the sidecar at `addr` for host `host`.
pub async fn get(
    c: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    host: &str,
    headers: &[(&str, String)],
) -> Result<Reply, String> {
    let mut b = Request::get(format!("http://{addr}/v1/models")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

/// One POST of `body` to `/v1/completions` through the sidecar at `addr` for host `host`.
pub async fn post(
    c: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    host: &str,
    body: &'static str,
) -> Result<Reply, String> {
    let req = Request::post(format!("http://{addr}/v1/completions"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(c, req).await
}

/// Sends `req` (10 s bound) and reads the whole reply.
async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// `n` GETs with `concurrency` workers, bounded by `limit` in time; returns every reply.
pub async fn load(
    addr: SocketAddr,
    host: &'static str,
    n: usize,
    concurrency: usize,
    limit: Duration,
) -> Vec<Result<Reply, String>> {
    let c = client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, next) = (c.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                out.push(get(&c, addr, host, &[]).await);
            }
            out
        }));
    }
    let all = tokio::time::timeout(limit, futures::future::join_all(tasks))
        .await
        .expect("load loop exceeded its time bound");
    all.into_iter().flat_map(|r| r.unwrap()).collect()
}

/// GET on the admin port; (status, body).
pub async fn admin(s: &Sidecar, path: &str) -> (StatusCode, String) {
    let c = client();
    let r = c
        .request(
            Request::get(format!("http://{}{path}", s.admin))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A one-service config with the given variants (name, weight, endpoint addresses).
pub fn config(
    service_extra: serde_json::Value,
    variants: &[(&str, u32, Vec<SocketAddr>)],
) -> String {
    let variants: Vec<_> = variants
        .iter()
        .map(|(n, w, eps)| {
            serde_json::json!({"name": n, "weight": w,
                "endpoints": eps.iter().map(|a| serde_json::json!({"address": a.to_string()})).collect::<Vec<_>>()})
        })
        .collect();
    let mut svc =
        serde_json::json!({"name": "llm", "namespace": "team", "port": 1, "variants": variants});
    if let (Some(o), Some(extra)) = (svc.as_object_mut(), service_extra.as_object()) {
        for (k, v) in extra {
            o.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"services": [svc]}).to_string()
}

/// A service's retry settings: `attempts` tries on `on`, backoff 1-5 ms, the given budget.
pub fn retries(
    attempts: u32,
    on: &[&str],
    per_try_ms: Option<u64>,
    ratio: f64,
    min: u32,
) -> serde_json::Value {
    serde_json::json!({"retries": {"attempts": attempts, "retryOn": on, "perTryTimeoutMs": per_try_ms,
        "backoffBaseMs": 1, "backoffMaxMs": 5, "backoffJitter": 0.5,
        "budgetRatio": ratio, "budgetMinPerSecond": min}})
}

/// Replies counted by `x-model-version` (or by status or error when not a 200).
pub fn by_version(replies: &[Result<Reply, String>]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for r in replies {
        let k = match r {
            Ok(r) if r.status == 200 => r.version().unwrap_or("?").to_owned(),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error {e}"),
        };
        *m.entry(k).or_default() += 1;
    }
    m
}
