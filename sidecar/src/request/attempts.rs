//! Step 5 of the request path: the try loop, as [`Attempts`]. Each try picks an endpoint (avoiding ones already
//! tried, ejected or held by `Retry-After`), takes a concurrency slot, sends, and classifies the
//! outcome; failures feed outlier detection, and a retry happens only when the policy allows it
//! for this method and outcome, a replayable body exists, an endpoint in rotation remains, and
//! the retry budget has room. Nothing is retried once the response head has been returned.
//!
//! Which methods: a failure that happened before any request byte reached a model (no
//! connection, a peer sidecar's "local model unreachable", a 503 or 429 refusal) is retried for
//! every method, since the model never saw the request. Other failures (a reset, another 5xx, a
//! timeout) may come after the model started work: they are retried for idempotent methods, and
//! for all when the service sets `retryNonIdempotent` (inference, where a repeat costs compute).

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Proxy;
use super::errors::{ProxyError, REASON_HEADER, error_chain};
use super::guard::RequestGuard;
use super::timeouts::{min_opt, within_opt};
use crate::config::table::{Service, Variant};
use crate::endpoint::Endpoint;
use crate::load::orca::{self, LoadReport};
use crate::routing::affinity::PrefixIndex;
use crate::routing::balancer::{Affinity, Choice, Tried};
use crate::routing::prompt::Prompt;
use crate::routing::score::Score;
use crate::upstream::body::{self, Prepared, RequestBody, Unreplayable, client_fault};
use crate::upstream::pool::Lent;
use crate::upstream::replay::ReplayHold;
use crate::upstream::{forward, grpc};

/// Asks for the endpoint and the score in the response.
const DEBUG_HEADER: &str = "x-infermesh-debug";
/// The endpoint that answered (with [`DEBUG_HEADER`]).
const ENDPOINT_HEADER: &str = "x-infermesh-endpoint";
/// The score parts that chose it, InferenceAware only (with [`DEBUG_HEADER`]).
const SCORE_HEADER: &str = "x-infermesh-score";

/// Why a try did not produce the response to return.
enum Failure {
    Status(Response<Incoming>, Option<Lent>),
    Connect(String),
    Reset(String),
    Timeout,
}

/// The tries of one request to one variant of a service, and what they need from the sidecar
/// (`proxy`): the upstream client, the ejection policy failures feed, the PeakEWMA settings, and
/// the mesh keys that sign the marker sent to meshed peers. This sidecar is the `hop`th to route
/// the request.
pub(crate) struct Attempts<'a> {
    pub(crate) proxy: &'a Proxy,
    pub(crate) hop: u32,
    pub(crate) svc: &'a Service,
    pub(crate) variant: &'a Variant,
}

/// A body kept for retries, and its place under the sidecar-wide cap. Boxed: a request's future
/// carries one pointer for it, not the whole.
struct Replay {
    data: Bytes,
    trailers: Option<Box<HeaderMap>>,
    _hold: ReplayHold,
    /// The prompt read from `data`, for InferenceAware's prefix affinity.
    prompt: Option<Prompt>,
}

impl Replay {
    /// What the balancer's prefix affinity needs, if the body had a prompt.
    fn affinity<'a>(this: &'a Option<Box<Replay>>, index: &'a PrefixIndex) -> Option<Affinity<'a>> {
        let prompt = this.as_ref()?.prompt.as_ref()?;
        Some(Affinity {
            blocks: &prompt.blocks,
            index,
            model: prompt.model,
        })
    }
}

/// The request body as the try loop gets it: as it arrives, or already read (for model routes
/// and rewrites, before the variant was chosen).
pub(crate) enum Input {
    Incoming(Incoming),
    /// Boxed: a request's future carries one pointer for it.
    Prepared(Box<Prepared>),
}

impl Input {
    /// The body as the tries send it, unless it still has to be read (`Err`): read when
    /// `wanted`, else streamed.
    fn ready(self, wanted: bool, idle: Duration) -> Result<Prepared, Incoming> {
        match self {
            Input::Prepared(p) => Ok(*p),
            Input::Incoming(b) if wanted => Err(b),
            Input::Incoming(b) => Ok(Prepared::Stream(
                RequestBody::streamed(b, idle),
                Unreplayable::NotAsked,
            )),
        }
    }
}

