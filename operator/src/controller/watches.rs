//! What wakes the reconciler: the watch streams (ModelServices, their pods, the objects we publish)
//! and the mappers from a changed object to the ModelServices to reconcile.
//!
//! ModelServices trigger on spec, finalizer and deletion changes only, never on our own status
//! writes. Pods are slimmed before they are cached (a cluster has many) and map to the
//! ModelServices that select them or listed them last time, so a pod whose labels stop matching
//! still leaves the config. A deleted mesh ConfigMap, Role or RoleBinding marks its namespace for a
//! republish, since an unchanged config is otherwise not re-applied before
//! [`REPUBLISH`](super::publication::REPUBLISH). Those are watched by name, not by our label, and
//! every Service's deletion maps to the ModelService of its name: when someone removes their
//! object that held one of our names, the clash it caused is resolved at once.

use std::{
    collections::{BTreeSet, HashMap, HashSet, hash_map::DefaultHasher},
    fmt::Debug,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::{Stream, TryStreamExt};
use infermesh_crds::ModelService;
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Container, Pod},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::{Context, key};
use crate::{
    endpoints::selects_pod,
    resources::{MANAGED_BY, MANAGER},
};

/// What the controller watches.
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

/// An Api over `K` in the scope's namespace, or in all of them.
pub fn api_for<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Pods each ModelService last resolved as endpoints (`ns/name` → pod names), so a pod whose labels
/// stop matching still triggers the ModelService that listed it.
#[derive(Clone, Default)]
pub struct EndpointIndex(Arc<Mutex<HashMap<String, HashSet<String>>>>);

impl EndpointIndex {
    pub fn set(&self, ms_key: String, pods: HashSet<String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pods.is_empty() {
            map.remove(&ms_key);
        } else {
            map.insert(ms_key, pods);
        }
    }

    /// `ns/name` keys of the ModelServices that listed `pod` (in `ns`).
    fn listing(&self, ns: &str, pod: &str) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(k, pods)| {
                k.split_once('/').is_some_and(|(n, _)| n == ns) && pods.contains(pod)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The ModelServices each one last found overlapping its selectors (`ns/name` → their names).
/// Each reconcile computes only its own overlaps: this tells it which others to wake, so both
/// sides of an overlap report it, and stop once it is gone.
#[derive(Default)]
pub struct OverlapIndex(Mutex<HashMap<String, BTreeSet<String>>>);

impl OverlapIndex {
    /// `name` (in `ns`) now overlaps `others`: the names that entered or left its set, to wake.
    pub fn set(&self, ns: &str, name: &str, others: BTreeSet<String>) -> BTreeSet<String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{ns}/{name}");
        let before = map.remove(&key).unwrap_or_default();
        let wake = before.symmetric_difference(&others).cloned().collect();
        if !others.is_empty() {
            map.insert(key, others);
        }
        wake
    }

    /// `name` (in `ns`) is going: the names it overlapped and those that overlapped it, to wake.
    pub fn remove(&self, ns: &str, name: &str) -> BTreeSet<String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut wake = map.remove(&format!("{ns}/{name}")).unwrap_or_default();
        for (key, others) in map.iter() {
            if let Some((kns, kname)) = key.split_once('/')
                && kns == ns
                && others.contains(name)
            {
                wake.insert(kname.to_string());
            }
        }
        wake
    }
}

/// Reconcile on spec changes, finalizer changes and deletion, not on our own status writes.
fn trigger_hash(ms: &ModelService) -> Option<u64> {
    let mut h = DefaultHasher::new();
    ms.metadata.generation.hash(&mut h);
    ms.metadata.deletion_timestamp.is_some().hash(&mut h);
    ms.metadata.finalizers.hash(&mut h);
    Some(h.finish())
}

