//! The HTTP client: one pooled hyper client (names resolved by the system resolver through
//! getaddrinfo, which musl answers from /etc/resolv.conf), and sending a `RequestSpec`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::cli::RequestSpec;

/// Header the sample model server uses to name the version that answered.
pub const VERSION_HEADER: &str = "x-model-version";

/// The pooled client every command uses; cheap to clone.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Why a request failed before a complete response arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "request to {uri} failed: {detail}; check the host name, port and that the server runs"
    )]
    Request { uri: String, detail: String },
    #[error("reading the response body from {uri} failed: {detail}")]
    Body { uri: String, detail: String },
    #[error(
        "no complete answer from {uri} within {timeout:?}; raise --timeout-secs or check the server"
    )]
    Timeout { uri: String, timeout: Duration },
}

/// The error and all its causes on one line (hyper's own messages alone say little).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Builds the client: TCP_NODELAY, a connect timeout, idle connections closed after 30 s.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A request built from `spec`.
pub fn build_request(spec: &RequestSpec) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(spec.body.clone().unwrap_or_default()));
    *req.method_mut() = spec.method.clone();
    *req.uri_mut() = spec.uri.clone();
    *req.headers_mut() = spec.headers.clone();
    req
}

/// Sends `spec` and returns the response head with its body still unread.
pub async fn send(
    client: &HttpClient,
    spec: &RequestSpec,
) -> Result<Response<Incoming>, SendError> {
    client
        .request(build_request(spec))
        .await
        .map_err(|e| SendError::Request {
            uri: spec.uri.to_string(),
            detail: chain(&e),
        })
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct FullResponse {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl FullResponse {
    /// The `x-model-version` header, if present and text.
    pub fn model_version(&self) -> Option<&str> {
        model_version(&self.headers)
    }

    /// `HTTP/1.1 200 OK`
    pub fn status_line(&self) -> String {
        format!("{:?} {}", self.version, self.status)
    }
}

/// The `x-model-version` header of `headers`, if present and text.
pub fn model_version(headers: &HeaderMap) -> Option<&str> {
    headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok())
}

/// Sends `spec` and reads the whole body, within `spec.timeout`.
pub async fn fetch(client: &HttpClient, spec: &RequestSpec) -> Result<FullResponse, SendError> {
    let work = async {
        let resp = send(client, spec).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Body {
                uri: spec.uri.to_string(),
                detail: chain(&e),
            })?
            .to_bytes();
        Ok(FullResponse {
            version: parts.version,
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| SendError::Timeout {
            uri: spec.uri.to_string(),
            timeout: spec.timeout,
        })?
}
