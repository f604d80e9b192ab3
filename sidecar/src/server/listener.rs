//! Accept loops. Each connection is served by hyper (HTTP/1.1, or HTTP/2 when the client speaks it
//! with prior knowledge) and watched for graceful shutdown: on shutdown the loop stops accepting,
//! idle connections close, and in-flight requests finish (the caller bounds the wait).
//!
//! The protocol is told from the connection's first bytes, peeked without consuming them, so the
//! connection goes straight to hyper's HTTP/1 or HTTP/2 server: no rewind buffer sits in front of
//! every read, as it would with a server that detects the version by reading. Only a connection
//! whose first segment is part of the HTTP/2 preface is read to tell (see [`sniff`]).
//!
//! Request heads are capped (`--max-header-bytes`, 64 KiB by default, about Envoy's 60 KiB):
//! beyond it HTTP/1.1 gets 431 and HTTP/2 a refused stream.

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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::rewind::Rewind;
use crate::request::body::ResponseBody;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client speaking HTTP/2 with prior knowledge
/// opens with it; anything else is HTTP/1.x.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest read buffer of a client connection, unless the header cap is larger.
const READ_BUF_MAX: usize = 64 << 10;
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
    fn new(max_header_bytes: usize) -> Self {
        let mut h1 = http1::Builder::new();
        // One flat buffer per write rather than a vector of head and body pieces: the messages a
        // sidecar relays are mostly small, and copying a few bytes costs less than the kernel's
        // gathering (about 3 % more requests per second in `make bench`).
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .writev(false)
            .max_header_size(max_header_bytes)
            // The read buffer, which body chunks are cut from: bounded, so what a pooled
            // upstream connection's write buffer grows to (one chunk) stays small too.
            .max_buf_size(max_header_bytes.max(READ_BUF_MAX));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Self { h1, h2 }
    }

    /// Serves one connection with the protocol it speaks, until it closes or shutdown drains it.
    async fn serve<I, H, Fut>(
        &self,
        protocol: Protocol,
        io: I,
        handler: H,
        watcher: Watcher,
    ) -> Result<(), hyper::Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    {
        let svc = service_fn(handler);
        match protocol {
            Protocol::Http1 => watcher.watch(self.h1.serve_connection(io, svc)).await,
            Protocol::Http2 => watcher.watch(self.h2.serve_connection(io, svc)).await,
        }
    }
}

/// Serves `listener` until `shutdown` flips, then waits for open connections to finish.
pub(crate) async fn serve<M, H, Fut>(
    listener: TcpListener,
    name: &'static str,
    max_header_bytes: usize,
    make: M,
    mut shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let servers = Arc::new(Servers::new(max_header_bytes));
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
        let handler = make(peer);
        let (servers, watcher, mut stop) = (servers.clone(), graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            // Not yet watched for graceful shutdown: a connection that has sent nothing when the
            // listener stops is simply closed.
            let sniffed = tokio::select! {
                s = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&mut stream)) => s,
                _ = stop.changed() => return,
            };
            let served = match sniffed {
                Ok(Ok(Sniffed::Peeked(p))) => {
                    servers
                        .serve(p, TokioIo::new(stream), handler, watcher)
                        .await
                }
                Ok(Ok(Sniffed::Read(p, first))) => {
                    let io = TokioIo::new(Rewind::new(first, stream));
                    servers.serve(p, io, handler, watcher).await
                }
                // Closed, failed or silent before telling its protocol.
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

/// What the first bytes of a connection told.
enum Sniffed {
    /// The protocol, from bytes peeked and left unread.
    Peeked(Protocol),
    /// The protocol, from these first bytes, read: they are to be served again.
    Read(Protocol, Vec<u8>),
    /// The client closed first.
    Closed,
}

/// The protocol of a new connection, from its first bytes.
async fn sniff(stream: &mut TcpStream) -> io::Result<Sniffed> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    match classify(&buf[..n]) {
        Some(Some(p)) => return Ok(Sniffed::Peeked(p)),
        Some(None) => return Ok(Sniffed::Closed),
        None => {}
    }
    // A proper prefix of the preface: the rest is on its way (clients send the preface in one
    // segment, so this path is rare). Peeking again would return at once with the same bytes,
    // so the bytes are read instead: a read waits for more, and sees a client that leaves.
    let mut first = Vec::with_capacity(H2_PREFACE.len());
    loop {
        let n = stream
            .read(&mut buf[..H2_PREFACE.len() - first.len()])
            .await?;
        if n == 0 {
            return Ok(Sniffed::Closed);
        }
        first.extend_from_slice(&buf[..n]);
        if let Some(p) = classify(&first) {
            return Ok(p.map_or(Sniffed::Closed, |p| Sniffed::Read(p, first)));
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
