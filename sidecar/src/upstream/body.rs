//! The request body sent upstream: streamed as it arrives, or buffered (≤ 1 MiB) so a retry can
//! replay it. Kept apart from the response body the client receives (`request::body`): what a try
//! sends is the upstream's concern, what the client receives is the request path's.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::replay::{ReplayHold, ReplayPool};

/// Largest request body kept for replay; larger bodies stream and are not retried.
pub(crate) const MAX_REPLAY: usize = 1 << 20;

/// The client's request body failed while it was read or sent upstream: the client's fault,
/// which must not count against the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    /// A malformed chunk, the client gone midway.
    #[error("the client's request body failed")]
    Failed(#[source] hyper::Error),
    /// The client sent nothing for this long in the middle of its body.
    #[error("the client's request body stalled for {0:?}")]
    Idle(Duration),
}

/// The client's request body failing, if that is what `e` is or was caused by.
pub(crate) fn client_fault<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e ClientBodyError> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(f) = c.downcast_ref::<ClientBodyError>() {
            return Some(f);
        }
        cur = c.source();
    }
    None
}

/// A request body as read for retries.
pub(crate) enum Prepared {
    /// Fully read: can be sent any number of times, while `hold` keeps its bytes counted.
    Buffered {
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
        hold: ReplayHold,
    },
    /// Sent once, without retries, for the reason given.
    Stream(RequestBody, Unreplayable),
}

/// Why a body is sent once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unreplayable {
    /// Over [`MAX_REPLAY`].
    TooLarge,
    /// The sidecar-wide replay cap is reached (`ReplayPool`).
    PoolFull,
    /// Nothing needed it read: no retries, no body-based routing.
    NotAsked,
}

impl Prepared {
    /// The whole body, when it was read.
    pub(crate) fn data(&self) -> Option<&[u8]> {
        match self {
            Prepared::Buffered { data, .. } => Some(data),
            Prepared::Stream(..) => None,
        }
    }

    /// The read body with `new` in its place (a rewrite). The hold grows by the new length and
    /// keeps counting the old one until the request ends: an over-count, never an under-count.
    pub(crate) fn replaced(self, new: Bytes) -> Prepared {
        match self {
            Prepared::Buffered {
                trailers, mut hold, ..
            } => {
                hold.grow(new.len());
                Prepared::Buffered {
                    data: new,
                    trailers,
                    hold,
                }
            }
            streamed => streamed,
        }
    }
}

