//! The request path, shared by the inbound (15006) and outbound (15001) listeners, top to bottom:
//!
//! 1. a request marked `x-infermesh-routed` by a peer sidecar (inbound only) goes straight to the
//!    local model ([`Proxy::deliver_local`]);
//! 2. identify the ModelService (`identify`);
//! 3. choose the variant: routes, sticky cohort, weights (`route`);
//! 4. prepare the head: hop-by-hop headers, forwarding headers, request id (`headers`);
//! 5. the try loop (`retry`, [`Proxy::dispatch`]): pick an endpoint (`balance`), take a concurrency slot
//!    (`limit`), send (`forward`), classify the outcome, feed outlier detection, and retry within
//!    the budget (`budget`) with backoff;
//! 6. stream the response back untouched (`body`), timing it and releasing its slot at the end;
//!    its head and small chunks are copied off hyper's read buffers first (`detach`).
//!
//! Failures become responses in one place (`errors`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use infermesh_crds::mesh::Protocol;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::body::{ProxyBody, ReqBody};
use crate::bound::{until, within_opt};
use crate::endpoint::{EjectionPolicy, EwmaPolicy, InFlight};
use crate::errors::ProxyError;
use crate::forward::{self, ROUTED, Upstream};
use crate::headers::{Forwarding, ensure_request_id, strip_hop_by_hop};
use crate::pool::Lent;
use crate::retry::error_chain;
use crate::store::ConfigStore;
use crate::table::{Service, Variant};
use crate::{detach, identify};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What the request path knows about the client connection.
pub struct ConnInfo {
    pub direction: Direction,
    pub forwarding: Forwarding,
}

pub struct Proxy {
    pub store: Arc<ConfigStore>,
    pub upstream: Upstream,
    pub ejection: EjectionPolicy,
    pub ewma: EwmaPolicy,
}

/// One request's bookkeeping, released when the response stream ends (or the client leaves):
/// in-flight gauge, latency histogram, the endpoint's in-flight count and concurrency slot, and
/// the upstream connection, which goes back to its pool only after a complete response.
pub struct RequestGuard {
    service: Arc<Service>,
    variant: Option<usize>,
    start: Instant,
    in_flight: Option<InFlight>,
    permit: Option<OwnedSemaphorePermit>,
    conn: Option<Lent>,
}

impl RequestGuard {
    fn new(service: Arc<Service>, variant: Option<usize>) -> Self {
        if let Some(v) = variant {
            service.variants[v].metrics.in_flight.inc();
        }
        Self {
            service,
            variant,
            start: Instant::now(),
            in_flight: None,
            permit: None,
            conn: None,
        }
    }

    /// Keeps what the chosen try holds until the response ends.
    pub(crate) fn hold(
        &mut self,
        in_flight: InFlight,
        permit: Option<OwnedSemaphorePermit>,
        conn: Option<Lent>,
    ) {
        self.in_flight = Some(in_flight);
        self.permit = permit;
        self.conn = conn;
    }

    /// The response body was read to the end: its connection can serve another request.
    pub(crate) fn complete(mut self) {
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }

