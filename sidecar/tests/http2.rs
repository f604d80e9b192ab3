//! HTTP/2 both ways: a prior-knowledge client, a service with protocol HTTP2 (h2c upstream), and
//! gRPC-style trailers passed through untouched.

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
    let cfg = serde_json::json!({"services": [{"name": "grpc-llm", "port": 1, "protocol": "GRPC",
        "variants": [{"name": "v", "weight": 1, "endpoints": [{"address": backend.to_string()}]}],
        "retries": {"attempts": 2, "retryOn": ["5xx"], "backoffBaseMs": 1, "backoffMaxMs": 2,
                    "backoffJitter": 0.0, "budgetRatio": 0.2, "budgetMinPerSecond": 10}}]});
    let s = sidecar(&cfg.to_string()).await;
    // One prior-knowledge connection to the sidecar; :authority names the service.
    let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound)
        .await
        .unwrap();
    let (mut c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
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
