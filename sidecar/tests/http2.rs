//! HTTP/2 both ways: a prior-knowledge client, a service with protocol HTTP2 (h2c upstream), and
//! gRPC-style trailers passed through untouched; a call counted and retried by its grpc-status.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A sidecar routing service `grpc-llm` (protocol GRPC) to `backend` with `retries`, and one
/// prior-knowledge HTTP/2 connection to its inbound port.
async fn grpc_sidecar(
    backend: std::net::SocketAddr,
    retries: serde_json::Value,
) -> (
    Running,
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) {
    let cfg = serde_json::json!({"services": [{"name": "grpc-llm", "port": 1, "protocol": "GRPC",
        "variants": [{"name": "v", "weight": 1, "endpoints": [{"address": backend.to_string()}]}],
        "retries": retries}]});
    let s = sidecar(&cfg.to_string()).await;
    let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound)
        .await
        .unwrap();
    let (c, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    (s, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_to_h2c_backend_with_trailers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let v = format!("{:?}", req.version());
                    let te = req.headers().get("te").cloned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                        vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
                    let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)));
                    r.headers_mut()
                        .insert("x-upstream-version", v.parse().unwrap());
                    if let Some(te) = te {
                        r.headers_mut().insert("x-saw-te", te);
                    }
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let retries = serde_json::json!({"attempts": 2, "retryOn": ["5xx"], "backoffBaseMs": 1,
        "backoffMaxMs": 2, "backoffJitter": 0.0, "budgetRatio": 0.2, "budgetMinPerSecond": 10});
    let (_s, mut c) = grpc_sidecar(backend, retries).await;
    for _ in 0..3 {
        let req = Request::post("http://grpc-llm.team.svc.cluster.local:15006/pkg.Svc/Call")
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200, "{:?}", resp.headers());
        assert_eq!(resp.headers()["x-upstream-version"], "HTTP/2.0");
        assert_eq!(resp.headers()["x-saw-te"], "trailers");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(
            collected.to_bytes(),
            Bytes::from_static(b"\0\0\0\0\x05hello")
        );
    }
}

/// A gRPC backend by method: `Flaky` answers UNAVAILABLE (trailers-only) to its first call and
/// OK after; `Broken` sends a message and then INTERNAL in its trailers; `Busy` answers
/// RESOURCE_EXHAUSTED (trailers-only). Returns its address and the calls it saw.
async fn grpc_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        let trailers_only = |code: &'static str| {
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![];
                            let mut r =
                                Response::new(StreamBody::new(futures::stream::iter(frames)));
                            r.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            r.headers_mut().insert("grpc-status", code.parse().unwrap());
                            r
                        };
                        let with_trailers = |code: &'static str| {
                            let mut t = HeaderMap::new();
                            t.insert("grpc-status", code.parse().unwrap());
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
                                Ok(Frame::trailers(t)),
                            ];
                            let mut r =
                                Response::new(StreamBody::new(futures::stream::iter(frames)));
                            r.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            r
                        };
                        Ok::<_, Infallible>(match path.as_str() {
                            "/pkg.Svc/Flaky" if n == 0 => trailers_only("14"),
                            "/pkg.Svc/Broken" => with_trailers("13"),
                            "/pkg.Svc/Busy" => trailers_only("8"),
                            _ => with_trailers("0"),
                        })
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// The sum of `infermesh_requests_total{class=...}` of service `grpc-llm`.
fn requests_of_class(metrics: &str, class: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("infermesh_requests_total{") && l.contains("grpc-llm"))
        .filter(|l| l.contains(&format!("class=\"{class}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_status_decides_success_and_unavailable_is_retried() {
    use std::sync::atomic::Ordering;
    let (backend, calls) = grpc_backend().await;
    let retries = serde_json::json!({"attempts": 2, "retryOn": ["unavailable"], "backoffBaseMs": 1,
        "backoffMaxMs": 2, "backoffJitter": 0.0, "budgetRatio": 1.0, "budgetMinPerSecond": 10});
    let (s, mut c) = grpc_sidecar(backend, retries).await;
    let mut call = async |method: &str| {
        let req = Request::post(format!("http://grpc-llm:15006/pkg.Svc/{method}"))
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        let head = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.unwrap();
        let code = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(head);
        code.map(|c| c.to_str().unwrap().to_owned())
    };
    // UNAVAILABLE in the head: the server never took the call; retried, answered OK.
    assert_eq!(call("Flaky").await.as_deref(), Some("0"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one retry");
    // INTERNAL in the trailers after a message: relayed as it came, counted as a 5xx.
    assert_eq!(call("Broken").await.as_deref(), Some("13"));
    // RESOURCE_EXHAUSTED, which this policy does not name: not retried, counted as a 429.
    assert_eq!(call("Busy").await.as_deref(), Some("8"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = admin(&s.sidecar, "/metrics").await.1;
        if requests_of_class(&metrics, "2xx")
            + requests_of_class(&metrics, "4xx")
            + requests_of_class(&metrics, "5xx")
            == 3
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(requests_of_class(&metrics, "2xx"), 1, "{metrics}");
    assert_eq!(requests_of_class(&metrics, "5xx"), 1, "INTERNAL: {metrics}");
    assert_eq!(
        requests_of_class(&metrics, "4xx"),
        1,
        "RESOURCE_EXHAUSTED: {metrics}"
    );
}
