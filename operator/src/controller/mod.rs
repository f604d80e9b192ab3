//! The ModelService reconciler: resolves each variant's endpoints from the pod cache, publishes the
//! namespace's mesh config, the fronting Service and the reader RBAC (server-side apply), writes the
//! status, records events on transitions, and cleans up behind a finalizer. It writes and deletes
//! only what it made (`ownership`): a name held by someone else's object is a clash on the status.
//! The config carries only the entries `screening` lets through (valid, under the size cap; a
//! refused one keeps its last valid entry), and a refusal or an `overlap` of selectors is reported
//! on the ModelService concerned alone. `Ready` waits for the serving pods' sidecars to report the
//! entry's revision (`sidecars`; a lagging one is asked again after [`PROPAGATION_RECHECK`]), and
//! selected pods without the sidecar are listed on the status (`meshing`).
//!
//! This file is the contract — [`Context`], `reconcile` (the finalizer dispatching to `apply` and
//! `cleanup`), `error_policy` and [`run`]. Below it: `publication` (what was published in each
//! namespace, and the decisions taken from it), `watches` (what wakes a reconcile) and `writes`
//! (the API calls).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, channel::mpsc};
use infermesh_crds::{
    ModelService,
    mesh::{CONFIG_MAP_NAME, ServiceConfig},
};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Pod, Secret, Service},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        controller::{Action, Config as ControllerConfig, Controller},
        events::Recorder,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
    },
};

use crate::{
    backoff::Backoff,
    endpoints::{self, resolve},
    error::Error,
    meshing,
    metrics::Metrics,
    overlap,
    ownership::{self, Claim, Clash},
    resources,
    screening::Screened,
    sidecars::{self, Sidecars, Target},
    status::{self, Observation},
};

mod publication;
#[cfg(test)]
mod scenarios;
mod watches;
mod writes;

use publication::{Namespace, Publications, Published};
pub use watches::Scope;
use watches::{EndpointIndex, OverlapIndex};

/// Finalizer that keeps a deleted ModelService until its config entry and Service are gone.
pub const FINALIZER: &str = "infermesh.io/cleanup";
/// Periodic re-check of a healthy ModelService.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check of a ModelService whose serving sidecars do not all enforce its revision yet: a
/// sidecar applies a ConfigMap change within seconds of the watch event.
pub const PROPAGATION_RECHECK: Duration = Duration::from_secs(3);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pods: Store<Pod>,
    services: Store<ModelService>,
    publications: Publications,
    backoff: std::sync::Mutex<Backoff>,
    listed: EndpointIndex,
    overlapping: OverlapIndex,
    /// Wakes other ModelServices (an overlap appeared or went on this side).
    wake: mpsc::UnboundedSender<ObjectRef<ModelService>>,
    /// Asks serving pods' sidecars which revision they enforce.
    sidecars: Arc<dyn Sidecars>,
}

