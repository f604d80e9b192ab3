//! The benchmark backend: a fixed small answer, as cheap as hyper allows, so that what a proxy adds
//! stands out; and an SSE stream stamped with write times, as bare `data: <i> <ns>` events or
//! shaped as OpenAI chat-completion chunks (`shape=chat`, and always at a path ending in
//! `/completions`, which a sidecar meters as a generation: the same bytes at `/sse?shape=chat`
//! are not metered, so the two differ only by the token meter).

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
    let path = req.uri().path();
    let response = if path == "/sse" || path.ends_with("/completions") {
        let (events, interval, chat) = sse_params(req.uri().query().unwrap_or(""));
        builder
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(sse_body(
                events,
                interval,
                chat || path.ends_with("/completions"),
            ))
    } else {
        builder
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BoxBody::new(Full::new(Bytes::from_static(b"ok"))))
    };
    Ok(response.unwrap_or_else(|_| Response::new(BoxBody::new(Full::new(Bytes::new())))))
}

/// `events`, `interval_ms` and `shape=chat` from a query string; bounded so no request can ask
/// for a huge stream.
fn sse_params(query: &str) -> (u32, Duration, bool) {
    let mut events = 20;
    let mut interval_ms = 10;
    let mut chat = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("events", v)) => events = v.parse().unwrap_or(events).min(10_000),
            Some(("interval_ms", v)) => interval_ms = v.parse().unwrap_or(interval_ms).min(10_000),
            Some(("shape", v)) => chat = v == "chat",
            _ => {}
        }
    }
    (events, Duration::from_millis(interval_ms), chat)
}

/// Event `i` as an OpenAI chat-completion chunk whose content is `<i> <ns>`.
fn chat_event(i: u32, ns: u128) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"bench\",\
         \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i} {ns}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// The end of a chat stream: the finish reason, the usage, `[DONE]`.
fn chat_end(events: u32) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"bench\",\
         \"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\
         \"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n\
         data: [DONE]\n\n",
        events + 8
    )
}

/// Each event is `data: <index> <wall-clock ns when written>` (with `chat`, that text is the
/// chunk's content, and a finish chunk and `[DONE]` follow); the body yields it the moment it is
/// made, so any batching seen by the client happened in between.
fn sse_body(events: u32, interval: Duration, chat: bool) -> Body {
    let stream = futures::stream::unfold(0u32, move |i| async move {
        if i > events || (i == events && !chat) {
            return None;
        }
        if i == events {
            return Some((Ok(Frame::data(Bytes::from(chat_end(events)))), i + 1));
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let ns = crate::wall_clock_ns();
        let line = if chat {
            chat_event(i, ns)
        } else {
            format!("data: {i} {ns}\n\n")
        };
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
            (5, Duration::from_millis(50), false)
        );
        assert_eq!(sse_params(""), (20, Duration::from_millis(10), false));
        assert_eq!(
            sse_params("events=999999&interval_ms=x&shape=chat"),
            (10_000, Duration::from_millis(10), true)
        );
    }

    #[test]
    fn a_chat_event_is_an_openai_chunk_carrying_its_stamp() {
        let e = chat_event(3, 12345);
        let json: serde_json::Value =
            serde_json::from_str(e.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["choices"][0]["delta"]["content"], "3 12345");
        assert_eq!(crate::sse::event_stamps(e.as_bytes()), vec![12345]);
        let end = chat_end(3);
        assert!(end.contains("\"completion_tokens\":3") && end.ends_with("data: [DONE]\n\n"));
        assert!(crate::sse::event_stamps(end.as_bytes()).is_empty());
    }
}
