//! The HTTP server: routing, injected latency and errors, completion answers (whole or streamed
//! as SSE), and the accept loop with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::openai::{self, Endpoint, Meta};
use crate::sse::{self, ChannelBody};
use crate::tokens;

/// Header naming the version that answered; on every response.
pub const VERSION_HEADER: &str = "x-model-version";
/// Header naming the pod that answered; on every response.
pub const POD_HEADER: &str = "x-model-pod";
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// What handlers share: the settings and a counter for response ids.
pub struct State {
    config: Config,
    next_id: AtomicU64,
}

impl State {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_id: AtomicU64::new(1),
        }
    }
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(body).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    full(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<ResponseBody> {
    json_response(status, &openai::error_body(kind, message, status.as_u16()))
}

/// Routes a request; every response carries the version and pod headers.
pub async fn handle<B>(
    state: Arc<State>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, Infallible>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut resp = route(&state, req).await;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.config.version) {
        headers.insert(VERSION_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&state.config.pod) {
        headers.insert(POD_HEADER, v);
    }
    Ok(resp)
}

async fn route<B>(state: &State, req: Request<B>) -> Response<ResponseBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path();
    let (allowed, endpoint) = match path {
        "/health" => ("GET, HEAD", None),
        "/" | "/v1/models" => ("GET, HEAD", None),
        "/v1/completions" => ("POST", Some(Endpoint::Completions)),
        "/v1/chat/completions" => ("POST", Some(Endpoint::ChatCompletions)),
        _ => {
            let reason = format!(
                "no route for {path}: try /health, /, /v1/models, /v1/completions or /v1/chat/completions"
            );
            return error_response(StatusCode::NOT_FOUND, "not_found", &reason);
        }
    };
    let method_ok = match endpoint {
        Some(_) => req.method() == Method::POST,
        None => req.method() == Method::GET || req.method() == Method::HEAD,
    };
    if !method_ok {
        let reason = format!("{} is not allowed on {path}; use {allowed}", req.method());
        let mut resp = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &reason,
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        return resp;
    }
    if path == "/health" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }

    let cfg = &state.config;
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if cfg.error_rate > 0.0 && rand::random::<f64>() < cfg.error_rate {
        let reason = format!(
            "injected error: this server answers {:.0}% of requests with {} (--error-rate {})",
            cfg.error_rate * 100.0,
            cfg.error_status.as_u16(),
            cfg.error_rate
        );
        return error_response(cfg.error_status, "injected_error", &reason);
    }

    let Some(endpoint) = endpoint else {
        let body = if path == "/" {
            json!({"version": cfg.version, "pod": cfg.pod, "model": cfg.model})
        } else {
            json!({"object": "list", "data": [{"id": cfg.model, "object": "model", "owned_by": "infermesh"}]})
        };
        return json_response(StatusCode::OK, &body);
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let reason =
                format!("could not read the request body (limit {MAX_BODY_BYTES} bytes): {e}");
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &reason);
        }
    };
    let request = match openai::parse_request(endpoint, &body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &e.to_string(),
            );
        }
    };
    complete(state, endpoint, request)
}

fn complete(
    state: &State,
    endpoint: Endpoint,
    request: openai::CompletionRequest,
) -> Response<ResponseBody> {
    let cfg = &state.config;
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::ChatCompletions => "chatcmpl",
    };
    let meta = Meta {
        id: format!("{prefix}-{}-{n}", cfg.version),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: cfg.model.clone(),
    };
    let tokens = tokens::generate(&request.prompt, request.max_tokens);
    if !request.stream {
        let value = openai::response(endpoint, &meta, &tokens, tokens::count(&request.prompt));
        return json_response(StatusCode::OK, &value);
    }

    // Capacity 1: the producer runs at most one event ahead of the socket.
    let (tx, body) = ChannelBody::new(1);
    let interval = cfg.token_interval;
    tokio::spawn(async move {
        let total = tokens.len();
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        for (i, token) in tokens.iter().enumerate() {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let chunk = openai::chunk(endpoint, &meta, token, i, total);
            if tx.send(sse::event(&chunk)).await.is_err() {
                return; // client went away
            }
        }
        let _ = tx.send(Bytes::from_static(sse::DONE)).await;
    });
    let mut resp = Response::new(body.boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

/// Serves `listener` until `shutdown` completes, then waits for in-flight requests (at most the
/// configured grace) and returns.
pub async fn serve(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    let grace = config.shutdown_grace;
    let state = Arc::new(State::new(config));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small SSE writes must leave at once.
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let svc = service_fn(move |req| handle(state.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down, draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over, exiting with connections open"),
    }
}
