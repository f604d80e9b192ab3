//! One request's bookkeeping, from the moment its variant is chosen until its response body ends:
//! the variant's in-flight gauge and latency histogram, and what the chosen try holds (the
//! endpoint's in-flight count, its concurrency slot, the upstream connection). It is created by
//! the request path and handed down with the response body, which drops it when the stream ends,
//! so every release happens exactly once whichever way the request finishes. A relayed response is
//! counted then too, by its status, or as a 5xx when its stream was cut after the head (a
//! timeout, an upstream failure): a client that received half a stream was not served. An
//! OpenAI-style response is metered as it streams (`tokens`), and its tally recorded then. The
//! sidecar a client called also counts the request in its variant's `/stats` window.

use std::sync::Arc;

use http::StatusCode;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::config::table::{Service, Variant};
use crate::endpoint::state::InFlight;
use crate::serving::Serving;
use crate::tokens::{Ending, Tally, TokenMeter};
use crate::upstream::grpc;
use crate::upstream::pool::Lent;

/// Released when the response stream ends (or the client leaves); the connection goes back to its
/// pool only after a complete response ([`RequestGuard::complete`]).
pub(crate) struct RequestGuard {
    service: Arc<Service>,
    /// The variant's index (a service has at most `u16::MAX` variants): small, so it packs with
    /// the status below. Every in-flight request's future holds a guard.
    variant: Option<u16>,
    start: Instant,
    in_flight: Option<InFlight>,
    permit: Option<OwnedSemaphorePermit>,
    conn: Option<Lent>,
    /// A local delivery's place in its model's in-flight count (the load it reports).
    serving: Option<Serving>,
    /// The status of the response being relayed, counted when the stream ends.
    status: Option<StatusCode>,
    /// How the stream ended: `Aborted` until it is complete or cut (a client that leaves
    /// drops the guard without either).
    ending: Ending,
    /// What this sidecar takes of the request as the first to route it (one byte: every
    /// in-flight request's future holds a guard).
    taken: Taken,
}

/// What the sidecar a client called takes of its request; later hops take nothing, so the mesh
/// counts each request once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    Nothing,
    /// Counted in the variant's `/stats` window.
    Counted,
    /// Counted, and an OpenAI-style generation: a successful response is metered.
    Metered,
}

impl RequestGuard {
    pub(crate) fn new(service: Arc<Service>, variant: Option<usize>) -> Self {
        if let Some(v) = variant {
            service.variants[v].metrics.in_flight.inc();
        }
        Self {
            service,
            variant: variant.and_then(|v| u16::try_from(v).ok()),
            start: Instant::now(),
            in_flight: None,
            permit: None,
            conn: None,
            serving: None,
            status: None,
            ending: Ending::Aborted,
            taken: Taken::Nothing,
        }
    }

    /// This sidecar is the first to route the request: it is counted in the `/stats` window.
    pub(crate) fn first_hop(&mut self) {
        if let Some(v) = self.variant() {
            v.metrics.tokens.recent.started();
            self.taken = Taken::Counted;
        }
    }

    /// The request failed before any response head: it is answered with `status`.
    pub(crate) fn failed(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The request, which this sidecar routes first, is an OpenAI-style generation (its token
    /// metrics are wanted).
    pub(crate) fn generation(&mut self) {
        if self.taken == Taken::Counted {
            self.taken = Taken::Metered;
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

    /// Keeps the connection of a local delivery (which takes no endpoint slot).
    pub(crate) fn hold_conn(&mut self, conn: Option<Lent>) {
        self.conn = conn;
    }

    /// Counts a local delivery as in flight at its model until the response ends.
    pub(crate) fn hold_serving(&mut self, serving: Serving) {
        self.serving = Some(serving);
    }

    /// The try that went to the local model failed and another follows.
    pub(crate) fn drop_serving(&mut self) {
        self.serving = None;
    }

    /// A response with `status` is being relayed: it is counted when its stream ends. For a
    /// generation's successful response, the meter its body keeps (`request::body`).
    pub(crate) fn relaying(
        &mut self,
        status: StatusCode,
        headers: &http::HeaderMap,
    ) -> Option<TokenMeter> {
        // A gRPC call that failed at once (a trailers-only answer) counts as its code's status.
        self.status =
            Some(grpc::in_head(self.service.protocol, headers).map_or(status, grpc::http_status));
        if !(self.taken == Taken::Metered && status.is_success()) {
            return None;
        }
        TokenMeter::for_response(headers.get(http::header::CONTENT_TYPE), self.start)
    }

    /// The stream's trailers carry a failed `grpc-status`: the call counts as its code's HTTP
    /// status, not the head's 200.
    pub(crate) fn grpc_failed(&mut self, code: u32) {
        self.status = Some(grpc::http_status(code));
    }

    /// The stream was cut after its head by a timeout or an upstream failure.
    pub(crate) fn cut(mut self) {
        self.ending = Ending::Cut;
    }

    /// The response body was read to the end: its connection can serve another request.
    pub(crate) fn complete(mut self) {
        self.ending = Ending::Complete;
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }

    /// Records a metered response's tally (its body saw the stream end).
    pub(crate) fn record_tokens(&self, tally: &Tally) {
        if let Some(v) = self.variant() {
            v.metrics.tokens.record(tally);
        }
    }

    pub(crate) fn service(&self) -> &Service {
        &self.service
    }

    pub(crate) fn variant(&self) -> Option<&Variant> {
        self.variant.map(|v| &self.service.variants[usize::from(v)])
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.in_flight.take();
        self.permit.take();
        self.conn.take();
        if let Some(v) = self.variant.map(|v| &self.service.variants[usize::from(v)]) {
            let counted = match self.status {
                Some(_) if self.ending == Ending::Cut => {
                    v.metrics.streams_cut.inc();
                    Some(StatusCode::BAD_GATEWAY)
                }
                status => status,
            };
            if let Some(status) = counted {
                v.metrics.count(status);
            }
            if self.taken != Taken::Nothing {
                if let Some(status) = counted {
                    v.metrics.count_routed(status);
                }
                v.metrics.tokens.recent.ended(Instant::now(), counted);
            }
            v.metrics.in_flight.dec();
            v.metrics
                .latency
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}
