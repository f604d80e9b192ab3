//! Watching one named object of the pod's namespace through the Kubernetes API (the mesh
//! ConfigMap, the mesh key Secret), with the pod's service account or KUBECONFIG, until shutdown.
//! Watch errors back off and retry (kube's default backoff).

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// What the watch saw of the object.
pub(crate) enum Seen<K> {
    /// Created, changed, or found by a (re)list.
    Found(K),
    /// A (re)list found no object of that name.
    Missing,
    /// The object was deleted.
    Deleted,
    /// The API server refused this pod's service account the read (403).
    Forbidden,
    /// Any other failure; the watch retries.
    Failed(watcher::Error),
}

/// Calls `seen` with each thing the watch of `name` in `namespace` sees, until shutdown.
pub(crate) async fn watch_named<K>(
    namespace: &str,
    name: &str,
    mut shutdown: watch::Receiver<bool>,
    mut seen: impl FnMut(Seen<K>),
) where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let client = loop {
        match kube::Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a Kubernetes client (in-cluster service account or KUBECONFIG); retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let api: Api<K> = Api::namespaced(client, namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, cfg).default_backoff();
    futures::pin_mut!(events);
    // Whether the current (re)list found the object.
    let mut listed = false;
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = shutdown.changed() => return,
        };
        match ev {
            None => return,
            Some(Ok(watcher::Event::Init)) => listed = false,
            Some(Ok(watcher::Event::InitDone)) if !listed => seen(Seen::Missing),
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                listed = true;
                seen(Seen::Found(o));
            }
            Some(Ok(watcher::Event::Delete(_))) => seen(Seen::Deleted),
            Some(Ok(_)) => {}
            Some(Err(e)) if is_forbidden(&e) => seen(Seen::Forbidden),
            Some(Err(e)) => seen(Seen::Failed(e)),
        }
    }
}

/// The API server refused the read (403).
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s.is_forbidden(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_403_counts_as_not_allowed_to_read() {
        // As the API server writes them.
        let status = |code: u16| {
            Box::new(kube::core::Status {
                code,
                reason: if code == 403 {
                    "Forbidden"
                } else {
                    "InternalError"
                }
                .into(),
                ..Default::default()
            })
        };
        assert!(is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_forbidden(&watcher::Error::WatchError(status(403))));
        assert!(!is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(500))
        )));
        assert!(!is_forbidden(&watcher::Error::NoResourceVersion));
    }
}
