//! Every way a request can fail, and the one place that turns a failure into the response a client
//! sees: a status, an `x-infermesh-reason` header with a short stable token, and a one-line body
//! saying what failed.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use crate::upstream::body::ClientBodyError;

/// Header naming why the sidecar answered itself.
pub(crate) const REASON_HEADER: &str = "x-infermesh-reason";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the request names no ModelService: send a Host header or an absolute URI")]
    NoHost,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error(
        "protocol upgrades (WebSocket and others) are not relayed; send plain HTTP/1.1 or HTTP/2"
    )]
    Upgrade,
    #[error("no ModelService matches host {0:?} in the mesh config in force")]
    UnknownService(String),
    #[error("ModelService {service:?} is not in force in this sidecar: {reason}")]
    Refused { service: String, reason: String },
    #[error("the mesh config has not been loaded yet; retry shortly")]
    NotReady,
    #[error("ModelService {0:?} has no variant with weight > 0 for this request")]
    NoVariant(String),
    #[error("ModelService {service:?} variant {variant:?} has no ready endpoint")]
    NoEndpoint { service: String, variant: String },
    #[error("overloaded: every slot and queue place is taken; retry after {}s", .retry_after.as_secs())]
    Overloaded { retry_after: Duration },
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream failed: {0}")]
    Upstream(String),
    #[error("could not read the request body: {0}")]
    RequestBody(String),
    #[error("the request body stalled for {}s; send it without pauses", .0.as_secs_f64())]
    RequestBodyTimeout(Duration),
    #[error(
        "{0} sidecars in a row routed this request without one proving its marker to the next: \
         their mesh keys disagree (check that the Secret infermesh-mesh-key exists and this \
         namespace's service accounts may read it)"
    )]
    RoutingLoop(u32),
}

impl From<&ClientBodyError> for ProxyError {
    fn from(e: &ClientBodyError) -> Self {
        match e {
            ClientBodyError::Idle(d) => ProxyError::RequestBodyTimeout(*d),
            ClientBodyError::Failed(cause) => ProxyError::RequestBody(error_chain(cause)),
        }
    }
}

impl ProxyError {
    /// The reason of [`ProxyError::Connect`]: from a peer sidecar, its local model is unreachable.
    pub(crate) const CONNECT_REASON: &'static str = "upstream-unreachable";

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHost
            | ProxyError::Malformed(_)
            | ProxyError::Upgrade
            | ProxyError::RequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::NotReady
            | ProxyError::Refused { .. }
            | ProxyError::NoVariant(_)
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::RoutingLoop(_) => StatusCode::LOOP_DETECTED,
        }
    }

    /// Short, stable token for `x-infermesh-reason`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoHost => "missing-host",
            ProxyError::Malformed(_) => "malformed-request",
            ProxyError::Upgrade => "upgrade-unsupported",
            ProxyError::UnknownService(_) => "unknown-service",
            ProxyError::NotReady => "config-not-loaded",
            ProxyError::Refused { .. } => "service-refused",
            ProxyError::NoVariant(_) => "no-variant",
            ProxyError::NoEndpoint { .. } => "no-ready-endpoint",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::Timeout => "upstream-timeout",
            ProxyError::Connect(_) => Self::CONNECT_REASON,
            ProxyError::Upstream(_) => "upstream-failed",
            ProxyError::RequestBody(_) => "request-body",
            ProxyError::RequestBodyTimeout(_) => "request-body-timeout",
            ProxyError::RoutingLoop(_) => "routing-loop",
        }
    }

    pub(crate) fn into_response(self) -> Response<ResponseBody> {
        let mut r = Response::new(ResponseBody::full(Bytes::from(format!("{self}\n"))));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let ProxyError::Overloaded { retry_after } = self {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        r
    }
}

/// An error with its causes, for logs and reasons.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_statuses_and_reasons() {
        let cases = [
            (
                ProxyError::UnknownService("x".into()),
                404,
                "unknown-service",
            ),
            (
                ProxyError::NoEndpoint {
                    service: "s".into(),
                    variant: "v".into(),
                },
                503,
                "no-ready-endpoint",
            ),
            (ProxyError::Malformed("bad"), 400, "malformed-request"),
            (ProxyError::Timeout, 504, "upstream-timeout"),
        ];
        for (e, status, reason) in cases {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[REASON_HEADER], reason);
        }
        let r = ProxyError::Overloaded {
            retry_after: Duration::from_millis(300),
        }
        .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
