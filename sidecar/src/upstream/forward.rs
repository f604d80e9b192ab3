//! Sending one try upstream: HTTP/1.1 over the endpoint's own keep-alive connections (`pool`),
//! HTTP/2 with prior knowledge (`HTTP2`/`GRPC` services) over one pooled multiplexing client; and
//! the upstream request built from the prepared head.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use infermesh_crds::mesh::{Protocol, ROUTED_HEADER};

use super::body::RequestBody;
use super::pool::{ConnPool, Lent, SendError};
use super::replay::ReplayPool;

pub(crate) static ROUTED: http::HeaderName = http::HeaderName::from_static(ROUTED_HEADER);

#[derive(Clone)]
pub(crate) struct Upstream {
    h2: Client<HttpConnector, RequestBody>,
    connect_timeout: Duration,
    /// Longest silence between two frames of a client's request body sent upstream.
    pub(crate) body_idle: Duration,
    /// The sidecar-wide cap on bodies kept for retries.
    pub(crate) replay: Arc<ReplayPool>,
}

impl Upstream {
    pub(crate) fn new(connect_timeout: Duration, body_idle: Duration, replay_cap: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector);
        Self {
            h2,
            connect_timeout,
            body_idle,
            replay: ReplayPool::new(replay_cap),
        }
    }

    /// Sends one try to the address of `conns`. An HTTP/1.1 response comes with the connection it
    /// arrived on, to give back once its body is read. (Not an `async fn`: see `bound`.)
    ///
    /// Boxed: a request waiting for a concurrency slot does not need the send's state (about
    /// 1.3 KiB), and under load thousands of requests may be waiting.
    pub(crate) fn send<'a>(
        &'a self,
        protocol: Protocol,
        conns: &'a Arc<ConnPool>,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Lent>), SendError>> + 'a {
        type Sent = Result<(Response<Incoming>, Option<Lent>), SendError>;
        Box::pin(match protocol {
            Protocol::Http => Either::Left(conns.send(req, self.connect_timeout).map(
                (|r: Result<(Response<Incoming>, Lent), SendError>| {
                    r.map(|(resp, lent)| (resp, Some(lent)))
                }) as fn(_) -> Sent,
            )),
            Protocol::Http2 | Protocol::Grpc => Either::Right(
                self.h2
                    .request(req)
                    .map((|r: Result<Response<Incoming>, _>| Ok((r?, None))) as fn(_) -> Sent),
            ),
        })
    }
}

/// The upstream request for one try: the prepared head aimed at `authority`, with the routed
/// marker when the endpoint is a meshed peer. The headers are cloned only when more tries may
/// follow (`last` false); the last try takes them.
pub(crate) fn build(
    head: &mut Parts,
    last: bool,
    protocol: Protocol,
    authority: &Authority,
    routed: Option<HeaderValue>,
    body: RequestBody,
) -> Request<RequestBody> {
    let h2 = protocol != Protocol::Http;
    let path = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    // HTTP/1.1 goes out on a connection already aimed at the endpoint: origin-form, Host kept.
    // HTTP/2 names the endpoint in :authority, which hyper takes from an absolute URI.
    *req.uri_mut() = if h2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.clone());
        uri.path_and_query = Some(path);
        Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"))
    } else {
        Uri::from(path)
    };
    *req.headers_mut() = if last {
        std::mem::take(&mut head.headers)
    } else {
        head.headers.clone()
    };
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if h2 {
        // :authority carries the endpoint; a Host header would contradict it.
        req.headers_mut().remove(http::header::HOST);
    } else if !req.headers().contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    if let Some(r) = routed {
        req.headers_mut().insert(ROUTED.clone(), r);
    }
    req
}
