//! Bodies crossing the sidecar. Requests: streamed as they arrive, or buffered (≤ 1 MiB) so a retry
//! can replay them. Responses: passed through frame by frame (never collected), with the idle and
//! total timeouts enforced between frames and the request's bookkeeping (in-flight count, latency,
//! concurrency slot) released when the stream ends or the client goes away.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::detach;
use crate::proxy::RequestGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body kept for replay; larger bodies stream and are not retried.
pub const MAX_REPLAY: usize = 1 << 20;

/// A request body as read for retries.
pub enum Prepared {
    /// Fully read: can be sent any number of times.
    Buffered {
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
    },
    /// Too large (or of unknown size beyond the bound): sent once.
    Stream(ReqBody),
}

/// Reads a request body for replay, up to [`MAX_REPLAY`].
pub async fn prepare(mut body: Incoming) -> Result<Prepared, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Prepared::Buffered {
            data: Bytes::new(),
            trailers: None,
        });
    }
    if body.size_hint().lower() > MAX_REPLAY as u64 {
        return Ok(Prepared::Stream(ReqBody::Stream(body)));
    }
    let mut chunks = VecDeque::new();
    let mut len = 0;
    let mut trailers = None;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => {
                len += d.len();
                chunks.push_back(d);
                if len > MAX_REPLAY {
                    return Ok(Prepared::Stream(ReqBody::Prefixed {
                        head: Box::new(chunks),
                        rest: body,
                    }));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(Box::new(t));
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| b.extend_from_slice(c));
            b.freeze()
        }
    };
    Ok(Prepared::Buffered { data, trailers })
}

/// The body sent upstream. Kept small (the rare parts boxed): every request sent on an upstream
/// connection passes through hyper's dispatch channel, whose blocks hold 32 requests each.
pub enum ReqBody {
    Replay {
        data: Option<Bytes>,
        trailers: Option<Box<HeaderMap>>,
    },
    Stream(Incoming),
    /// Chunks already read, then the rest of the stream.
    Prefixed {
        head: Box<VecDeque<Bytes>>,
        rest: Incoming,
    },
}

impl ReqBody {
    pub fn replay(data: &Bytes, trailers: &Option<Box<HeaderMap>>) -> Self {
        ReqBody::Replay {
            data: (!data.is_empty()).then(|| data.clone()),
            trailers: trailers.clone(),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Replay { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Prefixed { head, rest } => match head.pop_front() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            ReqBody::Stream(b) => b.is_end_stream(),
            ReqBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Stream(b) => b.size_hint(),
            ReqBody::Prefixed { head, rest } => {
                let n: u64 = head.iter().map(|c| c.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower().saturating_add(n));
                if let Some(u) = r.upper() {
                    h.set_upper(u.saturating_add(n));
                }
                h
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream response stalled longer than the idle timeout")]
pub struct IdleTimeout;

#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its total timeout")]
pub struct RequestTimeout;

/// The body sent to the client.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

pub struct UpstreamBody {
    inner: Incoming,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Held until the stream ends: releases in-flight, slot and records latency on drop.
    guard: Option<RequestGuard>,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn upstream(
        inner: Incoming,
        idle: Option<Duration>,
        deadline: Option<Instant>,
        guard: RequestGuard,
    ) -> Self {
        let idle = idle.filter(|i| Instant::now().checked_add(*i).is_some());
        let first = match (idle.map(|i| Instant::now() + i), deadline) {
            (Some(i), Some(d)) => Some(i.min(d)),
            (i, d) => i.or(d),
        };
        let mut body = UpstreamBody {
            timer: if inner.is_end_stream() {
                None
            } else {
                first.map(|t| Box::pin(tokio::time::sleep_until(t)))
            },
            inner,
            idle,
            deadline,
            guard: Some(guard),
        };
        // A response without a body (HEAD, 204, 304) is complete already; the server may never
        // poll it.
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        ProxyBody::Upstream(Box::new(body))
    }
}

impl From<String> for ProxyBody {
    fn from(s: String) -> Self {
        ProxyBody::full(s)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let u = match self.get_mut() {
            ProxyBody::Full(b) => return Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(u) => u,
        };
        match Pin::new(&mut u.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                // The server stops polling once the body reports its end, so the last frame is
                // where a known-length response completes.
                if u.inner.is_end_stream() {
                    u.finish(true);
                } else if let (Some(t), Some(next)) = (
                    u.timer.as_mut(),
                    u.idle.and_then(|i| Instant::now().checked_add(i)),
                ) {
                    t.as_mut().reset(u.deadline.map_or(next, |d| d.min(next)));
                }
                Poll::Ready(Some(Ok(f.map_data(detach::chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                u.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                u.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(t) = u.timer.as_mut() else {
                    return Poll::Pending;
                };
                ready!(t.as_mut().poll(cx));
                u.timer = None;
                u.finish(false);
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
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// Releases the request's bookkeeping; a complete response also frees its connection.
    fn finish(&mut self, complete: bool) {
        self.timer = None;
        if let Some(g) = self.guard.take()
            && complete
        {
            g.complete();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request sent upstream is carried, body included, in hyper's dispatch channel, whose
    /// blocks hold 32 of them per upstream connection.
    #[test]
    fn an_upstream_request_body_stays_small() {
        let size = std::mem::size_of::<ReqBody>();
        assert!(size <= 48, "{size} bytes");
    }
}
