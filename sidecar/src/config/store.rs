//! The config in force: a compiled [`RoutingTable`] behind an atomic pointer. Readers take a
//! snapshot per request (in-flight requests keep theirs); a new config is parsed, validated and
//! compiled off to the side and swapped in whole, or refused with a log line and a metric while the
//! last good table keeps serving.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use infermesh_crds::mesh::MeshConfig;
use tokio::time::Instant;

use super::compile::{CompileContext, ConfigError, compile};
use super::table::RoutingTable;
use crate::endpoint::state::EwmaPolicy;
use crate::metrics::Metrics;

pub(crate) struct ConfigStore {
    table: ArcSwap<RoutingTable>,
    loaded: AtomicBool,
    /// Serialises compile-and-swap so two sources never interleave (never held across an await).
    writer: Mutex<()>,
    pub(crate) metrics: Arc<Metrics>,
    pod_ip: Option<IpAddr>,
    model_host: IpAddr,
    ewma: EwmaPolicy,
}

impl ConfigStore {
    pub(crate) fn new(metrics: Arc<Metrics>, pod_ip: Option<IpAddr>, ewma: EwmaPolicy) -> Self {
        Self {
            table: ArcSwap::from_pointee(RoutingTable::empty()),
            loaded: AtomicBool::new(false),
            writer: Mutex::new(()),
            metrics,
            pod_ip,
            model_host: IpAddr::from([127, 0, 0, 1]),
            ewma,
        }
    }

    /// The local model listens on `host` instead of 127.0.0.1 (`--model-host`).
    pub(crate) fn with_model_host(mut self, host: IpAddr) -> Self {
        self.model_host = host;
        self
    }

    /// A snapshot for one request; do not hold it across an await.
    pub(crate) fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    pub(crate) fn current(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Parses, validates, compiles and swaps in `json`; returns the revision now in force. On error
    /// the previous table stays and the rejection is counted.
    pub(crate) fn apply_json(&self, json: &[u8], source: &str) -> Result<String, ConfigError> {
        let result = serde_json::from_slice::<MeshConfig>(json)
            .map_err(ConfigError::from)
            .and_then(|mut cfg| {
                // The operator's revision for the same services, so a hand-written config names
                // its content the way a generated one does.
                if cfg.revision.is_empty() {
                    cfg.revision = MeshConfig::revision_of(&cfg.services);
                }
                self.apply(cfg)
            });
        match &result {
            Ok(rev) => tracing::info!(source, revision = %rev, "mesh config applied"),
            Err(e) => {
                self.metrics.config_rejections.inc();
                tracing::error!(source, error = %e, "mesh config refused; keeping the last good one");
            }
        }
        result
    }

    fn apply(&self, cfg: MeshConfig) -> Result<String, ConfigError> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.table.load_full();
        if self.is_loaded() && previous.config == cfg {
            return Ok(previous.revision.clone());
        }
        let cx = CompileContext {
            metrics: &self.metrics,
            pod_ip: self.pod_ip,
            model_host: self.model_host,
            ewma: self.ewma,
            now: Instant::now(),
        };
        let table = compile(cfg, &previous, &cx);
        let revision = table.revision.clone();
        forget_what_left(&self.metrics, &previous, &table);
        self.metrics
            .config_services_refused
            .set(table.refused.len() as i64);
        self.table.store(Arc::new(table));
        self.loaded.store(true, Ordering::Release);
        self.metrics.config_reloads.inc();
        self.metrics.set_revision(&revision);
        Ok(revision)
    }
}

