//! The admin port (15020): `/live` (always 200 while the process serves), `/ready` (503 until a
//! config is loaded and the listeners are up, and again while draining), `/metrics` (Prometheus
//! text) and `/config` (the config in force, with its revision, as JSON).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use infermesh_admin::{LIVE_PATH, METRICS_PATH, READY_PATH, openmetrics_response};

use crate::config::store::ConfigStore;
use crate::request::body::ResponseBody;

pub(crate) struct Admin {
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) listeners_up: AtomicBool,
    pub(crate) draining: AtomicBool,
}

impl Admin {
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
        }
        Ok(match req.uri().path() {
            LIVE_PATH => text(StatusCode::OK, "live\n"),
            READY_PATH => {
                if self.draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
                } else if !self.store.is_loaded() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no mesh config loaded yet\n",
                    )
                } else if !self.listeners_up.load(Ordering::Acquire) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: listeners not up\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            METRICS_PATH => openmetrics_response(self.store.metrics.encode()),
            "/config" => {
                let t = self.store.current();
                let body = serde_json::json!({
                    "revision": t.revision,
                    "loaded": self.store.is_loaded(),
                    "config": t.config,
                    "refused": t.refused,
                });
                let mut r = text(StatusCode::OK, body.to_string());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown path: try /ready, /live, /metrics, /config\n",
            ),
        })
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
