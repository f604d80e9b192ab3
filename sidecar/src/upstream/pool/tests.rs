//! The pool against real hyper servers on loopback: reuse, what is not reused, and failures.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;

/// A server answering `ok`, counting the connections it accepted; `close` answers with
/// `Connection: close`.
async fn server(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if close {
                        r.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn pool(addr: SocketAddr) -> Arc<ConnPool> {
    ConnPool::new(Authority::try_from(addr.to_string().as_str()).unwrap())
}

/// A pool aimed at a fresh `server(close)`, with the server's accepted-connection count.
async fn pool_to_server(close: bool) -> (Arc<ConnPool>, Arc<AtomicUsize>) {
    let (addr, accepted) = server(close).await;
    (pool(addr), accepted)
}

fn get() -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::replay(&Bytes::new(), &None));
    req.headers_mut()
        .insert(http::header::HOST, "model".parse().unwrap());
    req
}

/// One request, body read to the end; the connection is released when `release`.
async fn exchange(pool: &Arc<ConnPool>, release: bool) -> String {
    let (resp, lent) = pool.send(get(), Duration::from_secs(2)).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    if release {
        lent.release();
    }
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_released_connection_serves_the_next_requests() {
    let (p, accepted) = pool_to_server(false).await;
    for _ in 0..5 {
        assert_eq!(exchange(&p, true).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(p.idle(), 1);
}

#[tokio::test]
async fn a_connection_not_released_is_not_reused() {
    let (p, accepted) = pool_to_server(false).await;
    exchange(&p, false).await;
    exchange(&p, false).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(p.idle(), 0);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_come_back() {
    let (p, accepted) = pool_to_server(false).await;
    let (a, b) = tokio::join!(
        p.send(get(), Duration::from_secs(2)),
        p.send(get(), Duration::from_secs(2))
    );
    for (resp, lent) in [a.unwrap(), b.unwrap()] {
        resp.into_body().collect().await.unwrap();
        lent.release();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(p.idle(), 2);
    exchange(&p, true).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_server_closes_is_replaced() {
    let (p, accepted) = pool_to_server(true).await;
    for _ in 0..3 {
        assert_eq!(exchange(&p, true).await, "ok");
        // Let the connection task see the close before the next checkout.
        tokio::task::yield_now().await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let err = pool(addr)
        .send(get(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