/// Removes the metric series of the services and variants `previous` had and `next` lacks, so
/// `/metrics` shows what is in force (and its size follows the config, not its history).
fn forget_what_left(metrics: &Metrics, previous: &RoutingTable, next: &RoutingTable) {
    for old in &previous.services {
        let now = next.services.iter().find(|s| s.name == old.name);
        for v in &old.variants {
            if !now.is_some_and(|n| n.variants.iter().any(|nv| nv.name == v.name)) {
                metrics.forget_variant(&old.name, &v.name);
            }
        }
        if now.is_none() {
            metrics.forget_service(&old.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"revision":"r1","services":[{"name":"llm","port":8000,
        "variants":[{"name":"a","weight":100,"endpoints":[{"address":"127.0.0.1:9000"}]}]}]}"#;

    #[tokio::test]
    async fn the_series_of_a_variant_or_service_that_left_are_removed() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        let two = GOOD.replace(
            r#"{"name":"a","weight":100,"endpoints":[{"address":"127.0.0.1:9000"}]}"#,
            r#"{"name":"a","weight":50,"endpoints":[{"address":"127.0.0.1:9000"}]},
               {"name":"b","weight":50,"endpoints":[{"address":"127.0.0.1:9001"}]}"#,
        );
        s.apply_json(two.as_bytes(), "test").unwrap();
        let text = s.metrics.encode();
        assert!(text.contains(r#"variant="b""#), "{text}");
        s.apply_json(GOOD.as_bytes(), "test").unwrap();
        let text = s.metrics.encode();
        assert!(!text.contains(r#"variant="b""#), "{text}");
        assert!(text.contains(r#"service="llm",variant="a""#), "{text}");
        s.apply_json(br#"{"revision":"r0","services":[]}"#, "test")
            .unwrap();
        let text = s.metrics.encode();
        assert!(!text.contains(r#"service="llm""#), "{text}");
    }

    #[tokio::test]
    async fn invalid_config_keeps_the_last_good_one() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        assert!(!s.is_loaded());
        assert!(s.apply_json(b"{not json", "test").is_err());
        assert!(!s.is_loaded());
        assert_eq!(s.apply_json(GOOD.as_bytes(), "test").unwrap(), "r1");
        let before = s.current();
        let bad = GOOD.replace("\"port\":8000", "\"retires\":{},\"port\":8000");
        assert!(s.apply_json(bad.as_bytes(), "test").is_err());
        assert!(Arc::ptr_eq(&before, &s.current()));
        assert_eq!(s.metrics.config_rejections.get(), 2);
        assert_eq!(s.metrics.config_reloads.get(), 1);
    }

    #[tokio::test]
    async fn a_service_breaking_a_rule_is_counted_and_named_not_a_refused_document() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        let bad = GOOD.replace("\"weight\":100", "\"weight\":0");
        assert_eq!(s.apply_json(bad.as_bytes(), "test").unwrap(), "r1");
        assert!(
            s.is_loaded(),
            "the document is in force, without the service"
        );
        assert!(s.current().refused["llm"].contains("weight 0"));
        assert_eq!(s.metrics.config_services_refused.get(), 1);
        assert_eq!(s.metrics.config_rejections.get(), 0);
        s.apply_json(GOOD.replace("r1", "r2").as_bytes(), "test")
            .unwrap();
        assert_eq!(s.metrics.config_services_refused.get(), 0);
    }

    #[tokio::test]
    async fn endpoint_state_and_connections_survive_a_reload() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        s.apply_json(GOOD.as_bytes(), "test").unwrap();
        let (old, old_conns, old_local) = {
            let t = s.current();
            let ep = &t.services[0].variants[0].endpoints[0];
            (
                ep.state.clone(),
                ep.conns.clone(),
                t.services[0].local.clone(),
            )
        };
        let _busy = old.start();
        let next = GOOD.replace("r1", "r2").replace(
            r#"[{"address":"127.0.0.1:9000"}]"#,
            r#"[{"address":"127.0.0.1:9000"},{"address":"127.0.0.1:9001"}]"#,
        );
        assert_eq!(s.apply_json(next.as_bytes(), "test").unwrap(), "r2");
        let t = s.current();
        let eps = &t.services[0].variants[0].endpoints;
        assert!(Arc::ptr_eq(&eps[0].state, &old));
        assert!(Arc::ptr_eq(&eps[0].conns, &old_conns));
        assert!(Arc::ptr_eq(&t.services[0].local, &old_local));
        assert_eq!(eps[1].conns.authority().as_str(), "127.0.0.1:9001");
        assert_eq!(eps[0].state.in_flight(), 1);
        assert_eq!(eps[1].state.in_flight(), 0);
        // A new port is a new address: its local connections start afresh.
        let moved = next
            .replace("r2", "r3")
            .replace("\"port\":8000", "\"port\":8001");
        s.apply_json(moved.as_bytes(), "test").unwrap();
        let t = s.current();
        assert!(!Arc::ptr_eq(&t.services[0].local, &old_local));
        assert_eq!(t.services[0].local.authority().as_str(), "127.0.0.1:8001");
    }

    #[tokio::test]
    async fn missing_revision_is_a_content_hash() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        let json = GOOD.replace(r#""revision":"r1","#, "");
        let r = s.apply_json(json.as_bytes(), "test").unwrap();
        assert_eq!(r.len(), 16);
        assert_eq!(s.apply_json(json.as_bytes(), "test").unwrap(), r);
    }

    #[tokio::test]
    async fn missing_revision_is_the_mesh_revision_of_the_services() {
        let s = ConfigStore::new(Arc::new(Metrics::new()), None, EwmaPolicy::default());
        let json = GOOD.replace(r#""revision":"r1","#, "");
        let cfg: MeshConfig = serde_json::from_str(&json).unwrap();
        let r = s.apply_json(json.as_bytes(), "test").unwrap();
        assert_eq!(r, MeshConfig::revision_of(&cfg.services));
        assert_eq!(s.current().revision, r);
    }
}
