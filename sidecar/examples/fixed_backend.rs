//! A fixed, fast HTTP/1.1 backend for measuring the sidecar: answers every request with 200, a
//! short body and `x-model-version`. Usage: `fixed_backend PORT [VERSION]` (single-threaded).

use std::convert::Infallible;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let version: &'static str =
        Box::leak(args.next().unwrap_or_else(|| "v1".into()).into_boxed_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    r.headers_mut()
                        .insert("x-model-version", http::HeaderValue::from_static(version));
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
