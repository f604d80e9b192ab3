//! The reconciler's calls to the API server, each turning a failure into an [`Error`] that says
//! what was being done: server-side apply (forcing ownership of the fields we set, field manager
//! [`MANAGER`]) of objects read first and found free or ours (`ownership`), deletes of our
//! objects only that treat "already gone" as done, the status write, and Events, which are best
//! effort.

use std::fmt::Debug;
use std::time::SystemTime;

use infermesh_crds::{
    ModelService,
    mesh::{CONFIG_MAP_NAME, MESH_KEY_SECRET, MeshConfig},
};
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Secret, Service},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::events::{Event, EventType, Recorder},
};
use serde::{Serialize, de::DeserializeOwned};

use super::key;
use crate::{
    error::Error,
    ownership::Shared,
    resources::{self, MANAGER},
};

/// Applies `obj` (named `name` in `ns`) by server-side apply, forcing ownership of the fields it
/// sets.
pub async fn ssa<K>(
    client: &Client,
    ns: &str,
    name: &str,
    obj: &K,
    what: &'static str,
) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
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

/// Deletes `found`, an object of ours, unless the name now holds another object: the uid
/// precondition keeps an object created under the same name since it was read (someone else's)
/// from being deleted. Gone, or replaced, counts as done.
pub async fn delete_ours<K>(api: &Api<K>, found: &K, what: &'static str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let meta = found.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let params = DeleteParams::background().preconditions(Preconditions {
        uid: meta.uid.clone(),
        resource_version: None,
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: what,
            source,
        }),
    }
}

/// Writes `ns`'s mesh key Secret (kept, rotated or minted from `key`, the one found), its mesh
/// ConfigMap and their reader Role and RoleBinding, in that order: the key first, so sidecars can
/// prove their markers by the time a config names peers.
pub async fn apply_published(
    client: &Client,
    ns: &str,
    config: &MeshConfig,
    owners: &[&ModelService],
    key: Option<&Secret>,
) -> Result<(), Error> {
    let reader = resources::READER_ROLE;
    let secret = resources::mesh_key_secret(ns, owners, key, SystemTime::now());
    ssa(
        client,
        ns,
        MESH_KEY_SECRET,
        &secret,
        "apply mesh key Secret",
    )
    .await?;
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

/// `name` in `ns`, if any.
async fn read<K>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &'static str,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube {
            action: what,
            source,
        })
}

/// The mesh ConfigMap, mesh key Secret and reader Role and RoleBinding of `ns` as they are in the
/// cluster.
pub async fn read_published(client: &Client, ns: &str) -> Result<Shared, Error> {
    let reader = resources::READER_ROLE;
    Ok(Shared {
        config_map: read(client, ns, CONFIG_MAP_NAME, "read mesh config ConfigMap").await?,
        role: read(client, ns, reader, "read mesh config reader Role").await?,
        binding: read(client, ns, reader, "read mesh config reader RoleBinding").await?,
        key: read(client, ns, MESH_KEY_SECRET, "read mesh key Secret").await?,
    })
}

/// The Service named `name` in `ns`, if any.
pub async fn read_service(client: &Client, ns: &str, name: &str) -> Result<Option<Service>, Error> {
    read(client, ns, name, "read fronting Service").await
}

/// Writes `status` as the ModelService's status subresource, by server-side apply.
pub async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &infermesh_crds::ModelServiceStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": infermesh_crds::api_version(),
        "kind": "ModelService",
        "status": status,
    });
    Api::<ModelService>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "write ModelService status",
            source,
        })?;
    Ok(())
}

/// Records an Event about `ms`. Events are best effort: failing to record one must not fail the
/// reconcile, so a failure is only logged.
pub async fn publish_event(
    recorder: &Recorder,
    ms: &ModelService,
    warning: bool,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = Event {
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
    if let Err(e) = recorder.publish(&event, &ms.object_ref(&())).await {
        tracing::warn!(modelservice = %key(ms), error = %e, "recording an event failed");
    }
}