    fn variant(&self) -> Option<&Variant> {
        self.variant.map(|v| &self.service.variants[v])
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.in_flight.take();
        self.permit.take();
        self.conn.take();
        if let Some(v) = self.variant.map(|v| &self.service.variants[v]) {
            v.metrics.in_flight.dec();
            v.metrics
                .latency
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Proxy {
    /// Entry point of both listeners.
    ///
    /// The request is split before the future is built, and the steps below borrow its head: a
    /// request waiting for a concurrency slot is this future, and an `async fn` would hold both
    /// the request it was given and the parts taken from it.
    pub fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let (mut head, body) = req.into_parts();
        let routed = head.headers.remove(&ROUTED);
        async move {
            if head.method == Method::CONNECT {
                return Ok(ProxyError::Malformed(
                    "CONNECT tunnels are not supported; send plain HTTP",
                )
                .into_response());
            }
            Ok(match routed {
                Some(r) if conn.direction == Direction::Inbound => {
                    self.deliver_local(&r, &mut head, body, &conn).await
                }
                _ => self.route(&mut head, body, &conn).await,
            })
        }
    }

    /// Steps 2-6 for a request that still needs routing.
    async fn route(
        &self,
        head: &mut Parts,
        body: Incoming,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        if !self.store.is_loaded() {
            return ProxyError::NotReady.into_response();
        }
        let svc = {
            let table = self.store.load();
            match identify::service(&table, head) {
                Ok(s) => s.clone(),
                Err(e) => return e.into_response(),
            }
        };
        let Some(vi) = svc.select_variant(head.uri.path(), &head.headers) else {
            return ProxyError::NoVariant(svc.name.clone()).into_response();
        };
        let mut guard = RequestGuard::new(svc.clone(), Some(vi));
        prepare_head(head, conn, svc.protocol);
        let deadline = svc
            .timeouts
            .request
            .and_then(|d| Instant::now().checked_add(d));
        let result = until(deadline, self.dispatch(&svc, vi, head, body, &mut guard)).await;
        respond(result, guard, deadline)
    }

    /// A peer sidecar already routed this request (`<service>/<variant>`): hand it to the local
    /// model, once, without routing again.
    async fn deliver_local(
        &self,
        routed: &HeaderValue,
        head: &mut Parts,
        body: Incoming,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let Some((name, variant)) = routed.to_str().ok().and_then(|s| s.split_once('/')) else {
            return ProxyError::Malformed("x-infermesh-routed must be <service>/<variant>")
                .into_response();
        };
        let Some(svc) = self
            .store
            .load()
            .service(&name.to_ascii_lowercase())
            .cloned()
        else {
            return ProxyError::UnknownService(name.to_owned()).into_response();
        };
        let vi = svc.variants.iter().position(|v| v.name == variant);
        let mut guard = RequestGuard::new(svc.clone(), vi);
        prepare_head(head, conn, svc.protocol);
        let deadline = svc
            .timeouts
            .request
            .and_then(|d| Instant::now().checked_add(d));
        let send = async {
            let req = forward::build(
                head,
                true,
                svc.protocol,
                svc.local.authority(),
                None,
                ReqBody::Stream(body),
            );
            let sent = Instant::now();
            match within_opt(
                svc.timeouts.first_byte,
                self.upstream.send(svc.protocol, &svc.local, req),
            )
            .await
            {
                Some(Ok((resp, lent))) => {
                    if let Some(v) = guard.variant() {
                        v.metrics.ttfb.observe(sent.elapsed().as_secs_f64());
                    }
                    guard.conn = lent;
                    Ok(resp)
                }
                Some(Err(e)) if e.is_connect() => Err(ProxyError::Connect(error_chain(&e))),
                Some(Err(e)) => Err(ProxyError::Upstream(error_chain(&e))),
                None => Err(ProxyError::Timeout),
            }
        };
        let result = until(deadline, send).await;
        respond(result, guard, deadline)
    }
}

/// x-forwarded-{for,proto,host}, forwarded, x-request-id, host, x-infermesh-routed.
const ADDED_HEADERS: usize = 7;

/// Step 4: hop-by-hop headers out, forwarding headers and request id in, Host kept.
fn prepare_head(head: &mut Parts, conn: &ConnInfo, protocol: Protocol) {
    // Room for the headers added below and the routed marker, so the map grows once, not per
    // insert (a parsed request's map is sized to the headers it arrived with).
    head.headers.reserve(ADDED_HEADERS);
    strip_hop_by_hop(&mut head.headers, protocol != Protocol::Http);
    let host = match head.headers.get(http::header::HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let h = head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if protocol == Protocol::Http
                && let Some(h) = &h
            {
                head.headers.insert(http::header::HOST, h.clone());
            }
            h
        }
    };
    conn.forwarding.apply(&mut head.headers, host.as_ref());
    ensure_request_id(&mut head.headers);
}

/// Step 6: the upstream response streamed back, or the error's response.
fn respond(
    result: Result<Response<Incoming>, ProxyError>,
    guard: RequestGuard,
    deadline: Option<Instant>,
) -> Response<ProxyBody> {
    let timeouts = guard.service.timeouts;
    match result {
        Ok(resp) => {
            if let Some(v) = guard.variant() {
                v.metrics.count(resp.status());
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            detach::header_values(&mut parts.headers);
            Response::from_parts(
                parts,
                ProxyBody::upstream(body, timeouts.idle, deadline, guard),
            )
        }
        Err(e) => {
            if let Some(v) = guard.variant() {
                v.metrics.count(e.status());
            }
            tracing::debug!(service = %guard.service.name, error = %e, "request failed");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, F>(_: &impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every in-flight or queued request holds this future, and every move of it copies it whole.
    #[test]
    fn a_request_future_stays_within_1280_bytes() {
        let store = ConfigStore::new(
            Arc::new(crate::metrics::Metrics::new()),
            None,
            EwmaPolicy::default(),
        );
        let proxy = Arc::new(Proxy {
            store: Arc::new(store),
            upstream: Upstream::new(std::time::Duration::from_secs(1)),
            ejection: EjectionPolicy::default(),
            ewma: EwmaPolicy::default(),
        });
        let size =
            future_size(&move |c: Arc<ConnInfo>, r: Request<Incoming>| proxy.clone().handle(c, r));
        assert!(size <= 1280, "{size} bytes");
    }
}