impl Context {
    fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        pods: Store<Pod>,
        services: Store<ModelService>,
        wake: mpsc::UnboundedSender<ObjectRef<ModelService>>,
        sidecars: Arc<dyn Sidecars>,
    ) -> Self {
        Self {
            overlapping: OverlapIndex::default(),
            wake,
            sidecars,
            client,
            recorder,
            metrics,
            pods,
            services,
            publications: Publications::default(),
            backoff: Default::default(),
            listed: EndpointIndex::default(),
        }
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

    fn namespace_pods(&self, ns: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|p| p.namespace().as_deref() == Some(ns))
    }

    /// Reconciles the ModelServices `names` of `ns` soon (they are queued like any trigger).
    fn wake(&self, ns: &str, names: impl IntoIterator<Item = String>) {
        for name in names {
            // The receiver is gone only when the controller stopped.
            let _ = self.wake.unbounded_send(ObjectRef::new(&name).within(ns));
        }
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

/// What a publication of a namespace's mesh config came to.
enum Publication {
    /// The config was written, or found written recently, with what it refused; and the entries
    /// published before it.
    Current(Screened, HashMap<String, ServiceConfig>),
    /// Someone else's objects hold names the config needs: nothing was written.
    Blocked(Vec<Clash>),
}

/// Publishes `ns`'s mesh config from the caches (ModelServices in `members`), and the reader
/// RBAC with it, unless the same config was written recently. Before a write, the three objects
/// are read: if any is someone else's, none is written. Must run under the namespace lock
/// (`published`).
async fn publish(
    ctx: &Context,
    ns: &str,
    namespace: &Namespace,
    members: &[Arc<ModelService>],
    published: &mut Published,
) -> Result<Publication, Error> {
    let pods = ctx.namespace_pods(ns);
    let known = published.previous_entries();
    let republish = namespace.take_republish();
    let screened = known
        .as_ref()
        .map(|previous| publication::desired(ns, members, &pods, previous));
    if let (Some(previous), Some(screened)) = (&known, &screened)
        && published.is_fresh(&screened.config, republish, Instant::now())
    {
        return Ok(Publication::Current(screened.clone(), previous.clone()));
    }
    published.expire();
    let found = writes::read_published(&ctx.client, ns).await?;
    let clashes = found.clashes();
    if !clashes.is_empty() {
        tracing::warn!(namespace = ns, clashes = ?clashes, "mesh config not published: its names are held by objects the operator did not create");
        return Ok(Publication::Blocked(clashes));
    }
    let previous = known.unwrap_or_else(|| publication::entries_of(found.config_map));
    let screened = screened.unwrap_or_else(|| publication::desired(ns, members, &pods, &previous));
    let config = &screened.config;
    let owners: Vec<&ModelService> = members.iter().map(|m| m.as_ref()).collect();
    writes::apply_published(&ctx.client, ns, config, &owners, found.key.as_ref()).await?;
    if published.written(config, Instant::now()) {
        tracing::info!(namespace = ns, revision = %config.revision, services = config.services.len(), refused = ?screened.refused.keys().collect::<Vec<_>>(), "mesh config published");
    }
    published.current(config.clone());
    Ok(Publication::Current(screened, previous))
}

async fn apply(ms: &ModelService, ctx: &Context) -> Result<Action, Error> {
    wait_for_pods(ctx).await?;
    let ns = ms.namespace().ok_or(Error::MissingNamespace)?;
    let name = ms.name_any();
    let pods = ctx.namespace_pods(&ns);
    let mut neighbours = ctx.members(&ns, ms.uid().as_deref());
    neighbours.push(Arc::new(ms.clone()));
    let names = overlap::names(&neighbours);
    let own: Vec<&Pod> =
        overlap::own_pods(&name, &names, pods.iter().map(|p| p.as_ref())).collect();
    let resolved = resolve(&ms.spec, &ns, own.iter().copied());
    let unmeshed = meshing::unmeshed(&ms.spec, own.iter().copied());
    let overlaps = overlap::overlaps(ms, &neighbours, &pods);
    let others = overlaps.iter().map(|o| o.other.clone()).collect();
    ctx.wake(&ns, ctx.overlapping.set(&ns, &name, others));
    ctx.listed.set(
        key(ms),
        resolved
            .iter()
            .flat_map(|v| v.endpoints.iter().filter_map(|e| e.pod.clone()))
            .collect(),
    );

    // To the second, as the API keeps status times: a finer time kept for the entry would never
    // equal the status read back, and an unchanged status would be rewritten at every reconcile.
    let now = Timestamp::now();
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let (stamp, in_force, mut clashes, refusal) = {
        let namespace = ctx.publications.namespace(&ns);
        let mut published = namespace.published.lock().await;
        let mut members = ctx.members(&ns, ms.uid().as_deref());
        members.push(Arc::new(ms.clone()));
        match publish(ctx, &ns, &namespace, &members, &mut published).await? {
            Publication::Current(Screened { config, refused }, previous) => {
                let refusal = refused.get(&name).cloned();
                if config.services.iter().any(|s| s.name == name) {
                    let changed = publication::entry_changed(&previous, &config, &name);
                    let prev = ms.status.as_ref();
                    let stamp = published.stamp(&name, changed, prev, &config.revision, &now);
                    (Some(stamp), Some(config.revision), vec![], refusal)
                } else {
                    // Not carried (refused, never valid): a later entry gets a new stamp.
                    published.forget(&name);
                    (None, None, vec![], refusal)
                }
            }
            Publication::Blocked(clashes) => (None, None, clashes, None),
        }
    };

    let found = writes::read_service(&ctx.client, &ns, &name).await?;
    match ownership::claim_service(found.as_ref().map(|s| &s.metadata), ms) {
        Claim::Free | Claim::Ours => {
            let svc = resources::front_service(ms);
            writes::ssa(&ctx.client, &ns, &name, &svc, "apply fronting Service").await?;
        }
        Claim::Taken => clashes.push(Clash {
            kind: "Service",
            name: name.clone(),
        }),
    }

    // A sidecar enforces this entry when it runs the config that last changed it (the stamp) or
    // the namespace's config now; a revision between the two would do too, but is not
    // remembered: such a sidecar counts as lagging for the seconds until it catches up.
    let enforcement = match (&stamp, in_force) {
        (Some(stamp), Some(in_force)) => {
            let mut accepted = vec![in_force];
            if !accepted.contains(&stamp.revision) {
                accepted.push(stamp.revision.clone());
            }
            let targets = serving_sidecars(&resolved, &own);
            let reports = ctx.sidecars.revisions(&targets, &accepted).await;
            Some(sidecars::summarise(reports, &accepted))
        }
        _ => None,
    };

    let obs = Observation {
        generation: ms.metadata.generation,
        resolved: &resolved,
        entry: stamp.map(|s| status::Entry {
            revision: s.revision,
            at: s.at,
        }),
        clashes: &clashes,
        refusal: refusal.as_ref(),
        overlaps: &overlaps,
        namespace: &ns,
        sidecars: enforcement.as_ref(),
        unmeshed: &unmeshed,
    };
    let prev = ms.status.as_ref();
    let next = status::compute_status(&ms.spec, prev, &obs, &now);
    if prev != Some(&next) {
        writes::write_status(&ctx.client, &ns, &name, &next).await?;
    }
    for notice in status::notices(&ms.spec, prev, &next, &resolved) {
        let action = notice.action();
        writes::publish_event(
            &ctx.recorder,
            ms,
            notice.warning,
            notice.reason,
            notice.note,
            &action,
        )
        .await;
    }
    if enforcement.is_some_and(|e| !e.is_complete()) {
        return Ok(Action::requeue(PROPAGATION_RECHECK));
    }
    Ok(Action::requeue(RESYNC))
}

/// The meshed endpoints of `resolved`, each pod once, with what it takes to ask its sidecar.
fn serving_sidecars(resolved: &[endpoints::ResolvedVariant], own: &[&Pod]) -> Vec<Target> {
    let names: std::collections::BTreeSet<&str> = resolved
        .iter()
        .flat_map(|v| v.endpoints.iter())
        .filter(|e| e.meshed)
        .filter_map(|e| e.pod.as_deref())
        .collect();
    own.iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| names.contains(n))
        })
        .filter_map(|p| {
            Some(Target {
                pod: p.name_any(),
                uid: p.uid()?,
                ip: p.status.as_ref()?.pod_ip.clone()?,
            })
        })
        .collect()
}

