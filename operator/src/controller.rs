//! The ModelService reconciler: resolves each variant's endpoints from the pod cache, publishes the
//! namespace's mesh config, the fronting Service and the reader RBAC (server-side apply), writes the
//! status, records events on transitions, and cleans up behind a finalizer.

use std::{
    collections::{HashMap, HashSet, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt, TryStreamExt};
use infermesh_crds::{
    ModelService,
    mesh::{CONFIG_MAP_KEY, CONFIG_MAP_NAME, MeshConfig, ServiceConfig},
};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Pod, Service},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        controller::{Action, Config as ControllerConfig, Controller},
        events::{Event as KubeEvent, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex as AsyncMutex;

use crate::{
    backoff::Backoff,
    config::service_config,
    endpoints::{resolve, selects_pod},
    error::Error,
    metrics::Metrics,
    resources::{self, MANAGER},
    status::{self, Observation},
};

/// Finalizer that keeps a deleted ModelService until its config entry and Service are gone.
pub const FINALIZER: &str = "infermesh.io/cleanup";
/// Periodic re-check of a healthy ModelService.
const RESYNC: Duration = Duration::from_secs(300);
/// A published config is re-applied at least this often even if unchanged (repairs manual edits).
const REPUBLISH: Duration = Duration::from_secs(60);

/// The last mesh config published in one namespace.
#[derive(Default)]
struct Published {
    config: Option<MeshConfig>,
    at: Option<Instant>,
    /// When each service's entry last changed, and the revision that carried the change.
    entries: HashMap<String, (String, Time)>,
}

/// Pods each ModelService last resolved as endpoints (`ns/name` → pod names), so a pod whose labels
/// stop matching still triggers the ModelService that listed it.
#[derive(Clone, Default)]
pub struct EndpointIndex(Arc<std::sync::Mutex<HashMap<String, HashSet<String>>>>);

impl EndpointIndex {
    fn set(&self, ms_key: String, pods: HashSet<String>) {
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

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pods: Store<Pod>,
    services: Store<ModelService>,
    namespaces: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<Published>>>>,
    backoff: std::sync::Mutex<Backoff>,
    listed: EndpointIndex,
    /// Namespaces whose published objects were deleted by hand: republished at the next reconcile.
    deleted: std::sync::Mutex<HashSet<String>>,
}

impl Context {
    /// One lock per namespace: its config is computed and written by one reconcile at a time, so
    /// the last write is always computed from the freshest caches.
    fn namespace(&self, ns: &str) -> Arc<AsyncMutex<Published>> {
        let mut map = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(ns.to_string()).or_default().clone()
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live (not deleting) ModelServices of `ns`, except `skip_uid`.
    fn members(&self, ns: &str, skip_uid: Option<&str>) -> Vec<Arc<ModelService>> {
        let mut v = self.services.state_filter(|ms| {
            ms.namespace().as_deref() == Some(ns)
                && ms.metadata.deletion_timestamp.is_none()
                && ms.uid().as_deref() != skip_uid
        });
        v.sort_by_key(|ms| ms.name_any());
        v
    }

    fn mark_deleted(&self, ns: &str) {
        let mut set = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(ns.to_string());
    }

    fn take_deleted(&self, ns: &str) -> bool {
        let mut set = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(ns)
    }

    fn namespace_pods(&self, ns: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|p| p.namespace().as_deref() == Some(ns))
    }
}

fn key(ms: &ModelService) -> String {
    format!("{}/{}", ms.namespace().unwrap_or_default(), ms.name_any())
}

async fn reconcile(ms: Arc<ModelService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let ns = ms.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<ModelService> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ms.clone(), |event| async {
        match event {
            Finalizer::Apply(ms) => apply(&ms, &ctx).await,
            Finalizer::Cleanup(ms) => cleanup(&ms, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.backoff().succeeded(&key(&ms));
    }
    result
}

fn error_policy(ms: Arc<ModelService>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff().failed(&key(&ms));
    ctx.metrics.failed(error.reason());
    tracing::warn!(modelservice = %key(&ms), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn wait_for_pods(ctx: &Context) -> Result<(), Error> {
    const LIMIT: Duration = Duration::from_secs(30);
    match tokio::time::timeout(LIMIT, ctx.pods.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::PodCacheNotReady(LIMIT)),
    }
}

/// Applies `obj` (named `name` in `ns`) by server-side apply, forcing ownership of the fields it
/// sets.
async fn ssa<K>(
    client: &Client,
    ns: &str,
    name: &str,
    obj: &K,
    what: &'static str,
) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|source| Error::Kube {
            action: what,
            source,
        })
}

/// Publishes `ns`'s mesh config from the caches (ModelServices in `members`), and the reader
/// RBAC with it. Must run under the namespace lock.
async fn publish(
    ctx: &Context,
    ns: &str,
    members: &[Arc<ModelService>],
    published: &mut Published,
) -> Result<(MeshConfig, HashMap<String, ServiceConfig>), Error> {
    let pods = ctx.namespace_pods(ns);
    let entries: Vec<ServiceConfig> = members
        .iter()
        .map(|m| service_config(m, &resolve(&m.spec, ns, pods.iter().map(|p| p.as_ref()))))
        .collect();
    let config = MeshConfig::new(entries);
    let previous: HashMap<String, ServiceConfig> = match &published.config {
        Some(c) => c
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        None => read_published(ctx, ns).await?,
    };
    let deleted = ctx.take_deleted(ns);
    let fresh = !deleted
        && published.at.is_some_and(|at| {
            at.elapsed() < REPUBLISH && published.config.as_ref() == Some(&config)
        });
    if !fresh {
        // Until the writes below succeed, the next reconcile must write again.
        published.at = None;
        let owners: Vec<&ModelService> = members.iter().map(|m| m.as_ref()).collect();
        apply_published(ctx, ns, &config, &owners).await?;
        published.at = Some(Instant::now());
        if published.config.as_ref() != Some(&config) {
            tracing::info!(namespace = ns, revision = %config.revision, services = config.services.len(), "mesh config published");
        }
    }
    published.config = Some(config.clone());
    Ok((config, previous))
}

/// Writes `ns`'s mesh ConfigMap and its reader Role and RoleBinding.
async fn apply_published(
    ctx: &Context,
    ns: &str,
    config: &MeshConfig,
    owners: &[&ModelService],
) -> Result<(), Error> {
    let (client, reader) = (&ctx.client, resources::READER_ROLE);
    let cm = resources::mesh_config_map(ns, config, owners)?;
    ssa(
        client,
        ns,
        CONFIG_MAP_NAME,
        &cm,
        "apply mesh config ConfigMap",
    )
    .await?;
    let role = resources::reader_role(ns, owners);
    ssa(client, ns, reader, &role, "apply mesh config reader Role").await?;
    let rb = resources::reader_role_binding(ns, owners);
    ssa(
        client,
        ns,
        reader,
        &rb,
        "apply mesh config reader RoleBinding",
    )
    .await?;
    Ok(())
}

/// The entries of the ConfigMap as it is in the cluster (after a restart, nothing is cached).
async fn read_published(ctx: &Context, ns: &str) -> Result<HashMap<String, ServiceConfig>, Error> {
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .get_opt(CONFIG_MAP_NAME)
        .await
        .map_err(|source| Error::Kube {
            action: "read mesh config ConfigMap",
            source,
        })?;
    let parsed = cm
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(CONFIG_MAP_KEY).cloned())
        .and_then(|json| serde_json::from_str::<MeshConfig>(&json).ok());
    Ok(parsed
        .map(|c| {
            c.services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect()
        })
        .unwrap_or_default())
}

async fn apply(ms: &ModelService, ctx: &Context) -> Result<Action, Error> {
    wait_for_pods(ctx).await?;
    let ns = ms.namespace().ok_or(Error::MissingNamespace)?;
    let name = ms.name_any();
    let pods = ctx.namespace_pods(&ns);
    let resolved = resolve(&ms.spec, &ns, pods.iter().map(|p| p.as_ref()));
    ctx.listed.set(
        key(ms),
        resolved
            .iter()
            .flat_map(|v| v.endpoints.iter().filter_map(|e| e.pod.clone()))
            .collect(),
    );

    let now = Time(Timestamp::now());
    let (revision, published_at) = {
        let lock = ctx.namespace(&ns);
        let mut published = lock.lock().await;
        let mut members = ctx.members(&ns, ms.uid().as_deref());
        members.push(Arc::new(ms.clone()));
        let (config, previous) = publish(ctx, &ns, &members, &mut published).await?;
        let mine = config.services.iter().find(|s| s.name == name);
        let changed = previous.get(&name) != mine;
        let prev_status = ms.status.as_ref();
        let kept = published.entries.get(&name).cloned().or_else(|| {
            let s = prev_status?;
            Some((s.revision.clone()?, s.config_published_at.clone()?))
        });
        let entry = match kept {
            Some(e) if !changed => e,
            _ => (config.revision.clone(), now.clone()),
        };
        published.entries.insert(name.clone(), entry.clone());
        entry
    };

    let svc = resources::front_service(ms);
    ssa(&ctx.client, &ns, &name, &svc, "apply fronting Service").await?;

    let obs = Observation {
        generation: ms.metadata.generation,
        resolved: &resolved,
        revision,
        published_at,
    };
    let prev = ms.status.as_ref();
    let next = status::compute_status(&ms.spec, prev, &obs, &now);
    if prev != Some(&next) {
        let patch = serde_json::json!({
            "apiVersion": infermesh_crds::api_version(),
            "kind": "ModelService",
            "status": next,
        });
        Api::<ModelService>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map_err(|source| Error::Kube {
                action: "write ModelService status",
                source,
            })?;
    }
    for notice in status::notices(&ms.spec, prev, &next, &resolved) {
        publish_event(
            ctx,
            ms,
            notice.warning,
            notice.reason,
            notice.note,
            "Reconcile",
        )
        .await;
    }
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(ms: &ModelService, ctx: &Context) -> Result<Action, Error> {
    wait_for_pods(ctx).await?;
    let ns = ms.namespace().ok_or(Error::MissingNamespace)?;
    let name = ms.name_any();
    {
        let lock = ctx.namespace(&ns);
        let mut published = lock.lock().await;
        let members = ctx.members(&ns, ms.uid().as_deref());
        if members.is_empty() {
            delete_if_present(
                &Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns),
                CONFIG_MAP_NAME,
                "delete mesh config ConfigMap",
            )
            .await?;
            delete_if_present(
                &Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns),
                resources::READER_ROLE,
                "delete reader RoleBinding",
            )
            .await?;
            delete_if_present(
                &Api::<Role>::namespaced(ctx.client.clone(), &ns),
                resources::READER_ROLE,
                "delete reader Role",
            )
            .await?;
            *published = Published::default();
        } else {
            published.at = None;
            match publish(ctx, &ns, &members, &mut published).await {
                Ok(_) => {}
                // The namespace is being deleted (nothing may be created in it) or is gone:
                // the config goes with it, so the ModelService may go too.
                Err(Error::Kube {
                    source: kube::Error::Api(s),
                    ..
                }) if s.code == 403 || s.code == 404 => {
                    tracing::info!(namespace = %ns, reason = %s.message, "mesh config not rewritten during cleanup");
                    *published = Published::default();
                }
                Err(e) => return Err(e),
            }
            published.entries.remove(&name);
        }
    }
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    let owned = services
        .get_opt(&name)
        .await
        .map_err(|source| Error::Kube {
            action: "read fronting Service",
            source,
        })?
        .is_some_and(|svc| resources::is_controlled_by(&svc, ms));
    if owned {
        delete_if_present(&services, &name, "delete fronting Service").await?;
    }
    ctx.listed.set(key(ms), HashSet::new());
    publish_event(
        ctx,
        ms,
        false,
        "Cleanup",
        format!("removed {name} from the mesh config and deleted its Service"),
        "Delete",
    )
    .await;
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str, what: &'static str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: what,
            source,
        }),
    }
}

