//! The benchmark backend: a fixed small answer, as cheap as hyper allows, so that what a proxy adds
//! stands out; and an SSE stream stamped with write times.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:18080")]
    addr: std::net::SocketAddr,
    /// Value of the `x-model-version` header, so a load generator can count the split.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

type Body = BoxBody<Bytes, Infallible>;

pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.addr).await?;
    let version: &'static str = Box::leak(args.version.into_boxed_str());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, version));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    version: &'static str,
) -> Result<Response<Body>, Infallible> {
    let mut builder = Response::builder().header("x-model-version", version);
    if req.method() == Method::POST {
        // Read the whole body (as an engine would) and say how long it was, so a load generator
        // can check that a proxy forwarded it intact. GETs skip this and cost what they did.
        let len = match req.into_body().collect().await {
            Ok(body) => body.to_bytes().len().to_string(),
            Err(_) => "error".to_owned(),
        };
        builder = builder.header("x-body-len", len);
        return Ok(builder
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BoxBody::new(Full::new(Bytes::from_static(b"ok"))))
            .unwrap_or_else(|_| Response::new(BoxBody::new(Full::new(Bytes::new())))));
    }
    let response = if req.uri().path() == "/sse" {
        let (events, interval) = sse_params(req.uri().query().unwrap_or(""));
        builder
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(sse_body(events, interval))
    } else {
        builder
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BoxBody::new(Full::new(Bytes::from_static(b"ok"))))
    };
    Ok(response.unwrap_or_else(|_| Response::new(BoxBody::new(Full::new(Bytes::new())))))
}

/// `events` and `interval_ms` from a query string; bounded so no request can ask for a huge stream.
fn sse_params(query: &str) -> (u32, Duration) {
    let mut events = 20;
    let mut interval_ms = 10;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("events", v)) => events = v.parse().unwrap_or(events).min(10_000),
            Some(("interval_ms", v)) => interval_ms = v.parse().unwrap_or(interval_ms).min(10_000),
            _ => {}
        }
    }
    (events, Duration::from_millis(interval_ms))
}

/// Each event is `data: <index> <wall-clock ns when written>`; the body yields it the moment it is
/// made, so any batching seen by the client happened in between.
fn sse_body(events: u32, interval: Duration) -> Body {
    let stream = futures::stream::unfold(0u32, move |i| async move {
        if i >= events {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let line = format!("data: {i} {}\n\n", crate::wall_clock_ns());
        Some((Ok(Frame::data(Bytes::from(line))), i + 1))
    });
    BoxBody::new(StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_params_read_the_query_and_cap_it() {
        assert_eq!(
            sse_params("events=5&interval_ms=50"),
            (5, Duration::from_millis(50))
        );
        assert_eq!(sse_params(""), (20, Duration::from_millis(10)));
        assert_eq!(
            sse_params("events=999999&interval_ms=x"),
            (10_000, Duration::from_millis(10))
        );
    }
}