async fn cleanup(ms: &ModelService, ctx: &Context) -> Result<Action, Error> {
    wait_for_pods(ctx).await?;
    let ns = ms.namespace().ok_or(Error::MissingNamespace)?;
    let name = ms.name_any();
    {
        let namespace = ctx.publications.namespace(&ns);
        let mut published = namespace.published.lock().await;
        let members = ctx.members(&ns, ms.uid().as_deref());
        if members.is_empty() {
            // Only what the operator made: an object of someone else's under one of these names
            // stays.
            let found = writes::read_published(&ctx.client, &ns).await?;
            if let Some(cm) = ownership::ours_shared(found.config_map.as_ref()) {
                let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
                writes::delete_ours(&api, cm, "delete mesh config ConfigMap").await?;
            }
            if let Some(rb) = ownership::ours_shared(found.binding.as_ref()) {
                let api = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns);
                writes::delete_ours(&api, rb, "delete reader RoleBinding").await?;
            }
            if let Some(role) = ownership::ours_shared(found.role.as_ref()) {
                let api = Api::<Role>::namespaced(ctx.client.clone(), &ns);
                writes::delete_ours(&api, role, "delete reader Role").await?;
            }
            if let Some(key) = ownership::ours_shared(found.key.as_ref()) {
                let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
                writes::delete_ours(&api, key, "delete mesh key Secret").await?;
            }
            *published = Published::default();
        } else {
            published.expire();
            match publish(ctx, &ns, &namespace, &members, &mut published).await {
                // Rewritten without this entry, or blocked by someone else's objects under the
                // config's names: either way no config of ours still carries it.
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
            published.forget(&name);
        }
    }
    let found = writes::read_service(&ctx.client, &ns, &name).await?;
    let note = match (
        ownership::claim_service(found.as_ref().map(|s| &s.metadata), ms),
        &found,
    ) {
        (Claim::Ours, Some(svc)) => {
            writes::delete_ours(
                &Api::<Service>::namespaced(ctx.client.clone(), &ns),
                svc,
                "delete fronting Service",
            )
            .await?;
            format!("removed {name} from the mesh config and deleted its Service")
        }
        (Claim::Taken, _) => format!(
            "removed {name} from the mesh config; Service {name} was left in place, since \
             {} did not create it",
            resources::MANAGER
        ),
        _ => format!("removed {name} from the mesh config; its Service was already gone"),
    };
    ctx.listed.set(key(ms), HashSet::new());
    ctx.wake(&ns, ctx.overlapping.remove(&ns, &name));
    writes::publish_event(&ctx.recorder, ms, false, "Cleanup", note, "Delete").await;
    Ok(Action::await_change())
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
    let ms_stream = watches::model_services(&client, &scope, ms_writer);
    let pod_stream = watches::pods(&client, &scope, pod_writer);
    let cms = watches::deletions::<ConfigMap>(&client, &scope, watches::named(CONFIG_MAP_NAME));
    let reader = watches::named(resources::READER_ROLE);
    let roles = watches::deletions::<Role>(&client, &scope, reader.clone());
    let bindings = watches::deletions::<RoleBinding>(&client, &scope, reader);
    let gone_services = watches::deletions::<Service>(&client, &scope, Default::default());
    let (wake, woken) = mpsc::unbounded();
    let owned = watches::api_for::<Service>(&client, &scope);

    let ctx = Arc::new(Context::new(
        client,
        recorder,
        metrics,
        pods,
        services.clone(),
        wake,
        Arc::new(sidecars::AdminPort::default()),
    ));
    let pod_mapper = watches::pod_to_model_services(services.clone(), ctx.listed.clone());
    let services_for_names = services.clone();

    Controller::for_stream(ms_stream, services)
        .owns(owned, watches::managed())
        .watches_stream(pod_stream, pod_mapper)
        .watches_stream(cms, watches::republish(ctx.clone()))
        .watches_stream(roles, watches::republish(ctx.clone()))
        .watches_stream(bindings, watches::republish(ctx.clone()))
        .watches_stream(gone_services, watches::same_name(services_for_names))
        .reconcile_on(woken)
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
