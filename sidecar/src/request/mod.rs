//! The request path, shared by the inbound (15006) and outbound (15001) listeners. [`Proxy::handle`]
//! and the functions below it run the steps top to bottom as plain calls:
//!
//! 1. a request marked `x-infermesh-routed` by a peer sidecar (inbound only) goes straight to the
//!    local model ([`Proxy::deliver_local`]) if the marker proves a sidecar of this namespace
//!    routed it (`crate::trust`); otherwise it is routed here like any other;
//! 2. identify the ModelService (`identify`);
//! 3. choose the variant: routes, sticky cohort, weights (`crate::routing::router`);
//! 4. prepare the head: hop-by-hop headers, forwarding headers, request id (`headers`);
//! 5. the try loop (`attempts`): pick an endpoint (`crate::routing::balancer`), take a concurrency
//!    slot, send (`crate::upstream`), classify the outcome, feed outlier detection, and retry
//!    within the budget with backoff;
//! 6. stream the response back untouched (`body`), timing it and releasing the request's
//!    bookkeeping (`guard`) at the end; its head and small chunks are copied off hyper's read
//!    buffers first (`crate::detach`).
//!
//! Failures become responses in one place (`errors`); time bounds are `timeouts`. This folder is
//! the top of the data plane: it reads the config in force (`crate::config`) and uses everything
//! below it, and nothing below it knows about requests.

mod attempts;
pub(crate) mod body;
pub(crate) mod errors;
mod guard;
pub(crate) mod headers;
mod identify;
mod timeouts;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use self::attempts::{Attempts, Input};
use self::body::ResponseBody;
use self::errors::{ProxyError, error_chain};
use self::guard::RequestGuard;
use self::headers::{Forwarding, prepare_head, strip_hop_by_hop};
use self::timeouts::{until, within_opt};
use crate::config::store::ConfigStore;
use crate::config::table::Service;
use crate::detach;
use crate::endpoint::state::{EjectionPolicy, EwmaPolicy};
use crate::load::orca;
use crate::routing::affinity::PrefixIndex;
use crate::routing::prompt::Model;
use crate::serving::LocalModels;
use crate::tokens;
use crate::trust::{MAX_HOPS, Trust};
use crate::upstream::body::{Prepared, RequestBody, client_fault};
use crate::upstream::forward::{self, ROUTED, Upstream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

/// What the request path knows about the client connection.
pub(crate) struct ConnInfo {
    pub(crate) direction: Direction,
    pub(crate) forwarding: Forwarding,
}

/// What step 1 decided for a request.
enum Marked {
    /// A peer sidecar proved it routed the request to this variant: the local model serves it.
    Deliver(Arc<Service>, usize),
    /// This sidecar routes it, as the `hop`th in a row.
    Route { hop: u32 },
    /// `hop` sidecars in a row have routed it: refused (508).
    Loop { hop: u32 },
}

pub(crate) struct Proxy {
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) trust: Arc<Trust>,
    pub(crate) upstream: Upstream,
    pub(crate) ejection: EjectionPolicy,
    pub(crate) ewma: EwmaPolicy,
    /// Which endpoints were sent which prompt prefixes (InferenceAware), across reloads.
    pub(crate) prefixes: PrefixIndex,
    /// This pod's models and their load, reported on responses to peers.
    pub(crate) local: Arc<LocalModels>,
}

