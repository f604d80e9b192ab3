//! The request body sent upstream: streamed as it arrives, or buffered (≤ 1 MiB) so a retry can
//! replay it. Kept apart from the response body the client receives (`request::body`): what a try
//! sends is the upstream's concern, what the client receives is the request path's.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Largest request body kept for replay; larger bodies stream and are not retried.
pub(crate) const MAX_REPLAY: usize = 1 << 20;

/// The client's request body failed while it was sent upstream (a malformed chunk, the client
/// gone midway): the client's fault, which must not count against the upstream.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(crate) struct ClientBodyError(#[source] hyper::Error);

/// Whether `e`, or any error it was caused by, is the client's request body failing.
pub(crate) fn is_client_fault(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<ClientBodyError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// A request body as read for retries.
pub(crate) enum Prepared {
    /// Fully read: can be sent any number of times.
    Buffered {
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
    },
    /// Too large (or of unknown size beyond the bound): sent once.
    Stream(RequestBody),
}

/// Reads a request body for replay, up to [`MAX_REPLAY`].
pub(crate) async fn prepare(mut body: Incoming) -> Result<Prepared, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Prepared::Buffered {
            data: Bytes::new(),
            trailers: None,
        });
    }
    if body.size_hint().lower() > MAX_REPLAY as u64 {
        return Ok(Prepared::Stream(RequestBody::Stream(body)));
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
                    return Ok(Prepared::Stream(RequestBody::Prefixed {
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
}

impl RequestBody {
    pub(crate) fn replay(data: &Bytes, trailers: &Option<Box<HeaderMap>>) -> Self {
        RequestBody::Replay {
            data: (!data.is_empty()).then(|| data.clone()),
            trailers: trailers.clone(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let client = |p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| {
            p.map(|f| f.map(|r| r.map_err(ClientBodyError)))
        };
        match self.get_mut() {
            RequestBody::Replay { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
            RequestBody::Stream(b) => client(Pin::new(b).poll_frame(cx)),
            RequestBody::Prefixed { head, rest } => match head.pop_front() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => client(Pin::new(rest).poll_frame(cx)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
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
        let size = std::mem::size_of::<RequestBody>();
        assert!(size <= 48, "{size} bytes");
    }
}