/// Reads a request body for replay, up to [`MAX_REPLAY`] and as far as `pool` has room; a body
/// silent for `idle` between two frames is the client's failure.
pub(crate) async fn prepare(
    mut body: Incoming,
    idle: Duration,
    pool: &Arc<ReplayPool>,
) -> Result<Prepared, ClientBodyError> {
    let mut hold = pool.hold();
    if body.is_end_stream() {
        return Ok(Prepared::Buffered {
            data: Bytes::new(),
            trailers: None,
            hold,
        });
    }
    let declared = body.size_hint().lower();
    if declared > MAX_REPLAY as u64 {
        return Ok(Prepared::Stream(
            RequestBody::streamed(body, idle),
            Unreplayable::TooLarge,
        ));
    }
    // A declared length is taken at once, so a refusal comes before any byte is read.
    if !hold.grow(declared as usize) {
        return Ok(Prepared::Stream(
            RequestBody::streamed(body, idle),
            Unreplayable::PoolFull,
        ));
    }
    let once = |chunks: VecDeque<Bytes>, rest: Incoming, why: Unreplayable| {
        Prepared::Stream(
            RequestBody::Watched(Box::new(Watched {
                body: RequestBody::Prefixed {
                    head: Box::new(chunks),
                    rest,
                },
                idle,
                timer: None,
                armed: false,
            })),
            why,
        )
    };
    let mut chunks = VecDeque::new();
    let mut len = 0;
    let mut trailers = None;
    loop {
        let frame = tokio::time::timeout(idle, http_body_util::BodyExt::frame(&mut body))
            .await
            .map_err(|_| ClientBodyError::Idle(idle))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(ClientBodyError::Failed)?;
        match frame.into_data() {
            Ok(d) => {
                len += d.len();
                chunks.push_back(d);
                if len > MAX_REPLAY {
                    return Ok(once(chunks, body, Unreplayable::TooLarge));
                }
                if len > declared as usize && !hold.grow(len - hold.bytes()) {
                    return Ok(once(chunks, body, Unreplayable::PoolFull));
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
    Ok(Prepared::Buffered {
        data,
        trailers,
        hold,
    })
}

/// The body sent upstream. Kept small (the rare parts boxed): every request sent on an upstream
/// connection passes through hyper's dispatch channel, whose blocks hold 32 requests each.
pub(crate) enum RequestBody {
    Replay {
        data: Option<Bytes>,
        trailers: Option<Box<HeaderMap>>,
    },
    Stream(Incoming),
    /// Chunks already read, then the rest of the stream.
    // Boxed on purpose: a bare VecDeque would make every request body four words larger.
    #[allow(clippy::box_collection)]
    Prefixed {
        head: Box<VecDeque<Bytes>>,
        rest: Incoming,
    },
    /// A streamed body whose client may stall: a silence of `idle` between frames ends it.
    Watched(Box<Watched>),
}

/// A streamed request body and the timer that bounds the silence between its frames.
pub(crate) struct Watched {
    body: RequestBody,
    idle: Duration,
    /// Made at the first wait, then reset at each next one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer counts the current wait.
    armed: bool,
}

impl RequestBody {
    /// A client's body sent as it arrives, with at most `idle` of silence between frames. A
    /// request without a body needs no timer (and most requests have none).
    pub(crate) fn streamed(body: Incoming, idle: Duration) -> Self {
        if body.is_end_stream() {
            return RequestBody::Stream(body);
        }
        RequestBody::Watched(Box::new(Watched {
            body: RequestBody::Stream(body),
            idle,
            timer: None,
            armed: false,
        }))
    }

    pub(crate) fn replay(data: &Bytes, trailers: &Option<Box<HeaderMap>>) -> Self {
        RequestBody::Replay {
            data: (!data.is_empty()).then(|| data.clone()),
            trailers: trailers.clone(),
        }
    }
}

/// Largest frame a replayed body is sent in.
const REPLAY_FRAME: usize = 64 << 10;

/// The next slice of `data`, at most [`REPLAY_FRAME`] long.
fn take_slice(data: &mut Option<Bytes>) -> Option<Bytes> {
    let d = data.as_mut()?;
    if d.len() <= REPLAY_FRAME {
        return data.take();
    }
    Some(d.split_to(REPLAY_FRAME))
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let client = |p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| {
            p.map(|f| f.map(|r| r.map_err(ClientBodyError::Failed)))
        };
        match self.get_mut() {
            // In slices: a connection's flat write buffer grows to what one frame holds and
            // keeps that capacity while pooled (the slices share the one buffer, no copy).
            RequestBody::Replay { data, trailers } => Poll::Ready(
                take_slice(data)
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
            RequestBody::Stream(b) => client(Pin::new(b).poll_frame(cx)),
            RequestBody::Prefixed { head, rest } => match head.pop_front() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => client(Pin::new(rest).poll_frame(cx)),
            },
            RequestBody::Watched(w) => match Pin::new(&mut w.body).poll_frame(cx) {
                Poll::Ready(f) => {
                    // The silence is counted again from the next wait.
                    w.armed = false;
                    Poll::Ready(f)
                }
                Poll::Pending => {
                    let idle = w.idle;
                    let timer = match &mut w.timer {
                        Some(t) => {
                            if !w.armed {
                                t.as_mut().reset(tokio::time::Instant::now() + idle);
                            }
                            t
                        }
                        None => w.timer.insert(Box::pin(tokio::time::sleep(idle))),
                    };
                    w.armed = true;
                    ready!(timer.as_mut().poll(cx));
                    Poll::Ready(Some(Err(ClientBodyError::Idle(idle))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
            RequestBody::Watched(w) => w.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Prefixed { head, rest } => {
                let n: u64 = head.iter().map(|c| c.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower().saturating_add(n));
                if let Some(u) = r.upper() {
                    h.set_upper(u.saturating_add(n));
                }
                h
            }
            RequestBody::Watched(w) => w.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request sent upstream is carried, body included, in hyper's dispatch channel, whose
    /// blocks hold 32 of them per upstream connection.
    #[tokio::test]
    async fn a_replayed_body_goes_in_slices_of_at_most_64_kib() {
        let data = Bytes::from(vec![7u8; (150 << 10) + 1]);
        let mut body = RequestBody::replay(&data, &None);
        let mut sizes = Vec::new();
        while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
            sizes.push(f.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [64 << 10, 64 << 10, (22 << 10) + 1]);
    }

    #[test]
    fn an_upstream_request_body_stays_small() {
        let size = std::mem::size_of::<RequestBody>();
        assert!(size <= 48, "{size} bytes");
    }
}
