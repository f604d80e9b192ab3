//! The HTTP server: routing, injected latency and errors, completion answers (whole or streamed
//! as SSE) from the simulated engine, `/metrics`, and the accept loop with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
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
use crate::engine::{self, Engine, SubmitError};
use crate::openai::{self, Endpoint, Meta, Usage};
use crate::sampler::{self, Sampler, StopSpec};
use crate::sse::{self, ChannelBody};
use crate::tokenizer;

/// Header naming the version that answered; on every response.
pub const VERSION_HEADER: &str = "x-model-version";
/// Header naming the pod that answered; on every response.
pub const POD_HEADER: &str = "x-model-pod";
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Answer length when the request gives no `max_tokens` (OpenAI's legacy completions default).
const DEFAULT_MAX_TOKENS: usize = 16;
/// The token an empty prompt runs on.
const BOS: &str = "<s>";

/// Body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// What handlers share: the settings, the engine, and counters for response ids and injected
/// errors.
pub struct State {
    config: Config,
    engine: Engine,
    next_id: AtomicU64,
    next_request: AtomicU64,
}

impl State {
    /// Settings and a started engine (needs a tokio runtime).
    pub fn new(config: Config) -> Self {
        let engine = Engine::start(&config.engine);
        Self {
            config,
            engine,
            next_id: AtomicU64::new(1),
            next_request: AtomicU64::new(0),
        }
    }

    /// Whether request number `n` gets an injected error: a seeded draw, so a run with the
    /// same `--seed` and request order fails the same requests.
    fn inject_error(&self) -> bool {
        let rate = self.config.error_rate;
        if rate <= 0.0 {
            return false;
        }
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        let draw = tokenizer::mix(self.config.engine.seed ^ tokenizer::mix(n ^ 0xe7707));
        ((draw >> 11) as f64) / ((1u64 << 53) as f64) < rate
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

fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
) -> Response<ResponseBody> {
    json_response(
        status,
        &openai::error_body(kind, message, param, status.as_u16()),
    )
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
        "/health" | "/metrics" => ("GET, HEAD", None),
        "/" | "/v1/models" => ("GET, HEAD", None),
        "/v1/completions" => ("POST", Some(Endpoint::Completions)),
        "/v1/chat/completions" => ("POST", Some(Endpoint::ChatCompletions)),
        _ => {
            let reason = format!(
                "no route for {path}: try /health, /metrics, /, /v1/models, /v1/completions or /v1/chat/completions"
            );
            return error_response(StatusCode::NOT_FOUND, "not_found", &reason, None);
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
            None,
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        return resp;
    }
    let cfg = &state.config;
    // Health and metrics are never delayed nor failed: probes and scrapes must see the truth.
    if path == "/health" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    if path == "/metrics" {
        let text = state.engine.metrics().render(&cfg.model);
        return full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(text),
        );
    }

    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if state.inject_error() {
        let reason = format!(
            "injected error: this server answers {:.0}% of requests with {} (--error-rate {})",
            cfg.error_rate * 100.0,
            cfg.error_status.as_u16(),
            cfg.error_rate
        );
        return error_response(cfg.error_status, "injected_error", &reason, None);
    }

    let Some(endpoint) = endpoint else {
        let body = if path == "/" {
            json!({"version": cfg.version, "pod": cfg.pod, "model": cfg.model})
        } else {
            models(cfg)
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
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &reason,
                None,
            );
        }
    };
    let request = match openai::parse_request(endpoint, &body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &e.to_string(),
                e.param(),
            );
        }
    };
    complete(state, endpoint, request).await
}

/// `/v1/models`: the base model, then each LoRA adapter with the base as `parent` (as vLLM).
fn models(cfg: &Config) -> Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let max_len = cfg.engine.max_model_len;
    let mut data = vec![json!({
        "id": cfg.model, "object": "model", "created": created, "owned_by": "infermesh",
        "root": cfg.model, "parent": null, "max_model_len": max_len,
    })];
    for lora in &cfg.engine.loras {
        data.push(json!({
            "id": lora, "object": "model", "created": created, "owned_by": "infermesh",
            "root": lora, "parent": cfg.model, "max_model_len": max_len,
        }));
    }
    json!({"object": "list", "data": data})
}