/// The ModelServices in scope, cached in `writer`'s store, as they change in ways that need work.
pub fn model_services(
    client: &Client,
    scope: &Scope,
    writer: Writer<ModelService>,
) -> impl Stream<Item = Result<ModelService, watcher::Error>> + use<> {
    watcher(
        api_for::<ModelService>(client, scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|ms| ms.metadata.managed_fields = None)
    .reflect(writer)
    .applied_objects()
    .predicate_filter(trigger_hash, Default::default())
}

/// Keeps only what reconciles read from a pod: labels, the injection opt-out annotation,
/// containers' names, readiness and IP.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = pod
        .metadata
        .annotations
        .take()
        .map(|mut a| {
            a.retain(|k, _| k == infermesh_crds::INJECT_ANNOTATION);
            a
        })
        .filter(|a| !a.is_empty());
    if let Some(spec) = pod.spec.as_mut() {
        let names = |cs: &mut Vec<Container>| {
            for c in cs.iter_mut() {
                *c = Container {
                    name: std::mem::take(&mut c.name),
                    ..Default::default()
                };
            }
        };
        names(&mut spec.containers);
        if let Some(init) = spec.init_containers.as_mut() {
            names(init);
        }
        spec.volumes = None;
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
    }
}

/// The pods in scope, slimmed and cached in `writer`'s store, as they change.
pub fn pods(
    client: &Client,
    scope: &Scope,
    writer: Writer<Pod>,
) -> impl Stream<Item = Result<Pod, watcher::Error>> + use<> {
    watcher(api_for::<Pod>(client, scope), watcher::Config::default())
        .default_backoff()
        .modify(slim_pod)
        .reflect(writer)
        .touched_objects()
}

/// Maps a changed pod to the ModelServices of its namespace that select it or listed it.
pub fn pod_to_model_services(
    services: Store<ModelService>,
    listed: EndpointIndex,
) -> impl Fn(Pod) -> Vec<ObjectRef<ModelService>> {
    move |pod: Pod| {
        let ns = pod.namespace().unwrap_or_default();
        let was_listed = listed.listing(&ns, &pod.name_any());
        services
            .state_filter(|ms| {
                ms.namespace().as_deref() == Some(ns.as_str())
                    && (selects_pod(&ms.spec, &pod) || was_listed.contains(&key(ms)))
            })
            .into_iter()
            .map(|ms| ObjectRef::from_obj(ms.as_ref()))
            .collect()
    }
}

/// Objects this operator created.
pub fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}"))
}

/// Objects named `name`, ours or not.
pub fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// Deletions of the objects `config` selects (the namespace-wide objects under the names this
/// operator publishes, or every Service). Metadata only: a mesh ConfigMap can be large.
pub fn deletions<K>(
    client: &Client,
    scope: &Scope,
    config: watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + use<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api_for::<PartialObjectMeta<K>>(client, scope), config)
        .default_backoff()
        .try_filter_map(|event| async move {
            Ok(match event {
                watcher::Event::Delete(obj) => Some(obj),
                _ => None,
            })
        })
}

/// Maps a deleted published object to the ModelServices of its namespace, marking the namespace
/// for a republish.
pub fn republish<K: Resource>(ctx: Arc<Context>) -> impl Fn(K) -> Vec<ObjectRef<ModelService>> {
    move |obj: K| {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let members = ctx.members(&ns, None);
        if !members.is_empty() {
            let name = obj.meta().name.as_deref().unwrap_or_default();
            tracing::info!(namespace = %ns, name, "published object deleted; republishing");
            ctx.publications.mark_for_republish(&ns);
        }
        members
            .iter()
            .map(|ms| ObjectRef::from_obj(ms.as_ref()))
            .collect()
    }
}

