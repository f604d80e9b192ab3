//! Namespace publication bookkeeping: what the operator last published in each namespace, and the
//! decisions taken from it without I/O — which mesh config a namespace should carry, whether it
//! must be written again, and which revision and time a ModelService's entry keeps.
//!
//! All of it lives in one map, [`Publications`], namespace → [`Namespace`]. A namespace's config is
//! computed and written by one reconcile at a time (its async lock), so the last write is always
//! computed from the freshest caches; the republish mark sits beside the lock because the watch
//! mappers that set it cannot wait for one.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use infermesh_crds::{
    ModelService, ModelServiceStatus,
    mesh::{CONFIG_MAP_KEY, MeshConfig, ServiceConfig},
};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::{
    config::service_config,
    endpoints::resolve,
    overlap::{names, own_pods},
    screening::{MAX_CONFIG_BYTES, Screened, screen},
};

/// A published config is re-applied at least this often even if unchanged (repairs manual edits).
pub const REPUBLISH: Duration = Duration::from_secs(60);

/// Every namespace's publication state, created on first use.
#[derive(Default)]
pub struct Publications(Mutex<HashMap<String, Arc<Namespace>>>);

impl Publications {
    /// The state of `ns`; lock its [`Namespace::published`] before computing or writing its config.
    pub fn namespace(&self, ns: &str) -> Arc<Namespace> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(ns.to_string()).or_default().clone()
    }

    /// A published object of `ns` was deleted by hand: its next publication writes even an
    /// unchanged config.
    pub fn mark_for_republish(&self, ns: &str) {
        self.namespace(ns).republish.store(true, Ordering::Relaxed);
    }
}

/// One namespace: its published state behind the lock that serialises its writes, and the mark
/// set when one of its published objects was deleted.
#[derive(Default)]
pub struct Namespace {
    pub published: tokio::sync::Mutex<Published>,
    republish: AtomicBool,
}

impl Namespace {
    /// Takes the republish mark: true once per deletion seen.
    pub fn take_republish(&self) -> bool {
        self.republish.swap(false, Ordering::Relaxed)
    }
}

/// When a ModelService's entry last changed, and the revision of the config that carried the
/// change: what its status reports as `revision` and `configPublishedAt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamp {
    pub revision: String,
    pub at: Time,
}

/// The last mesh config published in one namespace.
#[derive(Debug, Default)]
pub struct Published {
    config: Option<MeshConfig>,
    /// When `config` was last written successfully; `None` until then, or while a write is due.
    at: Option<Instant>,
    stamps: HashMap<String, Stamp>,
}

impl Published {
    /// The entries of the last config this process published, by service name; `None` when it has
    /// published none in this namespace (after a restart: read them from the cluster).
    pub fn previous_entries(&self) -> Option<HashMap<String, ServiceConfig>> {
        self.config.as_ref().map(|c| {
            c.services
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect()
        })
    }

    /// `config` is what was last written, less than [`REPUBLISH`] ago, and nothing published was
    /// deleted since (`republish`): no need to write it again.
    pub fn is_fresh(&self, config: &MeshConfig, republish: bool, now: Instant) -> bool {
        !republish
            && self.at.is_some_and(|at| {
                now.saturating_duration_since(at) < REPUBLISH
                    && self.config.as_ref() == Some(config)
            })
    }

    /// A write is under way: until it succeeds, the next publication must write again.
    pub fn expire(&mut self) {
        self.at = None;
    }

    /// `config` was written at `now`. Says whether it differs from the config known before.
    pub fn written(&mut self, config: &MeshConfig, now: Instant) -> bool {
        self.at = Some(now);
        self.config.as_ref() != Some(config)
    }

    /// `config` is the namespace's current config (written or found fresh).
    pub fn current(&mut self, config: MeshConfig) {
        self.config = Some(config);
    }

