//! The request path, shared by the inbound (15006) and outbound (15001) listeners, top to bottom:
//!
//! 1. a request marked `x-infermesh-routed` by a peer sidecar (inbound only) goes straight to the
//!    local model ([`Proxy::deliver_local`]);
//! 2. identify the ModelService (`identify`);
//! 3. choose the variant: routes, sticky cohort, weights (`route`);
//! 4. prepare the head: hop-by-hop headers, forwarding headers, request id (`headers`);
//! 5. the try loop ([`Proxy::dispatch`]): pick an endpoint (`balance`), take a concurrency slot
//!    (`limit`), send (`forward`), classify the outcome, feed outlier detection, and retry within
//!    the budget (`budget`) with backoff;
//! 6. stream the response back untouched (`body`), timing it and releasing its slot at the end.
//!
//! Failures become responses in one place (`errors`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use infermesh_crds::mesh::Protocol;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::balance::Tried;
use crate::body::{self, Prepared, ProxyBody, ReqBody};
use crate::endpoint::{EjectionPolicy, EwmaPolicy, InFlight};
use crate::errors::ProxyError;
use crate::forward::{self, ROUTED, Upstream};
use crate::headers::{Forwarding, ensure_request_id, strip_hop_by_hop};
use crate::identify;
use crate::store::ConfigStore;
use crate::table::{Endpoint, Service, Variant};

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
/// in-flight gauge, latency histogram, the endpoint's in-flight count and concurrency slot.
pub struct RequestGuard {
    service: Arc<Service>,
    variant: Option<usize>,
    start: Instant,
    pub(crate) complete: bool,
    in_flight: Option<InFlight>,
    permit: Option<OwnedSemaphorePermit>,
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
            complete: false,
            in_flight: None,
            permit: None,
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
        if let Some(v) = self.variant.map(|v| &self.service.variants[v]) {
            v.metrics.in_flight.dec();
            v.metrics
                .latency
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

/// Why a try did not produce the response to return.
enum Failure {
    Status(Response<Incoming>),
    Connect(String),
    Reset(String),
    Timeout,
}

impl Proxy {
    /// Entry point of both listeners.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (mut head, body) = req.into_parts();
        let routed = head.headers.remove(&ROUTED);
        if head.method == Method::CONNECT {
            return Ok(
                ProxyError::Malformed("CONNECT tunnels are not supported; send plain HTTP")
                    .into_response(),
            );
        }
        Ok(match routed {
            Some(r) if conn.direction == Direction::Inbound => {
                self.deliver_local(&r, head, body, &conn).await
            }
            _ => self.route(head, body, &conn).await,
        })
    }

    /// Steps 2-6 for a request that still needs routing.
    async fn route(&self, mut head: Parts, body: Incoming, conn: &ConnInfo) -> Response<ProxyBody> {
        if !self.store.is_loaded() {
            return ProxyError::NotReady.into_response();
        }
        let svc = {
            let table = self.store.load();
            match identify::service(&table, &head) {
                Ok(s) => s.clone(),
                Err(e) => return e.into_response(),
            }
        };
        let Some(vi) = svc.select_variant(head.uri.path(), &head.headers) else {
            return ProxyError::NoVariant(svc.name.clone()).into_response();
        };
        let mut guard = RequestGuard::new(svc.clone(), Some(vi));
        prepare_head(&mut head, conn, svc.protocol);
        let deadline = svc.timeouts.request.map(|d| Instant::now() + d);
        let result = within(
            deadline,
            self.dispatch(&svc, vi, &mut head, body, &mut guard),
        )
        .await;
        respond(result, guard, deadline)
    }

    /// A peer sidecar already routed this request (`<service>/<variant>`): hand it to the local
    /// model, once, without routing again.
    async fn deliver_local(
        &self,
        routed: &HeaderValue,
        mut head: Parts,
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
        let guard = RequestGuard::new(svc.clone(), vi);
        prepare_head(&mut head, conn, svc.protocol);
        let deadline = svc.timeouts.request.map(|d| Instant::now() + d);
        let send = async {
            let req = forward::build(
                &mut head,
                true,
                svc.protocol,
                &svc.local,
                None,
                ReqBody::Stream(body),
            );
            let sent = Instant::now();
            match within_opt(
                svc.timeouts.first_byte,
                self.upstream.send(svc.protocol, req),
            )
            .await
            {
                Some(Ok(resp)) => {
                    if let Some(v) = guard.variant() {
                        v.metrics.ttfb.observe(sent.elapsed().as_secs_f64());
                    }
                    Ok(resp)
                }
                Some(Err(e)) if e.is_connect() => Err(ProxyError::Connect(error_chain(&e))),
                Some(Err(e)) => Err(ProxyError::Upstream(error_chain(&e))),
                None => Err(ProxyError::Timeout),
            }
        };
        let result = within(deadline, send).await;
        respond(result, guard, deadline)
    }

    /// The try loop (step 5).
    async fn dispatch(
        &self,
        svc: &Service,
        vi: usize,
        head: &mut Parts,
        body: Incoming,
        guard: &mut RequestGuard,
    ) -> Result<Response<Incoming>, ProxyError> {
        let variant = &svc.variants[vi];
        let policy = &svc.retry;
        let idempotent = is_idempotent(&head.method);
        // With retries on, the body is read (≤ 1 MiB) so it can be replayed.
        let (replay, mut once) = if policy.attempts > 1 {
            svc.budget.deposit(Instant::now());
            match body::prepare(body)
                .await
                .map_err(|e| ProxyError::RequestBody(error_chain(&e)))?
            {
                Prepared::Buffered { data, trailers } => (Some((data, trailers)), None),
                Prepared::Stream(b) => (None, Some(b)),
            }
        } else {
            (None, Some(ReqBody::Stream(body)))
        };
        let head_timeout = min_opt(policy.per_try_timeout, svc.timeouts.first_byte);
        let mut tried = Tried::default();
        let mut attempt: u32 = 0;
        // A retry's endpoint is chosen before deciding to retry (see below).
        let mut chosen: Option<usize> = None;
        loop {
            let ei = match chosen.take() {
                Some(i) => i,
                None => svc
                    .pick_endpoint(variant, &head.headers, tried, Instant::now())
                    .ok_or_else(|| ProxyError::NoEndpoint {
                        service: svc.name.clone(),
                        variant: variant.name.clone(),
                    })?,
            };
            tried.add(ei);
            let ep = &variant.endpoints[ei];
            let permit = match &ep.limiter {
                None => None,
                Some(l) => {
                    variant.metrics.queue_depth.inc();
                    let p = l.acquire().await;
                    variant.metrics.queue_depth.dec();
                    Some(p.map_err(|s| ProxyError::Overloaded {
                        retry_after: s.retry_after,
                    })?)
                }
            };
            let more = replay.is_some() && attempt + 1 < policy.attempts;
            let try_body = match &replay {
                Some((d, t)) => ReqBody::replay(d, t),
                None => once
                    .take()
                    .unwrap_or_else(|| ReqBody::replay(&Default::default(), &None)),
            };
            let routed = ep.meshed.then_some(&variant.routed);
            let req = forward::build(head, !more, svc.protocol, &ep.authority, routed, try_body);
            let in_flight = ep.state.start();
            let sent = Instant::now();
            let outcome = within_opt(head_timeout, self.upstream.send(svc.protocol, req)).await;
            let now = Instant::now();
            let failure = match outcome {
                Some(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    ep.state.observe_rtt(now, now - sent, &self.ewma);
                    variant.metrics.ttfb.observe((now - sent).as_secs_f64());
                    if resp.status().is_server_error() {
                        self.failed(ep, variant, now);
                    } else {
                        ep.state.record_success(now);
                    }
                    if matches!(status, 429 | 503)
                        && let Some(d) = retry_after(resp.headers())
                    {
                        ep.state.hold_for(now, d);
                    }
                    if !(more && idempotent && policy.retries_status(status)) {
                        guard.in_flight = Some(in_flight);
                        guard.permit = permit;
                        return Ok(resp);
                    }
                    Failure::Status(resp)
                }
                Some(Err(e)) => {
                    self.failed(ep, variant, now);
                    if e.is_connect() {
                        Failure::Connect(error_chain(&e))
                    } else {
                        Failure::Reset(error_chain(&e))
                    }
                }
                None => {
                    self.failed(ep, variant, now);
                    Failure::Timeout
                }
            };
            let mut retry = more
                && match &failure {
                    Failure::Status(_) => true,
                    Failure::Connect(_) => policy.on_connect_failure,
                    Failure::Reset(_) => policy.on_reset && idempotent,
                    Failure::Timeout => policy.retries_timeout() && idempotent,
                };
            if retry {
                // Only to an endpoint in rotation: one held by Retry-After or ejected is not
                // retried sooner, even when it is the only one.
                chosen = svc
                    .pick_endpoint(variant, &head.headers, tried, now)
                    .filter(|i| variant.endpoints[*i].state.is_available(now));
                retry = chosen.is_some();
            }
            if retry && !svc.budget.try_withdraw(now) {
                svc.metrics.budget_exhausted.inc();
                retry = false;
            }
            if !retry {
                return match failure {
                    Failure::Status(resp) => {
                        guard.in_flight = Some(in_flight);
                        guard.permit = permit;
                        Ok(resp)
                    }
                    Failure::Connect(e) => Err(ProxyError::Connect(e)),
                    Failure::Reset(e) => Err(ProxyError::Upstream(e)),
                    Failure::Timeout => Err(ProxyError::Timeout),
                };
            }
            drop((failure, permit, in_flight));
            svc.metrics.retries.inc();
            tokio::time::sleep(policy.backoff.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// Feeds a failed try to outlier detection.
    fn failed(&self, ep: &Endpoint, variant: &Variant, now: Instant) {
        if let Some(d) = ep.state.record_failure(now, &self.ejection) {
            variant.metrics.ejections.inc();
            tracing::warn!(endpoint = %ep.address, variant = %variant.name, ejected_for = ?d,
                "endpoint ejected after consecutive failures");
        }
    }
}

/// Step 4: hop-by-hop headers out, forwarding headers and request id in, Host kept.
fn prepare_head(head: &mut Parts, conn: &ConnInfo, protocol: Protocol) {
    strip_hop_by_hop(&mut head.headers, protocol != Protocol::Http);
    let host = match head.headers.get(http::header::HOST) {
        Some(h) => Some(h.clone()),
        None => head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if protocol == Protocol::Http
        && !head.headers.contains_key(http::header::HOST)
        && let Some(h) = &host
    {
        head.headers.insert(http::header::HOST, h.clone());
    }
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

/// Runs `f` until `deadline`, if any; a miss is an upstream timeout.
async fn within<T>(
    deadline: Option<Instant>,
    f: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .unwrap_or(Err(ProxyError::Timeout)),
        None => f.await,
    }
}

/// `None` when the timeout fired.
async fn within_opt<T>(t: Option<Duration>, f: impl Future<Output = T>) -> Option<T> {
    match t {
        Some(t) => tokio::time::timeout(t, f).await.ok(),
        None => Some(f.await),
    }
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// RFC 9110 §9.2.2 idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `Retry-After` in seconds (the HTTP-date form is ignored), capped at 5 minutes.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

/// An error with its causes, for logs and reasons.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
    fn idempotency_and_retry_after() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(300)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        assert_eq!(
            min_opt(Some(Duration::from_secs(2)), Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            min_opt(None, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
    }
}
