//! Token metrics on loopback, against a model server that sends its response head at once and
//! its tokens later: time to first token is the first token's, not the head's; time per output
//! token is the server's interval; `usage` counts are taken exactly; a client that leaves and a
//! stream cut by the idle timeout are counted as what they are; `/stats` sums them over a window.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// How the model server streams: the first token `first` after the head, then one every
/// `interval`, `tokens` in all; `usage` at the end when asked; with `stall_after`, it stops
/// sending (without closing) after that many tokens.
#[derive(Clone, Copy)]
struct Stream {
    first: Duration,
    interval: Duration,
    tokens: usize,
    usage: bool,
    stall_after: Option<usize>,
}

fn event(v: serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn model_server(s: Stream) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                    tokio::spawn(async move {
                        let send = |b: Bytes| tx.send(Ok(Frame::data(b)));
                        let role = json!({"model": "smollm2", "choices": [{"index": 0,
                            "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
                        if send(event(role)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(s.first).await;
                        for i in 0..s.tokens {
                            if s.stall_after == Some(i) {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                            if i > 0 {
                                tokio::time::sleep(s.interval).await;
                            }
                            let tok = json!({"model": "smollm2", "choices": [{"index": 0,
                                "delta": {"content": format!("t{i} ")}, "finish_reason": null}]});
                            if send(event(tok)).await.is_err() {
                                return;
                            }
                        }
                        let fin = json!({"model": "smollm2",
                            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                        let _ = send(event(fin)).await;
                        if s.usage {
                            let usage = json!({"model": "smollm2", "choices": [], "usage": {
                                "prompt_tokens": 42, "completion_tokens": s.tokens,
                                "total_tokens": 42 + s.tokens,
                                "prompt_tokens_details": {"cached_tokens": 32}}});
                            let _ = send(event(usage)).await;
                        }
                        let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    });
                    let body = StreamBody::new(tokio_stream_of(rx));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    addr
}

/// The receiver as a stream of frames.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn llm_config(backend: SocketAddr, extra: serde_json::Value) -> String {
    config(extra, &[("v1", 100, vec![backend])])
}

/// A streamed chat completion through the sidecar; with `read_chunks`, the client reads that
/// many body chunks and hangs up.
async fn stream_chat(addr: SocketAddr, read_chunks: Option<usize>) -> (u16, String) {
    let c = client();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("host", "llm")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"smollm2","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut chunks = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
        let Ok(Some(Ok(frame))) = next else { break };
        if let Some(d) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(d));
            chunks += 1;
            if Some(chunks) == read_chunks {
                break;
            }
        }
    }
    (status, text)
}

/// The value of the series `name{labels...}` whose labels include every one of `having`.
fn series(metrics: &str, name: &str, having: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        having
            .iter()
            .all(|h| labels.contains(h))
            .then(|| value.trim().parse().ok())?
    })
}

/// The sidecar's metrics once `want` appears in them (the tally is recorded when the stream's
/// guard is dropped, just after the client saw the end).
async fn metrics_with(s: &infermesh_sidecar::Sidecar, want: &str) -> String {
    polled(async || admin(s, "/metrics").await.1, |m| m.contains(want)).await
}

/// `read()` again every 20 ms until `done` holds of it, for at most 5 s; the last reading.
async fn polled<T>(mut read: impl AsyncFnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = read().await;
        if done(&v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_is_timed_not_the_head_and_usage_is_exact() {
    let backend = model_server(Stream {
        first: Duration::from_millis(300),
        interval: Duration::from_millis(40),
        tokens: 11,
        usage: true,
        stall_after: None,
    })
    .await;
    let s = sidecar(&llm_config(backend, json!({}))).await;
    let (status, text) = stream_chat(s.sidecar.inbound, None).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("data: [DONE]\n\n"), "relayed whole: {text}");
    let m = metrics_with(&s.sidecar, "finish_reason=\"stop\"").await;
    let labels = ["service=\"llm\"", "variant=\"v1\"", "model=\"smollm2\""];
    let one = |name: &str, extra: &[&str]| {
        let mut having = labels.to_vec();
        having.extend_from_slice(extra);
        series(&m, name, &having).unwrap_or_else(|| panic!("{name} {extra:?} in\n{m}"))
    };
    let ttft = one("gen_ai_server_time_to_first_token_seconds_sum", &[]);
    assert!((0.29..0.40).contains(&ttft), "TTFT {ttft}");
    let ttfb = series(&m, "infermesh_time_to_first_byte_seconds_sum", &labels[..2]).unwrap();
    assert!(ttfb < 0.1, "the head came at once: TTFB {ttfb}");
    let tpot = one("gen_ai_server_time_per_output_token_seconds_sum", &[]);
    assert!(
        (0.036..0.044).contains(&tpot),
        "TPOT {tpot} for a 40 ms interval"
    );
    let usage = "gen_ai_client_token_usage_sum";
    assert_eq!(
        one(usage, &["gen_ai_token_type=\"input\"", "counted=\"usage\""]),
        42.0
    );
    assert_eq!(
        one(
            usage,
            &["gen_ai_token_type=\"output\"", "counted=\"usage\""]
        ),
        11.0
    );
    assert_eq!(one("infermesh_llm_cached_input_tokens_total", &[]), 32.0);
    assert_eq!(
        one("infermesh_llm_responses_total", &["finish_reason=\"stop\""]),
        1.0
    );
    let duration = one("gen_ai_server_request_duration_seconds_sum", &[]);
    assert!(duration >= 0.3 + 0.4, "{duration}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_the_output_events_are_counted_and_said_so() {
    let backend = model_server(Stream {
        first: Duration::from_millis(10),
        interval: Duration::from_millis(5),
        tokens: 7,
        usage: false,
        stall_after: None,
    })
    .await;
    let s = sidecar(&llm_config(backend, json!({}))).await;
    assert_eq!(stream_chat(s.sidecar.inbound, None).await.0, 200);
    let m = metrics_with(&s.sidecar, "finish_reason=\"stop\"").await;
    let out = series(
        &m,
        "gen_ai_client_token_usage_sum",
        &["gen_ai_token_type=\"output\"", "counted=\"events\""],
    );
    assert_eq!(out, Some(7.0), "{m}");
    assert!(
        !m.contains("gen_ai_token_type=\"input\""),
        "no usage, no input count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_and_an_idle_timeout_are_counted_as_what_they_are() {
    let slow = Stream {
        first: Duration::from_millis(10),
        interval: Duration::from_millis(50),
        tokens: 40,
        usage: true,
        stall_after: None,
    };
    let backend = model_server(slow).await;
    let s = sidecar(&llm_config(backend, json!({}))).await;
    // The role chunk and two tokens, then the client hangs up.
    let (status, _) = stream_chat(s.sidecar.inbound, Some(3)).await;
    assert_eq!(status, 200);
    let m = metrics_with(&s.sidecar, "finish_reason=\"aborted\"").await;
    assert_eq!(
        series(
            &m,
            "infermesh_llm_responses_total",
            &["finish_reason=\"aborted\""]
        ),
        Some(1.0),
        "{m}"
    );
    // A stream that stalls past the idle timeout is cut: an error, not a 2xx.
    let stalled = model_server(Stream {
        stall_after: Some(2),
        ..slow
    })
    .await;
    let s = sidecar(&llm_config(stalled, json!({"timeouts": {"idleMs": 200}}))).await;
    let (status, text) = stream_chat(s.sidecar.inbound, None).await;
    assert_eq!(status, 200, "the head was sent before the stall");
    assert!(text.contains("t1 ") && !text.contains("[DONE]"), "{text}");
    let m = metrics_with(&s.sidecar, "finish_reason=\"cut\"").await;
    assert_eq!(
        series(
            &m,
            "infermesh_llm_responses_total",
            &["finish_reason=\"cut\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "infermesh_requests_total", &["class=\"5xx\""]),
        Some(1.0)
    );
    assert_eq!(
        series(&m, "infermesh_requests_total", &["class=\"2xx\""]),
        Some(0.0)
    );
    let v = stats_with(&s.sidecar, 1).await;
    assert_eq!(
        v["failures"], 1,
        "a cut stream is a failure in /stats too: {v}"
    );
}

/// The variant `variant` of `llm` in the sidecar's `/stats` once it counts `requests`.
async fn stats_with(s: &infermesh_sidecar::Sidecar, requests: u64) -> serde_json::Value {
    let read = async || {
        let (status, body) = admin(s, "/stats?since=1m").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["variants"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["service"] == "llm").cloned())
            .unwrap_or_else(|| panic!("llm in {v}"))
    };
    polled(read, |v| v["requests"] == requests).await
}

/// The count of `hist` (`{bounds, counts}`) in the bucket whose upper bound is `bound`.
fn in_bucket(hist: &serde_json::Value, bound: f64) -> u64 {
    let i = hist["bounds"]
        .as_array()
        .unwrap()
        .iter()
        .position(|b| b.as_f64() == Some(bound))
        .unwrap();
    hist["counts"][i].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_window_sums_the_streams_this_sidecar_routed() {
    let backend = model_server(Stream {
        first: Duration::from_millis(300),
        interval: Duration::from_millis(40),
        tokens: 11,
        usage: true,
        stall_after: None,
    })
    .await;
    let s = sidecar(&llm_config(backend, json!({}))).await;
    let idle = stats_with(&s.sidecar, 0).await;
    assert_eq!(idle["requests"], 0, "{idle}");
    let streams = (0..3).map(|_| stream_chat(s.sidecar.inbound, None));
    for (status, _) in futures::future::join_all(streams).await {
        assert_eq!(status, 200);
    }
    let v = stats_with(&s.sidecar, 3).await;
    assert_eq!(v["variant"], "v1");
    assert_eq!(
        (v["requests"].as_u64(), v["failures"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    assert_eq!(v["outputTokens"], 33, "usage's completion tokens: {v}");
    assert_eq!(v["inFlight"], 0);
    assert_eq!(in_bucket(&v["ttft"], 0.5), 3, "300 ms first tokens: {v}");
    assert_eq!(in_bucket(&v["tpot"], 0.05), 3, "40 ms intervals: {v}");
    // The same requests in Prometheus, counted once by the sidecar the client called.
    let (_, m) = admin(&s.sidecar, "/metrics").await;
    assert_eq!(
        series(
            &m,
            "infermesh_routed_requests_total",
            &["variant=\"v1\"", "class=\"2xx\""]
        ),
        Some(3.0),
        "{m}"
    );
    let seconds = v["seconds"].as_f64().unwrap();
    assert!(
        seconds > 0.0 && seconds < 60.0,
        "a young variant: {seconds}"
    );
}