    /// The stamp of `name`'s entry in a config of revision `revision`: kept from the last known
    /// stamp (this process's, else the one its status reports) while the entry is unchanged, a new
    /// one (`revision`, `now`) when it changed or none is known. Remembered for the next time.
    pub fn stamp(
        &mut self,
        name: &str,
        changed: bool,
        status: Option<&ModelServiceStatus>,
        revision: &str,
        now: &Time,
    ) -> Stamp {
        let kept = self.stamps.get(name).cloned().or_else(|| {
            let s = status?;
            Some(Stamp {
                revision: s.revision.clone()?,
                at: s.config_published_at.clone()?,
            })
        });
        let stamp = match kept {
            Some(s) if !changed => s,
            _ => Stamp {
                revision: revision.to_string(),
                at: now.clone(),
            },
        };
        self.stamps.insert(name.to_string(), stamp.clone());
        stamp
    }

    /// `name` left the namespace's config.
    pub fn forget(&mut self, name: &str) {
        self.stamps.remove(name);
    }
}

/// The config `ns` should carry: one entry per ModelService in `members`, with the endpoints
/// resolved from `pods` (less those labelled for another member), screened (`screening`) against
/// the entries last published (`previous`).
pub fn desired(
    ns: &str,
    members: &[Arc<ModelService>],
    pods: &[Arc<Pod>],
    previous: &HashMap<String, ServiceConfig>,
) -> Screened {
    let names = names(members);
    let generated = members
        .iter()
        .map(|m| {
            let name = m.metadata.name.as_deref().unwrap_or_default();
            let own = own_pods(name, &names, pods.iter().map(|p| p.as_ref()));
            service_config(m, &resolve(&m.spec, ns, own))
        })
        .collect();
    screen(generated, previous, MAX_CONFIG_BYTES)
}

/// `name`'s entry differs between `previous` entries and `config` (appeared, changed or left).
pub fn entry_changed(
    previous: &HashMap<String, ServiceConfig>,
    config: &MeshConfig,
    name: &str,
) -> bool {
    previous.get(name) != config.services.iter().find(|s| s.name == name)
}