impl Attempts<'_> {
    /// Tries until a response head is to be returned or no try is left; what the returned try
    /// holds goes to `guard`.
    pub(crate) async fn run(
        self,
        head: &mut Parts,
        body: Input,
        guard: &mut RequestGuard,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (svc, variant) = (self.svc, self.variant);
        let policy = &svc.retry;
        // Whether failures after the model may have seen the request are retried too.
        let repeatable = policy.non_idempotent || is_idempotent(&head.method);
        // With retries on, the body is read (≤ 1 MiB) so it can be replayed.
        let up = &self.proxy.upstream;
        // Asked for the scorer's choice in the response (`x-infermesh-debug: 1`).
        let debug = head
            .headers
            .remove(DEBUG_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        // InferenceAware reads the prompt from the body: it is buffered like a body kept for
        // retries, and the same buffer is sent (byte for byte) and replayed.
        if policy.attempts > 1 {
            svc.budget.deposit(Instant::now());
        }
        let wants_read = policy.attempts > 1 || variant.balancer.wants_prompt();
        let prepared = match body.ready(wants_read, up.body_idle) {
            Ok(p) => p,
            // Boxed: a request waiting for a slot or a response does not carry the read's state,
            // and the body is being buffered anyway.
            Err(b) => Box::pin(body::prepare(b, up.body_idle, &up.replay))
                .await
                .map_err(|e| ProxyError::from(&e))?,
        };
        let (replay, mut once) = match prepared {
            Prepared::Buffered {
                data,
                trailers,
                hold,
            } => {
                let prompt = variant
                    .balancer
                    .wants_prompt()
                    .then(|| Prompt::of(&data))
                    .flatten();
                (
                    Some(Box::new(Replay {
                        data,
                        trailers,
                        _hold: hold,
                        prompt,
                    })),
                    None,
                )
            }
            Prepared::Stream(b, why) => {
                if why == Unreplayable::PoolFull {
                    svc.metrics.replay_pool_full.inc();
                }
                (None, Some(b))
            }
        };

        let mut tried = Tried::default();
        let mut attempt: u32 = 0;
        // A retry's endpoint is chosen before deciding to retry (see below).
        let mut choice: Choice = variant
            .balancer
            .pick(
                &variant.endpoints,
                &head.headers,
                tried,
                Instant::now(),
                Replay::affinity(&replay, &self.proxy.prefixes),
            )
            .ok_or_else(|| ProxyError::NoEndpoint {
                service: svc.name.clone(),
                variant: variant.name.clone(),
            })?;
        loop {
            let ei = choice.index as usize;
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
                Some(r) => RequestBody::replay(&r.data, &r.trailers),
                None => once
                    .take()
                    .unwrap_or_else(|| RequestBody::replay(&Default::default(), &None)),
            };
            let routed = ep
                .meshed
                .then(|| self.proxy.trust.mark(&variant.routed, self.hop));
            let req = forward::build(
                head,
                !more,
                svc.protocol,
                ep.conns.authority(),
                routed,
                try_body,
            );
            // One try, in a block of its own: what it holds (the outcome, the failure) is gone
            // before the backoff below, so a request's future does not carry it while it waits.
            {
                let in_flight = ep.state.start();
                // This pod's own model counts this request too, as it counts its peers' (for
                // services whose load is reported).
                if ep.local && svc.reports_load {
                    let len = replay.as_ref().map_or(0, |r| r.data.len() as u64);
                    guard.hold_serving(self.proxy.local.enter(&svc.name, len));
                }
                let sent = Instant::now();
                let outcome = within_opt(
                    // Computed per try, not kept: every waiting request carries its locals.
                    min_opt(policy.per_try_timeout, svc.timeouts.first_byte),
                    self.proxy.upstream.send(svc.protocol, &ep.conns, req),
                )
                .await;
                let now = Instant::now();
                let failure = match outcome {
                    Some(Ok((mut resp, lent))) => {
                        self.take_report(ep, &mut resp, now);
                        if debug {
                            explain(&mut resp, ep, choice.score);
                        }
                        // A gRPC call that failed at once says so in its head, under a 200.
                        let grpc = grpc::in_head(svc.protocol, resp.headers());
                        let answer = grpc.map_or(resp.status(), grpc::http_status);
                        let status = answer.as_u16();
                        ep.state.observe_rtt(now, now - sent, &self.proxy.ewma);
                        variant.metrics.ttfb.observe((now - sent).as_secs_f64());
                        if answer.is_server_error() {
                            self.failed(ep, now);
                        } else {
                            ep.state.record_success(now);
                        }
                        if matches!(status, 429 | 503)
                            && let Some(d) = retry_after(resp.headers())
                        {
                            ep.state.hold_for(now, d);
                        }
                        let unreached = ep.meshed && peer_model_unreachable(&resp);
                        let retriable = if unreached {
                            policy.on_connect_failure
                        } else {
                            policy.retries_status(status)
                                || grpc.is_some_and(|c| policy.retries_grpc(c))
                        };
                        let before_model = unreached || matches!(status, 429 | 503);
                        if !(more && retriable && (before_model || repeatable)) {
                            guard.hold(in_flight, permit, lent);
                            return Ok(resp);
                        }
                        Failure::Status(resp, lent)
                    }
                    // Not the endpoint's failure: nothing to retry or to hold against it.
                    Some(Err(e)) if let Some(fault) = client_fault(&e).map(ProxyError::from) => {
                        return Err(fault);
                    }
                    Some(Err(e)) => {
                        self.failed(ep, now);
                        if e.is_connect() {
                            Failure::Connect(error_chain(&e))
                        } else {
                            Failure::Reset(error_chain(&e))
                        }
                    }
                    None => {
                        self.failed(ep, now);
                        Failure::Timeout
                    }
                };
                let mut retry = more
                    && match &failure {
                        Failure::Status(..) => true,
                        Failure::Connect(_) => policy.on_connect_failure,
                        Failure::Reset(_) => policy.on_reset && repeatable,
                        Failure::Timeout => policy.retries_timeout() && repeatable,
                    };
                if retry {
                    // Only to an endpoint in rotation: one held by Retry-After or ejected is not
                    // retried sooner, even when it is the only one.
                    match variant
                        .balancer
                        .pick(
                            &variant.endpoints,
                            &head.headers,
                            tried,
                            now,
                            Replay::affinity(&replay, &self.proxy.prefixes),
                        )
                        .filter(|c| variant.endpoints[c.index as usize].state.is_available(now))
                    {
                        Some(c) => choice = c,
                        None => retry = false,
                    }
                }
                if retry && !svc.budget.try_withdraw(now) {
                    svc.metrics.budget_exhausted.inc();
                    retry = false;
                }
                if !retry {
                    return match failure {
                        Failure::Status(resp, lent) => {
                            guard.hold(in_flight, permit, lent);
                            Ok(resp)
                        }
                        Failure::Connect(e) => Err(ProxyError::Connect(e)),
                        Failure::Reset(e) => Err(ProxyError::Upstream(e)),
                        Failure::Timeout => Err(ProxyError::Timeout),
                    };
                }
                guard.drop_serving();
                drop((failure, permit, in_flight));
            }
            svc.metrics.retries.inc();
            tokio::time::sleep(policy.backoff.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// The load report of a response: a meshed peer's sidecar sends it in
    /// `endpoint-load-metrics`, which is taken off before the client sees it; this pod's own
    /// model's is read here. Only InferenceAware keeps it.
    fn take_report(&self, ep: &Endpoint, resp: &mut Response<Incoming>, now: Instant) {
        let aware = self.variant.balancer.is_inference_aware();
        if ep.meshed {
            let header = resp.headers_mut().remove(orca::HEADER);
            if aware && let Some(r) = header.and_then(|v| LoadReport::parse(v.as_bytes())) {
                ep.state.load.report(r, now, ep.state.in_flight());
            }
        } else if aware && ep.local {
            let r = self.proxy.local.model(&self.svc.name).report(now);
            ep.state.load.report(r, now, ep.state.in_flight());
        }
    }

    /// Feeds a failed try to outlier detection.
    fn failed(&self, ep: &Endpoint, now: Instant) {
        let (svc, variant) = (self.svc, self.variant);
        let policy = self.proxy.ejection.overridden_by(&svc.outlier_detection);
        if let Some(d) = ep.state.record_failure(now, &policy) {
            variant.metrics.ejections.inc();
            tracing::warn!(endpoint = %ep.address, variant = %variant.name, ejected_for = ?d,
                "endpoint ejected after consecutive failures");
        }
    }
}

/// The endpoint a try went to and, for InferenceAware, the score that chose it
/// (`x-infermesh-debug: 1`).
fn explain(resp: &mut Response<Incoming>, ep: &Endpoint, score: Option<Score>) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(ep.address.as_str()) {
        h.insert(ENDPOINT_HEADER, v);
    }
    if let Some(s) = score {
        let mut text = format!(
            "total={:.3}, queue={:.3}, kv={:.3}, prefix={:.3}, saturated={}",
            s.total(),
            s.queue(),
            s.kv(),
            s.prefix(),
            s.saturated
        );
        if let Some(l) = s.lora() {
            text.push_str(&format!(", lora={l:.3}"));
        }
        if let Ok(v) = HeaderValue::try_from(text) {
            h.insert(SCORE_HEADER, v);
        }
    }
}

/// A peer sidecar answered that it could not reach its own model: the request never got there.
fn peer_model_unreachable(resp: &Response<Incoming>) -> bool {
    resp.status() == http::StatusCode::BAD_GATEWAY
        && resp.headers().get(REASON_HEADER).map(|v| v.as_bytes())
            == Some(ProxyError::CONNECT_REASON.as_bytes())
}

/// RFC 9110 §9.2.2 idempotent methods.
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `Retry-After` (RFC 9110 §10.2.3), capped at 5 minutes.
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_at(h, SystemTime::now())
}

/// `Retry-After` as delay-seconds or an HTTP-date, read at `now`; a date in the past is no delay.
fn retry_after_at(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(d.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_an_http_date() {
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let at = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let before = |s| at - Duration::from_secs(s);
        assert_eq!(retry_after_at(&h, before(7)), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after_at(&h, before(3600)),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after_at(&h, at + Duration::from_secs(1)),
            Some(Duration::ZERO),
            "a date already past"
        );
        // The obsolete RFC 850 form is accepted too, as RFC 9110 asks of recipients.
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wednesday, 21-Oct-15 07:28:00 GMT"),
        );
        assert_eq!(retry_after_at(&h, before(2)), Some(Duration::from_secs(2)));
    }

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
        h.insert("retry-after", HeaderValue::from_static("soon"));
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
