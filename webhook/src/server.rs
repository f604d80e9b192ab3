//! The HTTPS server: `POST /mutate` (AdmissionReview v1), and the probe convention every infermesh
//! binary shares: `GET /live`, `GET /ready`, `GET /metrics`.
//!
//! TLS by rustls with a swappable certificate; HTTP/1.1 and HTTP/2 (the API server speaks
//! either). On shutdown it stops accepting and lets in-flight reviews finish, bounded in time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use infermesh_admin::{LIVE_PATH, METRICS_PATH, READY_PATH, openmetrics_response};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::{InjectorConfig, NamespaceInfo};
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;
use crate::review;
use crate::tls::CertResolver;

/// The API server sends one pod per review; 8 MiB leaves room for very large pod specs.
const MAX_BODY: usize = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub injector: InjectorConfig,
    pub namespaces: NamespaceCache,
    pub metrics: Metrics,
    pub resolver: Arc<CertResolver>,
}

/// Serves until `shutdown` completes, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    futures::pin_mut!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req| handle(req, state.clone()));
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(req, &state).await,
        (_, "/mutate") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with an AdmissionReview body\n",
        ),
        (&Method::GET, LIVE_PATH) => text(StatusCode::OK, "live\n"),
        (&Method::GET, READY_PATH) => ready(&state),
        (&Method::GET, METRICS_PATH) => openmetrics_response(state.metrics.encode()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try POST /mutate, GET /live, GET /ready or GET /metrics\n",
        ),
    };
    Ok(resp)
}

async fn mutate(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            state
                .metrics
                .observe("bad_request", start.elapsed().as_secs_f64());
            return text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}\n"),
            );
        }
    };
    let request = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .observe("bad_request", start.elapsed().as_secs_f64());
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let ns = match review::namespace_of(&request) {
        Some(name) => match state.namespaces.info(name).await {
            Ok(ns) => ns,
            Err(e) => {
                // The failurePolicy decides: Fail where injection was asked, Ignore elsewhere.
                tracing::warn!(error = %e, "review failed");
                state
                    .metrics
                    .observe("error", start.elapsed().as_secs_f64());
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{e}; retry shortly\n"),
                );
            }
        },
        None => NamespaceInfo::default(),
    };
    let (answer, label) = review::respond(&request, &ns, &state.injector);
    if label == "injected" || label.starts_with("skipped") {
        tracing::debug!(namespace = %ns.name, name = %request.name, decision = label, "review answered");
    }
    let resp = match review::to_json(&answer) {
        Ok(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response failed: {e}\n"),
        ),
    };
    state.metrics.observe(label, start.elapsed().as_secs_f64());
    resp
}

/// Ready once reviews can be answered right: a certificate to serve and the namespaces' inject
/// annotations known. (`/live` stays 200 meanwhile: waiting for either is no reason to restart.)
fn ready(state: &AppState) -> Response<Full<Bytes>> {
    match (state.resolver.is_loaded(), state.namespaces.is_ready()) {
        (true, true) => text(StatusCode::OK, "ready\n"),
        (false, _) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate loaded yet\n",
        ),
        (_, false) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "namespace cache not synced yet\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
