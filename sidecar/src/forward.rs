//! Sending one try upstream: pooled hyper clients built once (HTTP/1.1, and HTTP/2 with prior
//! knowledge for `HTTP2`/`GRPC` services), and the upstream request built from the prepared head.

use std::time::Duration;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use infermesh_crds::mesh::{Protocol, ROUTED_HEADER};

use crate::body::ReqBody;

pub static ROUTED: http::HeaderName = http::HeaderName::from_static(ROUTED_HEADER);

#[derive(Clone)]
pub struct Upstream {
    h1: Client<HttpConnector, ReqBody>,
    h2: Client<HttpConnector, ReqBody>,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector);
        Self { h1, h2 }
    }

    pub fn send(&self, protocol: Protocol, req: Request<ReqBody>) -> ResponseFuture {
        match protocol {
            Protocol::Http => self.h1.request(req),
            Protocol::Http2 | Protocol::Grpc => self.h2.request(req),
        }
    }
}

/// The upstream request for one try: the prepared head aimed at `authority`, with the routed
/// marker when the endpoint is a meshed peer. The headers are cloned only when more tries may
/// follow (`last` false); the last try takes them.
pub fn build(
    head: &mut Parts,
    last: bool,
    protocol: Protocol,
    authority: &Authority,
    routed: Option<&HeaderValue>,
    body: ReqBody,
) -> Request<ReqBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(
        head.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    *req.headers_mut() = if last {
        std::mem::take(&mut head.headers)
    } else {
        head.headers.clone()
    };
    let h2 = protocol != Protocol::Http;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if h2 {
        // :authority carries the endpoint; a Host header would contradict it.
        req.headers_mut().remove(http::header::HOST);
    }
    if let Some(r) = routed {
        req.headers_mut().insert(ROUTED.clone(), r.clone());
    }
    req
}
