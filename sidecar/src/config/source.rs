//! Where mesh configs come from: a file (`--config-file`, polled for changes) or the generated
//! ConfigMap `infermesh-mesh-config` (key `mesh.json`) in the pod's namespace, watched through the
//! Kubernetes API with the pod's service account or KUBECONFIG. Either way each new document goes
//! to the [`ConfigStore`], which keeps the last good config when one is refused or the API is
//! unreachable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use infermesh_crds::mesh::{CONFIG_MAP_KEY, CONFIG_MAP_NAME};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::store::ConfigStore;

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

/// Loads the file once; true when a config was applied.
pub(crate) fn load_file(path: &Path, store: &ConfigStore) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => store
            .apply_json(&bytes, &path.display().to_string())
            .is_ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "the mesh config file does not exist yet; waiting for it");
            false
        }
        Err(e) => {
            store.metrics.config_rejections.inc();
            tracing::error!(path = %path.display(), error = %e, "cannot read the mesh config file; check --config-file");
            false
        }
    }
}

/// Polls the file's modification time and size, reloading on change, until shutdown.
pub(crate) async fn watch_file(
    path: PathBuf,
    interval: Duration,
    store: Arc<ConfigStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = stamp(&path);
        if now.is_some() && now != last {
            last = now;
            load_file(&path, &store);
        }
    }
}

/// The mesh config document inside the generated ConfigMap, if the ConfigMap is the right one.
fn mesh_document(cm: &ConfigMap) -> Option<&str> {
    if cm.metadata.name.as_deref() != Some(CONFIG_MAP_NAME) {
        return None;
    }
    cm.data.as_ref()?.get(CONFIG_MAP_KEY).map(String::as_str)
}

/// Watches the namespace's mesh ConfigMap until shutdown. Watch errors back off and retry (kube's
/// default backoff); a deleted ConfigMap leaves the last config in force.
pub(crate) async fn watch_configmap(
    namespace: String,
    store: Arc<ConfigStore>,
    mut shutdown: watch::Receiver<bool>,
) {
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
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}"));
    let events = watcher(api, cfg).default_backoff();
    futures::pin_mut!(events);
    let source = format!("configmap {namespace}/{CONFIG_MAP_NAME}");
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = shutdown.changed() => return,
        };
        match ev {
            None => return,
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                match mesh_document(&cm) {
                    Some(json) => {
                        let _ = store.apply_json(json.as_bytes(), &source);
                    }
                    None => {
                        store.metrics.config_rejections.inc();
                        tracing::error!(%source, "the ConfigMap has no key {CONFIG_MAP_KEY}; keeping the last good config");
                    }
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(%source, "the mesh ConfigMap was deleted; keeping the last good config");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(%source, error = %e, "mesh config watch failed; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::state::EwmaPolicy;
    use crate::metrics::Metrics;

    fn cm(name: &str, key: &str, json: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.data = Some([(key.to_string(), json.to_string())].into());
        cm
    }

    #[test]
    fn reads_mesh_json_from_the_generated_config_map_only() {
        let doc = r#"{"services":[]}"#;
        assert_eq!(
            mesh_document(&cm(CONFIG_MAP_NAME, CONFIG_MAP_KEY, doc)),
            Some(doc)
        );
        assert_eq!(mesh_document(&cm(CONFIG_MAP_NAME, "other.json", doc)), None);
        assert_eq!(
            mesh_document(&cm("something-else", CONFIG_MAP_KEY, doc)),
            None
        );
        assert_eq!(mesh_document(&ConfigMap::default()), None);
    }

    #[tokio::test]
    async fn file_source_reloads_on_change() {
        let dir = std::env::temp_dir().join(format!("infermesh-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.json");
        let cfg = |rev: &str| {
            format!(
                r#"{{"revision":"{rev}","services":[{{"name":"llm","port":1,"variants":[{{"name":"v","weight":1}}]}}]}}"#
            )
        };
        std::fs::write(&path, cfg("one")).unwrap();
        let store = Arc::new(ConfigStore::new(
            Arc::new(Metrics::new()),
            None,
            EwmaPolicy::default(),
        ));
        assert!(load_file(&path, &store));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(watch_file(
            path.clone(),
            Duration::from_millis(10),
            store.clone(),
            rx,
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(&path, cfg("two-longer")).unwrap();
        let t = std::time::Instant::now();
        while store.current().revision != "two-longer" {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "file change not picked up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