/// Maps a deleted Service to the ModelService of the same name, if there is one: the name it
/// held may now take the ModelService's own Service.
pub fn same_name<K: Resource>(
    services: Store<ModelService>,
) -> impl Fn(K) -> Option<ObjectRef<ModelService>> {
    move |obj: K| {
        let meta = obj.meta();
        let (name, ns) = (meta.name.as_deref()?, meta.namespace.as_deref()?);
        let key = ObjectRef::new(name).within(ns);
        services
            .get(&key)
            .map(|ms| ObjectRef::from_obj(ms.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::FINALIZER;

    #[test]
    fn overlap_index_wakes_the_other_side_on_changes_only() {
        let idx = OverlapIndex::default();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            idx.set("ns", "b", set(&["a"])),
            set(&["a"]),
            "a new overlap"
        );
        assert_eq!(idx.set("ns", "a", set(&["b"])), set(&["b"]));
        assert!(
            idx.set("ns", "a", set(&["b"])).is_empty(),
            "no change, no wake: no ping-pong"
        );
        assert_eq!(idx.set("ns", "c", set(&["b"])), set(&["b"]));
        assert_eq!(idx.set("ns", "a", set(&[])), set(&["b"]), "gone");
        // b goes: c listed it, and b listed a.
        assert_eq!(idx.remove("ns", "b"), set(&["a", "c"]));
        assert!(idx.remove("other", "c").is_empty(), "by namespace");
    }

    #[test]
    fn endpoint_index_finds_listing_modelservices_by_namespace() {
        let idx = EndpointIndex::default();
        idx.set("ns/llm".into(), HashSet::from(["pod-a".to_string()]));
        idx.set("other/llm".into(), HashSet::from(["pod-a".to_string()]));
        assert_eq!(idx.listing("ns", "pod-a"), ["ns/llm"]);
        assert!(idx.listing("ns", "pod-b").is_empty());
        idx.set("ns/llm".into(), HashSet::new());
        assert!(idx.listing("ns", "pod-a").is_empty());
    }

    #[test]
    fn slimmed_pods_keep_what_endpoint_resolution_reads() {
        use crate::endpoints::{is_meshed, pod_endpoint};
        use crate::fixtures::pod;
        let mut p = pod("a", "ns", "v1", Some("198.18.64.5"), true, true);
        let before = pod_endpoint(&p, 8080);
        slim_pod(&mut p);
        assert!(is_meshed(&p));
        assert_eq!(pod_endpoint(&p, 8080), before);
        assert_eq!(p.labels().get("version").map(String::as_str), Some("v1"));
        assert!(p.metadata.annotations.is_none());

        // An opted-out pod keeps what says so, and nothing else.
        let mut opted = pod("b", "ns", "v1", None, false, false);
        opted.annotations_mut().extend([
            (
                infermesh_crds::INJECT_ANNOTATION.to_string(),
                "disabled".to_string(),
            ),
            ("big".to_string(), "x".repeat(1000)),
        ]);
        slim_pod(&mut opted);
        assert_eq!(
            crate::meshing::unmeshed_reason(&opted),
            Some(crate::meshing::OPTED_OUT)
        );
        assert_eq!(opted.annotations().len(), 1);
    }

    #[test]
    fn a_deleted_service_wakes_the_model_service_of_its_name_only() {
        use crate::fixtures::{model_service, spec_with};
        use k8s_openapi::api::core::v1::Service;
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(model_service(
            "llm",
            "ns",
            spec_with(&[("stable", 100, "v1")]),
        )));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let map = same_name::<Service>(store);
        let svc = |name: &str, ns: &str| {
            let mut s = Service::default();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some(ns.into());
            s
        };
        assert_eq!(
            map(svc("llm", "ns")).map(|r| r.name),
            Some("llm".to_string())
        );
        assert!(map(svc("llm", "other")).is_none());
        assert!(map(svc("web", "ns")).is_none());
    }

    #[test]
    fn own_status_writes_do_not_change_the_trigger_hash() {
        use crate::fixtures::{model_service, spec_with};
        let ms = model_service("llm", "ns", spec_with(&[("stable", 100, "v1")]));
        let mut with_status = ms.clone();
        with_status.status = Some(Default::default());
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(trigger_hash(&ms), trigger_hash(&with_status));
        let mut newer = ms.clone();
        newer.metadata.generation = Some(2);
        assert_ne!(trigger_hash(&ms), trigger_hash(&newer));
        let mut finalized = ms.clone();
        finalized.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert_ne!(trigger_hash(&ms), trigger_hash(&finalized));
    }
}