/// The entries of a mesh ConfigMap as found in the cluster, by service name; none when it is
/// missing or does not parse (then every entry counts as changed).
pub fn entries_of(cm: Option<ConfigMap>) -> HashMap<String, ServiceConfig> {
    cm.and_then(|cm| cm.data)
        .and_then(|d| d.get(CONFIG_MAP_KEY).cloned())
        .and_then(|json| serde_json::from_str::<MeshConfig>(&json).ok())
        .map(|c| {
            c.services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::fixtures::{model_service, pod, spec_with};

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn config(weight: i32) -> MeshConfig {
        let ms = Arc::new(model_service(
            "llm",
            "ns",
            spec_with(&[("stable", weight, "v1")]),
        ));
        desired("ns", &[ms], &[], &HashMap::new()).config
    }

    #[test]
    fn desired_config_has_one_entry_per_member_with_its_endpoints() {
        let a = Arc::new(model_service(
            "a",
            "ns",
            spec_with(&[("stable", 100, "v1")]),
        ));
        let b = Arc::new(model_service(
            "b",
            "ns",
            spec_with(&[("stable", 100, "v2")]),
        ));
        let pods = [
            Arc::new(pod("p1", "ns", "v1", Some("198.18.64.5"), true, true)),
            Arc::new(pod("p2", "other", "v2", Some("198.18.64.6"), true, true)),
        ];
        let cfg = desired("ns", &[b, a], &pods, &HashMap::new()).config;
        let names: Vec<_> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(cfg.services[0].variants[0].endpoints.len(), 1);
        assert!(
            cfg.services[1].variants[0].endpoints.is_empty(),
            "a pod of another namespace is no endpoint"
        );
    }

    #[test]
    fn a_written_config_is_fresh_until_republish_is_due() {
        let now = Instant::now();
        let mut p = Published::default();
        let cfg = config(100);
        assert!(!p.is_fresh(&cfg, false, now), "nothing written yet");
        assert!(p.written(&cfg, now), "new to this namespace");
        p.current(cfg.clone());
        assert!(p.is_fresh(&cfg, false, now + Duration::from_secs(59)));
        assert!(
            !p.is_fresh(&cfg, false, now + REPUBLISH),
            "repairs hand edits"
        );
        assert!(
            !p.is_fresh(&cfg, true, now),
            "a deleted object is rewritten"
        );
        assert!(
            !p.is_fresh(&config(50), false, now),
            "a changed config is written"
        );
        assert!(!p.written(&cfg, now), "the same config again");
        p.expire();
        assert!(!p.is_fresh(&cfg, false, now), "a failed write is retried");
    }

    #[test]
    fn previous_entries_are_known_only_after_a_publication() {
        let mut p = Published::default();
        assert!(p.previous_entries().is_none());
        p.current(config(100));
        let prev = p.previous_entries().unwrap();
        assert_eq!(prev["llm"].variants[0].weight, 100);
        assert!(!entry_changed(&prev, &config(100), "llm"));
        assert!(entry_changed(&prev, &config(50), "llm"));
        assert!(
            !entry_changed(&prev, &config(100), "other"),
            "absent from both"
        );
        assert!(
            entry_changed(&prev, &MeshConfig::new(vec![]), "llm"),
            "an entry that left"
        );
        assert!(
            entry_changed(&HashMap::new(), &config(100), "llm"),
            "new entry"
        );
    }

    #[test]
    fn an_unchanged_entry_keeps_its_stamp_and_a_changed_one_is_restamped() {
        let mut p = Published::default();
        let first = p.stamp("llm", true, None, "r1", &t(1));
        assert_eq!(
            first,
            Stamp {
                revision: "r1".into(),
                at: t(1)
            }
        );
        // Another ModelService changed the namespace's revision, not this entry.
        assert_eq!(p.stamp("llm", false, None, "r2", &t(2)), first);
        let changed = p.stamp("llm", true, None, "r3", &t(3));
        assert_eq!(
            (changed.revision.as_str(), changed.at.clone()),
            ("r3", t(3))
        );
        p.forget("llm");
        assert_eq!(p.stamp("llm", false, None, "r4", &t(4)).revision, "r4");
    }

    #[test]
    fn after_a_restart_the_stamp_is_kept_from_the_status() {
        let mut p = Published::default();
        let status = ModelServiceStatus {
            revision: Some("r1".into()),
            config_published_at: Some(t(1)),
            ..Default::default()
        };
        let kept = p.stamp("llm", false, Some(&status), "r2", &t(2));
        assert_eq!((kept.revision.as_str(), kept.at), ("r1", t(1)));
        let without_time = ModelServiceStatus {
            revision: Some("r1".into()),
            ..Default::default()
        };
        let mut q = Published::default();
        assert_eq!(
            q.stamp("llm", false, Some(&without_time), "r2", &t(2))
                .revision,
            "r2"
        );
    }

    #[test]
    fn entries_are_read_back_from_the_config_map() {
        let cfg = config(100);
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(
                CONFIG_MAP_KEY.to_string(),
                serde_json::to_string(&cfg).unwrap(),
            )])),
            ..Default::default()
        };
        let entries = entries_of(Some(cm));
        assert_eq!(entries["llm"], cfg.services[0]);
        assert!(entries_of(None).is_empty());
        let garbled = ConfigMap {
            data: Some(BTreeMap::from([(
                CONFIG_MAP_KEY.to_string(),
                "{".to_string(),
            )])),
            ..Default::default()
        };
        assert!(entries_of(Some(garbled)).is_empty());
    }

    #[test]
    fn one_map_one_namespace_state_and_a_republish_mark_taken_once() {
        let pubs = Publications::default();
        assert!(Arc::ptr_eq(&pubs.namespace("ns"), &pubs.namespace("ns")));
        assert!(!Arc::ptr_eq(
            &pubs.namespace("ns"),
            &pubs.namespace("other")
        ));
        pubs.mark_for_republish("ns");
        assert!(!pubs.namespace("other").take_republish());
        assert!(pubs.namespace("ns").take_republish());
        assert!(!pubs.namespace("ns").take_republish());
    }
}