/// The answer to a completion request: resolve the model, tokenize, check the context length,
/// queue on the engine, then answer whole or stream the tokens as the engine produces them.
async fn complete(
    state: &State,
    endpoint: Endpoint,
    request: openai::CompletionRequest,
) -> Response<ResponseBody> {
    let cfg = &state.config;
    let ecfg = &cfg.engine;
    let arrival = tokio::time::Instant::now();
    let (model, lora) = match request.model.as_deref() {
        None => (cfg.model.clone(), None),
        Some(m) if m == cfg.model => (cfg.model.clone(), None),
        // Without adapters the name is not checked (any name is the base model, as before the
        // simulator, so clients with another default name keep working); with adapters it
        // selects one, and an unknown name is refused as vLLM does.
        Some(_) if ecfg.loras.is_empty() => (cfg.model.clone(), None),
        Some(m) => match state.engine.lora_index(m) {
            Some(i) => (m.to_owned(), Some(i)),
            None => {
                let reason = format!("The model `{m}` does not exist.");
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    &reason,
                    Some("model"),
                );
            }
        },
    };
    let mut prompt: Vec<u64> = tokenizer::tokenize(&request.prompt)
        .into_iter()
        .map(|t| t.id)
        .collect();
    if prompt.is_empty() {
        // An empty prompt still runs on the beginning-of-sequence token, as with a real tokenizer.
        prompt.push(tokenizer::token_id(BOS));
    }
    let prompt_len = prompt.len();
    let room = ecfg.max_model_len.saturating_sub(prompt_len);
    let max_tokens = request
        .max_tokens
        .map_or(DEFAULT_MAX_TOKENS.min(room), |m| m as usize);
    if prompt_len >= ecfg.max_model_len || max_tokens > room {
        let (what, param) = match endpoint {
            Endpoint::Completions => ("prompt", "prompt"),
            Endpoint::ChatCompletions => ("messages", "messages"),
        };
        let param = if prompt_len < ecfg.max_model_len {
            "max_tokens"
        } else {
            param
        };
        let reason = format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). Please reduce the length of the {what} or completion.",
            ecfg.max_model_len,
            prompt_len + max_tokens
        );
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &reason,
            Some(param),
        );
    }
    // An adapter answers the same prompt differently from the base model.
    let server_seed = lora.map_or(ecfg.seed, |l| tokenizer::mix(ecfg.seed ^ (l as u64 + 1)));
    let seed = sampler::request_seed(server_seed, request.seed, &prompt);
    let stop = StopSpec {
        stop: request.stop.clone(),
        min_tokens: request.min_tokens as usize,
        ignore_eos: request.ignore_eos,
    };
    let sampler = Sampler::new(
        ecfg.mode,
        &request.echo,
        seed,
        ecfg.mean_output_tokens,
        stop,
    );
    let submitted = state.engine.submit(engine::Request {
        prompt,
        max_tokens,
        lora,
        sampler,
        arrival,
    });
    let mut outputs = match submitted {
        Ok(rx) => rx,
        Err(e @ SubmitError::QueueFull(_)) => {
            let reason = format!("{e}: retry later (--max-waiting)");
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                &reason,
                None,
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
        Err(e @ SubmitError::Stopped) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                &e.to_string(),
                None,
            );
        }
    };

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
        model,
    };
    if !request.stream {
        let mut text = String::new();
        while let Some(out) = outputs.recv().await {
            if let Some(t) = &out.text {
                text.push_str(t);
            }
            if let Some(f) = out.finish {
                let value = openai::response(endpoint, &meta, &text, f.reason.as_str(), usage(f));
                return json_response(StatusCode::OK, &value);
            }
        }
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_stopped",
            "the engine stopped before the answer was complete",
            None,
        );
    }

    // Capacity 1: the producer runs at most one event ahead of the socket.
    let (tx, body) = ChannelBody::new(1);
    let interval = cfg.token_interval;
    let include_usage = request.include_usage;
    tokio::spawn(async move {
        // --token-interval-ms: at most one token per interval, the first one interval in.
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut first = true;
        while let Some(out) = outputs.recv().await {
            if out.text.is_some()
                && let Some(t) = ticker.as_mut()
            {
                t.tick().await;
            }
            let reason = out.finish.map(|f| f.reason.as_str());
            let text = out.text.as_deref().unwrap_or("");
            let chunk = openai::chunk(endpoint, &meta, text, first, reason, include_usage);
            first = false;
            if tx.send(sse::event(&chunk)).await.is_err() {
                return; // client went away; dropping `outputs` aborts the request
            }
            if let Some(f) = out.finish {
                if include_usage {
                    let chunk = openai::usage_chunk(endpoint, &meta, usage(f));
                    if tx.send(sse::event(&chunk)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Bytes::from_static(sse::DONE)).await;
                return;
            }
        }
        // The engine stopped mid-answer: end the stream without [DONE], so clients see it cut.
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

fn usage(f: engine::Finish) -> Usage {
    Usage {
        prompt_tokens: f.prompt_tokens,
        completion_tokens: f.completion_tokens,
        cached_tokens: f.cached_tokens,
    }
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