impl Proxy {
    /// Entry point of both listeners.
    ///
    /// The request is split before the future is built, and the steps below borrow its head: a
    /// request waiting for a concurrency slot is this future, and an `async fn` would hold both
    /// the request it was given and the parts taken from it.
    pub(crate) fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        let (mut head, body) = req.into_parts();
        let routed = head.headers.remove(&ROUTED);
        async move {
            if head.method == Method::CONNECT {
                return Ok(ProxyError::Malformed(
                    "CONNECT tunnels are not supported; send plain HTTP",
                )
                .into_response());
            }
            if let Err(e) = headers::check(&head) {
                return Ok(e.into_response());
            }
            let marked = match routed {
                Some(r) if conn.direction == Direction::Inbound => self.marked(&r),
                _ => Marked::Route { hop: 1 },
            };
            Ok(match marked {
                Marked::Deliver(svc, vi) => {
                    self.deliver_local(svc, vi, &mut head, body, &conn).await
                }
                Marked::Route { hop } => self.route(&mut head, body, &conn, hop).await,
                Marked::Loop { hop } => ProxyError::RoutingLoop(hop).into_response(),
            })
        }
    }

    /// Steps 2-6 for a request that still needs routing; this sidecar is the `hop`th to route it.
    async fn route(
        &self,
        head: &mut Parts,
        body: Incoming,
        conn: &ConnInfo,
        hop: u32,
    ) -> Response<ResponseBody> {
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
        // Model routes and rewrites read the body first (boxed: only those requests carry the
        // read's state).
        let (body, vi) = if svc.reads_model {
            match Box::pin(self.by_model(&svc, head, body)).await {
                Ok(chosen) => chosen,
                Err(e) => return e.into_response(),
            }
        } else {
            let vi = svc.router.select(head.uri.path(), &head.headers, None);
            (Input::Incoming(body), vi)
        };
        let Some(vi) = vi else {
            return ProxyError::NoVariant(svc.name.clone()).into_response();
        };
        let mut guard = RequestGuard::new(svc.clone(), Some(vi));
        // Token metrics and the `/stats` window are taken by the first sidecar on the way, the
        // one the client called, so each response is counted once and timed as its client sees
        // it.
        if hop == 1 {
            guard.first_hop();
            if tokens::is_generation(head.uri.path()) {
                guard.generation();
            }
        }
        prepare_head(head, &conn.forwarding, svc.protocol);
        let deadline = svc
            .timeouts
            .request
            .and_then(|d| Instant::now().checked_add(d));
        let attempts = Attempts {
            proxy: self,
            hop,
            svc: &svc,
            variant: &svc.variants[vi],
        };
        let result = until(deadline, attempts.run(head, body, &mut guard)).await;
        respond(result, guard, deadline)
    }

    /// Steps 3 for a service whose routes match the body's `model` or whose variants rewrite
    /// it: the body read (bounded, as for retries), the variant chosen with its model, and the
    /// chosen variant's rewrite applied. The read body goes on to the tries.
    async fn by_model(
        &self,
        svc: &Service,
        head: &mut Parts,
        body: Incoming,
    ) -> Result<(Input, Option<usize>), ProxyError> {
        let up = &self.upstream;
        let p = crate::upstream::body::prepare(body, up.body_idle, &up.replay)
            .await
            .map_err(|e| ProxyError::from(&e))?;
        let model = p.data().and_then(Model::of);
        let name = model.as_ref().map(|m| m.name.as_str());
        let vi = svc.router.select(head.uri.path(), &head.headers, name);
        let rewrite = vi.and_then(|v| svc.variants[v].model_rewrite.as_deref());
        let p = match (model, rewrite) {
            (Some(m), Some(to)) if m.name != to => rewrite_model(p, &m, to, head),
            _ => p,
        };
        Ok((Input::Prepared(Box::new(p)), vi))
    }

    /// Step 1: what to do with a request a peer marked `x-infermesh-routed`. Delivered locally
    /// only when the marker's proof holds (see `trust`) and names a service and variant of the
    /// config in force; otherwise routed like any other request, as one more hop, until
    /// [`MAX_HOPS`] sidecars in a row have routed it.
    fn marked(&self, marker: &HeaderValue) -> Marked {
        let metrics = &self.store.metrics;
        let checked = match self.trust.check(marker) {
            Ok(c) => c,
            Err(why) => {
                metrics.marker_refused(why.label());
                return Marked::Route { hop: 2 };
            }
        };
        if checked.hop >= MAX_HOPS {
            metrics.marker_refused("loop");
            return Marked::Loop { hop: checked.hop };
        }
        match checked.proof {
            Ok(()) => {
                if let Some((svc, vi)) = self.routed_target(checked.target) {
                    return Marked::Deliver(svc, vi);
                }
            }
            Err(why) => metrics.marker_refused(why.label()),
        }
        Marked::Route {
            hop: checked.hop + 1,
        }
    }

    /// The service and variant a proven `<service>/<variant>` names, if both are in the config
    /// in force. A name this sidecar does not know is routed as any other request (a peer on a
    /// newer config costs one more hop; nothing is delivered on a name this sidecar does not
    /// know).
    fn routed_target(&self, target: &str) -> Option<(Arc<Service>, usize)> {
        let (name, variant) = target.split_once('/')?;
        let svc = self
            .store
            .load()
            .service(&name.to_ascii_lowercase())?
            .clone();
        let vi = svc.variants.iter().position(|v| v.name == variant)?;
        Some((svc, vi))
    }

    /// A peer sidecar already routed this request to variant `vi` of `svc`: hand it to the local
    /// model, once, without routing again.
    async fn deliver_local(
        &self,
        svc: Arc<Service>,
        vi: usize,
        head: &mut Parts,
        body: Incoming,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        let mut guard = RequestGuard::new(svc.clone(), Some(vi));
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        // Counted only where it is reported: other services skip the lock.
        if svc.reports_load {
            guard.hold_serving(self.local.enter(&svc.name, declared));
        }
        prepare_head(head, &conn.forwarding, svc.protocol);
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
                RequestBody::streamed(body, self.upstream.body_idle),
            );
            let sent = Instant::now();
            match within_opt(
                svc.timeouts.first_byte,
                self.upstream.send(svc.protocol, &svc.local, req),
            )
            .await
            {
                Some(Ok((mut resp, lent))) => {
                    if let Some(v) = guard.variant() {
                        v.metrics.ttfb.observe(sent.elapsed().as_secs_f64());
                    }
                    guard.hold_conn(lent);
                    if svc.reports_load {
                        // The caller's balancer reads it (and strips it before its client).
                        let report = self.local.model(&svc.name).report(Instant::now());
                        if let Ok(v) = HeaderValue::try_from(report.to_text()) {
                            resp.headers_mut().insert(orca::HEADER, v);
                        }
                    }
                    Ok(resp)
                }
                Some(Err(e)) if let Some(fault) = client_fault(&e).map(ProxyError::from) => {
                    Err(fault)
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

/// The read body with its `model` set to `to` (a variant's `modelRewrite`); the rest of its
/// bytes as the client sent them.
fn rewrite_model(p: Prepared, m: &Model, to: &str, head: &mut Parts) -> Prepared {
    let Some(data) = p.data() else { return p };
    let new = m.rewrite(data, to);
    if head.headers.contains_key(http::header::CONTENT_LENGTH) {
        head.headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(new.len()));
    }
    p.replaced(new)
}

/// Step 6: the upstream response streamed back, or the error's response.
fn respond(
    result: Result<Response<Incoming>, ProxyError>,
    guard: RequestGuard,
    deadline: Option<Instant>,
) -> Response<ResponseBody> {
    let timeouts = guard.service().timeouts;
    match result {
        Ok(resp) => {
            let mut guard = guard;
            let tokens = guard.relaying(resp.status(), resp.headers());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            detach::header_values(&mut parts.headers);
            Response::from_parts(
                parts,
                ResponseBody::relayed(body, timeouts.idle, deadline, guard, tokens),
            )
        }
        Err(e) => {
            let mut guard = guard;
            guard.failed(e.status());
            tracing::debug!(service = %guard.service().name, error = %e, "request failed");
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
            trust: Default::default(),
            upstream: Upstream::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(30),
                1 << 20,
            ),
            ejection: EjectionPolicy::default(),
            ewma: EwmaPolicy::default(),
            prefixes: PrefixIndex::new(64),
            local: Default::default(),
        });
        let size =
            future_size(&move |c: Arc<ConnInfo>, r: Request<Incoming>| proxy.clone().handle(c, r));
        assert!(size <= 1280, "{size} bytes");
    }
}
