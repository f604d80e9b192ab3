//! Where mesh configs come from: a file (`--config-file`, polled for changes) or the generated
//! ConfigMap `infermesh-mesh-config` (key `mesh.json`) in the pod's namespace, watched through the
//! Kubernetes API with the pod's service account or KUBECONFIG. Either way each new document goes
//! to the [`ConfigStore`], which keeps the last good config when one is refused or the API is
//! unreachable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use infermesh_crds::mesh::{CONFIG_MAP_KEY, CONFIG_MAP_NAME};
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;

use super::store::ConfigStore;
use crate::named_watch::{Seen, watch_named};

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

/// Loads the file, then polls its modification time and size, reloading on change, until
/// shutdown. The file's stamp is taken before the first load, when this is called, not when the
/// task first runs: a change written in between would otherwise look like the version loaded,
/// and be missed until the next one.
pub(crate) fn watch_file(
    path: PathBuf,
    interval: Duration,
    store: Arc<ConfigStore>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let last = stamp(&path);
    load_file(&path, &store);
    poll_file(path, last, interval, store, shutdown)
}

async fn poll_file(
    path: PathBuf,
    mut last: Option<Stamp>,
    interval: Duration,
    store: Arc<ConfigStore>,
    mut shutdown: watch::Receiver<bool>,
) {
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

/// Watches the namespace's mesh ConfigMap until shutdown; a deleted ConfigMap leaves the last
/// config in force.
///
/// A namespace can have injected pods before it has any ModelService: then there is no ConfigMap
/// yet, and the pod's service account is not yet allowed to read one (the operator grants that
/// with the namespace's first ModelService). Either way, with nothing loaded, the sidecar serves
/// an empty config (every request answered `unknown-service`) and becomes ready, so the pod
/// starts; the watch goes on and picks the config up once it exists.
pub(crate) async fn watch_configmap(
    namespace: String,
    store: Arc<ConfigStore>,
    shutdown: watch::Receiver<bool>,
) {
    let source = format!("configmap {namespace}/{CONFIG_MAP_NAME}");
    watch_named::<ConfigMap>(&namespace, CONFIG_MAP_NAME, shutdown, |seen| match seen {
        Seen::Found(cm) => match mesh_document(&cm) {
            Some(json) => {
                let _ = store.apply_json(json.as_bytes(), &source);
            }
            None => {
                store.metrics.config_rejections.inc();
                tracing::error!(%source, "the ConfigMap has no key {CONFIG_MAP_KEY}; keeping the last good config");
            }
        },
        Seen::Missing => serve_empty(
            &store,
            &source,
            "there is no mesh ConfigMap in this namespace yet",
        ),
        Seen::Deleted => {
            tracing::warn!(%source, "the mesh ConfigMap was deleted; keeping the last good config");
        }
        Seen::Forbidden => serve_empty(
            &store,
            &source,
            "this pod's service account may not read it yet (granted with the namespace's first ModelService)",
        ),
        Seen::Failed(e) => {
            tracing::warn!(%source, error = %e, "mesh config watch failed; retrying with backoff");
        }
    })
    .await;
}

/// Serves the empty config when nothing is loaded yet (see [`watch_configmap`]).
fn serve_empty(store: &ConfigStore, source: &str, why: &str) {
    if store.is_loaded() {
        return;
    }
    tracing::info!(%source, why, "no mesh config to read: serving with no ModelService until one appears");
    let _ = store.apply_json(br#"{"services":[]}"#, source);
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

    #[tokio::test]
    async fn nothing_to_read_serves_an_empty_config_once_and_never_over_a_real_one() {
        let store = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        serve_empty(&store, "test", "none yet");
        assert!(store.is_loaded(), "ready with no ModelService");
        assert!(store.current().services.is_empty());
        let doc = r#"{"revision":"r1","services":[{"name":"llm","port":1,"variants":[{"name":"v","weight":1}]}]}"#;
        store.apply_json(doc.as_bytes(), "test").unwrap();
        serve_empty(&store, "test", "a 403 later");
        assert_eq!(
            store.current().revision,
            "r1",
            "a real config is never replaced"
        );
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

    /// A change written after the sidecar loaded the file but before its poll task first ran was
    /// taken for the version loaded, and never applied.
    #[tokio::test]
    async fn a_change_before_the_poll_task_runs_is_not_missed() {
        let dir = std::env::temp_dir().join(format!("infermesh-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.json");
        std::fs::write(&path, r#"{"revision":"one","services":[]}"#).unwrap();
        let store = Arc::new(ConfigStore::new(
            Arc::new(Metrics::new()),
            None,
            EwmaPolicy::default(),
        ));
        let (tx, rx) = watch::channel(false);
        let watching = watch_file(path.clone(), Duration::from_millis(10), store.clone(), rx);
        assert_eq!(store.current().revision, "one", "loaded at once");
        std::fs::write(&path, r#"{"revision":"two-longer","services":[]}"#).unwrap();
        let task = tokio::spawn(watching);
        let t = std::time::Instant::now();
        while store.current().revision != "two-longer" {
            assert!(t.elapsed() < Duration::from_secs(2), "change missed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
