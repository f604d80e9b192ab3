//! The body of every response the sidecar sends: its own (errors, admin) in full, or an upstream
//! response relayed frame by frame (never collected), with the idle and total timeouts enforced
//! between frames and the request's bookkeeping ([`RequestGuard`]: in-flight count, latency,
//! concurrency slot, connection) released when the stream ends or the client goes away.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::guard::RequestGuard;
use crate::detach;
use crate::tokens::{Ending, TokenMeter};
use crate::upstream::grpc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("the upstream response stalled longer than the idle timeout")]
pub(crate) struct IdleTimeout;

#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its total timeout")]
pub(crate) struct RequestTimeout;

/// The body sent to the client.
pub(crate) enum ResponseBody {
    /// A body the sidecar wrote itself.
    Full(Option<Bytes>),
    /// An upstream response's body on its way to the client.
    Relayed(Box<Relayed>),
}

/// An upstream response's body relayed to the client, with its timers and the request's guard.
pub(crate) struct Relayed {
    inner: Incoming,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Held until the stream ends: releases in-flight, slot and records latency on drop.
    guard: Option<RequestGuard>,
    /// The token meter of an OpenAI-style generation's response.
    tokens: Option<TokenMeter>,
}

impl ResponseBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody::Full((!b.is_empty()).then_some(b))
    }

    pub(crate) fn relayed(
        inner: Incoming,
        idle: Option<Duration>,
        deadline: Option<Instant>,
        guard: RequestGuard,
        tokens: Option<TokenMeter>,
    ) -> Self {
        let idle = idle.filter(|i| Instant::now().checked_add(*i).is_some());
        let first = match (idle.map(|i| Instant::now() + i), deadline) {
            (Some(i), Some(d)) => Some(i.min(d)),
            (i, d) => i.or(d),
        };
        let mut body = Relayed {
            timer: if inner.is_end_stream() {
                None
            } else {
                first.map(|t| Box::pin(tokio::time::sleep_until(t)))
            },
            inner,
            idle,
            deadline,
            guard: Some(guard),
            tokens,
        };
        // A response without a body (HEAD, 204, 304) is complete already; the server may never
        // poll it.
        if body.inner.is_end_stream() {
            body.finish(End::Complete);
        }
        ResponseBody::Relayed(Box::new(body))
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::full(s)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let u = match self.get_mut() {
            ResponseBody::Full(b) => return Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Relayed(u) => u,
        };
        match Pin::new(&mut u.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                // Shown to the meter as it goes to the client, never held back for it.
                if let (Some(m), Some(d)) = (u.tokens.as_mut(), f.data_ref()) {
                    m.chunk(d, Instant::now());
                }
                // A gRPC call's outcome comes last, in its trailers.
                if let (Some(g), Some(t)) = (u.guard.as_mut(), f.trailers_ref())
                    && let Some(code) = grpc::code(t).filter(|c| *c != 0)
                {
                    g.grpc_failed(code);
                }
                // The server stops polling once the body reports its end, so the last frame is
                // where a known-length response completes.
                if u.inner.is_end_stream() {
                    u.finish(End::Complete);
                } else if let (Some(t), Some(next)) = (
                    u.timer.as_mut(),
                    u.idle.and_then(|i| Instant::now().checked_add(i)),
                ) {
                    t.as_mut().reset(u.deadline.map_or(next, |d| d.min(next)));
                }
                Poll::Ready(Some(Ok(f.map_data(detach::chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                u.finish(End::Cut);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                u.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(t) = u.timer.as_mut() else {
                    return Poll::Pending;
                };
                ready!(t.as_mut().poll(cx));
                u.timer = None;
                u.finish(End::Cut);
                let now = Instant::now();
                let err: BoxError = if u.deadline.is_some_and(|d| now >= d) {
                    Box::new(RequestTimeout)
                } else {
                    Box::new(IdleTimeout)
                };
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Relayed(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Relayed(u) => u.inner.size_hint(),
        }
    }
}

/// How a relayed stream ended (a client that leaves drops it instead).
enum End {
    Complete,
    /// By a timeout or an upstream failure, after the head.
    Cut,
}

impl Relayed {
    /// Releases the request's bookkeeping; a complete response also frees its connection.
    fn finish(&mut self, end: End) {
        self.timer = None;
        self.tally(match end {
            End::Complete => Ending::Complete,
            End::Cut => Ending::Cut,
        });
        if let Some(g) = self.guard.take() {
            match end {
                End::Complete => g.complete(),
                End::Cut => g.cut(),
            }
        }
    }
}

impl Relayed {
    /// Records what the token meter saw, once the stream ended that way.
    fn tally(&mut self, ending: Ending) {
        if let (Some(m), Some(g)) = (self.tokens.take(), &self.guard) {
            g.record_tokens(&m.tally(ending, Instant::now()));
        }
    }
}

impl Drop for Relayed {
    /// Dropped before its end: the client went away.
    fn drop(&mut self) {
        self.tally(Ending::Aborted);
    }
}
