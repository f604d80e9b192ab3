//! Accept loops. Each connection is served by hyper (HTTP/1.1, or HTTP/2 when the client speaks it
//! with prior knowledge) and watched for graceful shutdown: on shutdown the loop stops accepting,
//! idle connections close, and in-flight requests finish (the caller bounds the wait).
//!
//! The protocol is told from the connection's first bytes, peeked without consuming them, so the
//! connection goes straight to hyper's HTTP/1 or HTTP/2 server: no rewind buffer sits in front of
//! every read, as it would with a server that detects the version by reading.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::request::body::ResponseBody;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client speaking HTTP/2 with prior knowledge
/// opens with it; anything else is HTTP/1.x.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection may stay silent (hyper bounds reading a request head the same way).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// hyper's servers, configured once per listener.
struct Servers {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Servers {
    fn new() -> Self {
        let mut h1 = http1::Builder::new();
        // One flat buffer per write rather than a vector of head and body pieces: the messages a
        // sidecar relays are mostly small, and copying a few bytes costs less than the kernel's
        // gathering (about 3 % more requests per second in `make bench`).
        h1.timer(TokioTimer::new()).keep_alive(true).writev(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        Self { h1, h2 }
    }
}

/// Serves `listener` until `shutdown` flips, then waits for open connections to finish.
pub(crate) async fn serve<M, H, Fut>(
    listener: TcpListener,
    name: &'static str,
    make: M,
    mut shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let servers = Arc::new(Servers::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = service_fn(make(peer));
        let (servers, watcher, mut stop) = (servers.clone(), graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            // Not yet watched for graceful shutdown: a connection that has sent nothing when the
            // listener stops is simply closed.
            let protocol = tokio::select! {
                p = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&stream)) => p,
                _ = stop.changed() => return,
            };
            let io = TokioIo::new(stream);
            let served = match protocol {
                Ok(Ok(Some(Protocol::Http1))) => {
                    watcher.watch(servers.h1.serve_connection(io, svc)).await
                }
                Ok(Ok(Some(Protocol::Http2))) => {
                    watcher.watch(servers.h2.serve_connection(io, svc)).await
                }
                // Closed, failed or silent before sending anything.
                _ => return,
            };
            if let Err(e) = served {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The protocol of a new connection, from its first bytes (left unread); `None` if it closed first.
async fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        match classify(&buf[..n]) {
            Some(p) => return Ok(p),
            // A proper prefix of the preface: more bytes are on their way. Peeking again at once
            // would see the same bytes, so wait a moment first (clients send the preface in one
            // segment; this path is rare).
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// `Some(None)`: closed; `Some(Some(p))`: the protocol; `None`: undecided yet.
fn classify(first: &[u8]) -> Option<Option<Protocol>> {
    if first.is_empty() {
        return Some(None);
    }
    if !H2_PREFACE.starts_with(first) {
        return Some(Some(Protocol::Http1));
    }
    (first.len() == H2_PREFACE.len()).then_some(Some(Protocol::Http2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(classify(b""), Some(None));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Some(Protocol::Http1)));
        // POST and PUT share the preface's first letter only.
        assert_eq!(classify(b"PO"), Some(Some(Protocol::Http1)));
        assert_eq!(classify(b"PUT /x HTTP/1.1"), Some(Some(Protocol::Http1)));
        assert_eq!(classify(b"PRI * HTTP/2.0"), None);
        assert_eq!(classify(H2_PREFACE), Some(Some(Protocol::Http2)));
    }
}