/// Events are best effort: failing to record one must not fail the reconcile.
async fn publish_event(
    ctx: &Context,
    ms: &ModelService,
    warning: bool,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ms.object_ref(&())).await {
        tracing::warn!(modelservice = %key(ms), error = %e, "recording an event failed");
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

/// What the controller watches.
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

fn api_for<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps only what reconciles read from a pod: labels, containers' names, readiness and IP.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        let names = |cs: &mut Vec<k8s_openapi::api::core::v1::Container>| {
            for c in cs.iter_mut() {
                *c = k8s_openapi::api::core::v1::Container {
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

/// Objects this operator created.
fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
}

/// Deletions of the namespace-wide objects this operator publishes (the mesh ConfigMap and its
/// reader Role and RoleBinding). Metadata only: a mesh ConfigMap can be large.
fn deletions<K>(
    client: &Client,
    scope: &Scope,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + use<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api_for::<PartialObjectMeta<K>>(client, scope), managed())
        .default_backoff()
        .try_filter_map(|event| async move {
            Ok(match event {
                watcher::Event::Delete(obj) => Some(obj),
                _ => None,
            })
        })
}

/// Maps a deleted published object to the ModelServices of its namespace, marking the namespace
/// for a republish: an unchanged config is otherwise not re-applied before [`REPUBLISH`].
fn republish<K: Resource>(ctx: Arc<Context>) -> impl Fn(K) -> Vec<ObjectRef<ModelService>> {
    move |obj: K| {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let members = ctx.members(&ns, None);
        if !members.is_empty() {
            let name = obj.meta().name.as_deref().unwrap_or_default();
            tracing::info!(namespace = %ns, name, "published object deleted; republishing");
            ctx.mark_deleted(&ns);
        }
        members
            .iter()
            .map(|ms| ObjectRef::from_obj(ms.as_ref()))
            .collect()
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: Scope,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (services, ms_writer) = reflector::store::<ModelService>();

    let ms_stream = watcher(
        api_for::<ModelService>(&client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|ms| ms.metadata.managed_fields = None)
    .reflect(ms_writer)
    .applied_objects()
    .predicate_filter(trigger_hash, Default::default());

    let mapper_store = services.clone();
    let listed = EndpointIndex::default();
    let mapper_listed = listed.clone();
    let pod_stream = watcher(api_for::<Pod>(&client, &scope), watcher::Config::default())
        .default_backoff()
        .modify(slim_pod)
        .reflect(pod_writer)
        .touched_objects();

    let client_for_owns = client.clone();
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics,
        pods,
        services: services.clone(),
        namespaces: Default::default(),
        backoff: Default::default(),
        listed,
        deleted: Default::default(),
    });
    let cms = deletions::<ConfigMap>(&client_for_owns, &scope);
    let roles = deletions::<Role>(&client_for_owns, &scope);
    let bindings = deletions::<RoleBinding>(&client_for_owns, &scope);

    Controller::for_stream(ms_stream, services)
        .owns(api_for::<Service>(&client_for_owns, &scope), managed())
        .watches_stream(pod_stream, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let pod_name = pod.name_any();
            let was_listed = mapper_listed.listing(&ns, &pod_name);
            mapper_store
                .state_filter(|ms| {
                    ms.namespace().as_deref() == Some(ns.as_str())
                        && (selects_pod(&ms.spec, &pod) || was_listed.contains(&key(ms)))
                })
                .into_iter()
                .map(|ms| ObjectRef::from_obj(ms.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(cms, republish(ctx.clone()))
        .watches_stream(roles, republish(ctx.clone()))
        .watches_stream(bindings, republish(ctx.clone()))
        .with_config(
            ControllerConfig::default()
                .concurrency(scope.concurrency)
                .debounce(Duration::from_millis(100)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(modelservice = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
