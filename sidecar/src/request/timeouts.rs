//! Time bounds on the request path's futures. These are plain functions returning a combinator, not
//! `async fn`s: an `async fn` that awaits a future passed to it keeps the future twice in its state
//! (as the argument and as the awaited value), and the request path nests several such bounds
//! around large futures, so each layer would double the bytes copied every time a request's future
//! is moved.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use tokio::time::Instant;

use super::errors::ProxyError;

/// `f` bounded by `t`, if any: `None` when the time ran out.
pub(crate) fn within_opt<F: Future>(
    t: Option<Duration>,
    f: F,
) -> impl Future<Output = Option<F::Output>> {
    match t {
        Some(t) => Either::Left(tokio::time::timeout(t, f).map(Result::ok as fn(_) -> _)),
        None => Either::Right(f.map(Some as fn(_) -> _)),
    }
}

/// `f` run until `deadline`, if any; a miss is an upstream timeout.
pub(crate) fn until<T, F>(
    deadline: Option<Instant>,
    f: F,
) -> impl Future<Output = Result<T, ProxyError>>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    match deadline {
        Some(d) => Either::Left(
            tokio::time::timeout_at(d, f)
                .map((|r: Result<_, _>| r.unwrap_or(Err(ProxyError::Timeout))) as fn(_) -> _),
        ),
        None => Either::Right(f),
    }
}

/// The shorter of two optional bounds.
pub(crate) fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bounds_apply_only_when_set() {
        let slow = || tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(within_opt(Some(Duration::from_secs(1)), slow()).await, None);
        assert_eq!(within_opt(None, slow()).await, Some(()));
        assert_eq!(
            within_opt(Some(Duration::from_secs(20)), slow()).await,
            Some(())
        );
        let late = Instant::now() + Duration::from_secs(1);
        let r = until(Some(late), async {
            slow().await;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(ProxyError::Timeout)));
        let r: Result<u8, _> = until(None, async { Ok(7) }).await;
        assert!(matches!(r, Ok(7)));
    }
}
