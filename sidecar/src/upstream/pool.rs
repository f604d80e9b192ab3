//! Keep-alive HTTP/1.1 connections to one upstream address.
//!
//! Each endpoint owns its pool, so taking a connection is a pop under an uncontended lock: no map
//! keyed by host, no hashing, no task per request to watch the connection come back (what a
//! general-purpose pooled client pays to serve any host). A connection is lent to one request and
//! comes back only when its response body was read to the end ([`Lent::release`]); one dropped
//! earlier is closed, since HTTP/1.1 cannot abandon a response half read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;

/// Largest buffer an upstream connection keeps (hyper's minimum is 8 KiB).
const WRITE_BUF_MAX: usize = 64 << 10;
/// Idle connections kept per address; one returned beyond this is closed.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed when the pool is next touched (servers close idle
/// connections too; reusing one they are about to close costs a failed try).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct ConnPool {
    authority: Authority,
    /// Oldest at the front; reuse takes the most recent (its server side is least likely to have
    /// timed it out), expiry trims the front.
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A connection lent to one request.
#[derive(Debug)]
pub(crate) struct Lent {
    sender: SendRequest<RequestBody>,
    pool: Arc<ConnPool>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("cannot connect to {authority}")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Authority),
    #[error("HTTP/1.1 handshake with {authority} failed")]
    Handshake {
        authority: Authority,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The request never reached the upstream: safe to retry whatever the method.
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            SendError::Connect { .. }
            | SendError::ConnectTimeout(_)
            | SendError::Handshake { .. } => true,
            SendError::Http(_) => false,
            SendError::Pooled(e) => e.is_connect(),
        }
    }
}

impl ConnPool {
    pub(crate) fn new(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            authority,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection, or on a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lend(sender))),
                // Closed by the server before the request was written: it comes back unsent.
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: connecting is the rare path, and its large state would otherwise be carried by
        // every request's future (and copied with it).
        let mut sender = Box::pin(self.connect(connect_timeout)).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, self.lend(sender)))
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.lock();
        // A connection that is not ready is closed or still finishing an exchange: let it go.
        while let Some(i) = idle.pop_back() {
            if i.sender.is_ready() {
                return Some(i.sender);
            }
        }
        None
    }

    fn lend(self: &Arc<Self>, sender: SendRequest<RequestBody>) -> Lent {
        Lent {
            sender,
            pool: self.clone(),
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<RequestBody>, SendError> {
        let authority = &self.authority;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(authority.as_str()))
            .await
            .map_err(|_| SendError::ConnectTimeout(authority.clone()))?
            .map_err(|source| SendError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        // Flat writes, as on the listener side (see `listener`). A flat write buffer keeps the
        // capacity it grew to while the connection lives, idle in the pool too: bounded here, a
        // burst of large uploads does not leave every pooled connection holding a body's worth.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .max_buf_size(WRITE_BUF_MAX)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SendError::Handshake {
                authority: authority.clone(),
                source,
            })?;
        let authority = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lent {
    /// Gives the connection back for reuse: call once the response body was read to the end.
    pub(crate) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.pool.lock();
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                sender: self.sender,
                since: now,
            });
        }
    }
}

#[cfg(test)]
mod tests;
