//! What the webhook knows about namespaces: a watched cache (metadata only), so a review costs
//! no API call, and the mirror of the `infermesh.io/inject` annotation onto a label.
//!
//! Why the mirror: a MutatingWebhookConfiguration selects namespaces by label only, and users
//! enable injection with an annotation. The webhook copies `infermesh.io/inject=enabled` to the
//! label of the same name (and removes the label when the annotation goes), so the
//! configuration can apply `failurePolicy: Fail` to exactly the namespaces that asked for
//! injection, while `kubectl annotate namespace ml infermesh.io/inject=enabled` stays the only
//! step. The annotation is the source of truth; the label is managed by the webhook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use infermesh_crds::INJECT_ANNOTATION;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::inject::NamespaceInfo;

/// The label mirrored from the annotation (same key).
pub const INJECT_LABEL: &str = INJECT_ANNOTATION;

type NsMeta = PartialObjectMeta<Namespace>;

#[derive(Clone)]
pub struct NamespaceCache {
    source: Source,
    ready: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Source {
    /// No cluster: these namespaces are enabled, every other one is not.
    Static(Vec<String>),
    Watched {
        store: Store<NsMeta>,
        api: Box<Api<NsMeta>>,
    },
}

impl NamespaceCache {
    pub fn standalone(enabled: Vec<String>) -> Self {
        Self {
            source: Source::Static(enabled),
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// A cache fed by a watch of the namespaces matching `label_selector`, and the future that
    /// drives the watch (and the label mirror when `mirror_label`); run it for the process life.
    pub fn watch(
        client: kube::Client,
        label_selector: Option<String>,
        mirror_label: bool,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<Namespace> = Api::all(client.clone());
        // Metadata-only requests: the cache holds names, labels and annotations, nothing else.
        let meta: Api<NsMeta> = Api::all(client);
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let mut cfg = watcher::Config::default();
        if let Some(sel) = &label_selector {
            cfg = cfg.labels(sel);
        }
        let cache = Self {
            source: Source::Watched {
                store: store.clone(),
                api: Box::new(meta.clone()),
            },
            ready: ready.clone(),
        };
        let driver = async move {
            let became_ready = {
                let store = store.clone();
                let ready = ready.clone();
                async move {
                    if store.wait_until_ready().await.is_ok() {
                        ready.store(true, Ordering::Relaxed);
                        tracing::info!(namespaces = store.len(), "namespace cache synced");
                    }
                }
            };
            tokio::spawn(became_ready);
            let stream = watcher(meta, cfg)
                .default_backoff()
                .modify(|ns| ns.managed_fields_mut().clear())
                .reflect(writer)
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ns) if mirror_label => mirror(&api, &ns).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "namespace watch failed; retrying with backoff")
                    }
                }
            }
        };
        (cache, driver)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The namespace's annotations from the cache; on a miss (a namespace created a moment ago),
    /// one bounded GET. An error when neither can tell: the review then fails and the
    /// configuration's failurePolicy decides, instead of a silent "not enabled".
    pub async fn info(&self, name: &str) -> Result<NamespaceInfo, LookupError> {
        let mut info = NamespaceInfo::new(name);
        match &self.source {
            Source::Static(enabled) => {
                if enabled.iter().any(|n| n == name) {
                    info = NamespaceInfo::enabled(name);
                }
            }
            Source::Watched { store, api } => {
                let key = reflector::ObjectRef::new(name);
                if let Some(ns) = store.get(&key) {
                    info.annotations = ns.annotations().clone();
                } else {
                    match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
                        Ok(Ok(Some(ns))) => info.annotations = ns.annotations().clone(),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => return Err(LookupError::Api(name.into(), e)),
                        Err(_) => return Err(LookupError::Timeout(name.into())),
                    }
                }
            }
        }
        Ok(info)
    }
}

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("namespace {0} is not in the cache and reading it failed: {1}")]
    Api(String, kube::Error),
    #[error("namespace {0} is not in the cache and reading it timed out")]
    Timeout(String),
}

/// The label change that makes the label follow the annotation: `Some(Some(v))` set,
/// `Some(None)` remove, `None` nothing to do.
pub fn label_change(ns: &NsMeta) -> Option<Option<&'static str>> {
    let annotated = ns.annotations().get(INJECT_ANNOTATION).map(String::as_str) == Some("enabled");
    let labelled = ns.labels().get(INJECT_LABEL).map(String::as_str) == Some("enabled");
    match (annotated, labelled) {
        (true, false) => Some(Some("enabled")),
        (false, true) => Some(None),
        _ => None,
    }
}

async fn mirror(api: &Api<Namespace>, ns: &NsMeta) {
    let Some(change) = label_change(ns) else {
        return;
    };
    let name = ns.name_any();
    let patch = json!({ "metadata": { "labels": { INJECT_LABEL: change } } });
    match api
        .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(namespace = %name, label = ?change, "mirrored {INJECT_ANNOTATION} to the namespace label")
        }
        Err(e) => {
            tracing::warn!(namespace = %name, error = %e, "could not mirror the injection label; failurePolicy Fail will not cover this namespace until it is set")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ns(annotation: Option<&str>, label: Option<&str>) -> NsMeta {
        let mut m = NsMeta::default();
        m.metadata.name = Some("ml".into());
        let map = |v: Option<&str>| {
            v.map(|v| BTreeMap::from([(INJECT_ANNOTATION.to_string(), v.to_string())]))
        };
        m.metadata.annotations = map(annotation);
        m.metadata.labels = map(label);
        m
    }

    #[test]
    fn label_follows_the_annotation() {
        assert_eq!(
            label_change(&ns(Some("enabled"), None)),
            Some(Some("enabled"))
        );
        assert_eq!(label_change(&ns(Some("enabled"), Some("enabled"))), None);
        assert_eq!(label_change(&ns(None, Some("enabled"))), Some(None));
        assert_eq!(
            label_change(&ns(Some("disabled"), Some("enabled"))),
            Some(None)
        );
        assert_eq!(label_change(&ns(None, None)), None);
        assert_eq!(label_change(&ns(Some("yes"), None)), None);
    }

    #[tokio::test]
    async fn standalone_namespaces() {
        let c = NamespaceCache::standalone(vec!["ml".into()]);
        assert!(c.is_ready());
        assert_eq!(c.info("ml").await.ok(), Some(NamespaceInfo::enabled("ml")));
        assert_eq!(
            c.info("other").await.ok(),
            Some(NamespaceInfo::new("other"))
        );
    }
}
