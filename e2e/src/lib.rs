//! Helpers shared by the end-to-end tests, which run against the cluster named by `KUBECONFIG`.
//!
//! Every test gets its own namespace (deleted when the guard drops) and skips with a printed
//! message when `KUBECONFIG` is unset, so a plain `cargo test` on a laptop passes.

pub mod mesh;
pub mod operator;
pub mod webhook;

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, Client};

/// How long a test waits for a pod (image already imported, so no pulls).
pub const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// A client for the cluster in `KUBECONFIG`, or `None` (after printing why) when it is unset.
pub async fn client_or_skip(test: &str) -> anyhow::Result<Option<Client>> {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        println!("skipping {test}: KUBECONFIG is not set (run `make e2e` or `make test`)");
        return Ok(None);
    }
    let client = Client::try_default()
        .await
        .context("building a client from KUBECONFIG (is the cluster up? `make cluster-up`)")?;
    Ok(Some(client))
}

/// A namespace of the test's own; deleted (without waiting) on drop.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random suffix>`.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix = format!("{:x}", std::process::id() ^ nanos());
        let name = format!("{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods cannot be created before the namespace's default ServiceAccount exists.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while sa.get_opt("default").await?.is_none() {
            if tokio::time::Instant::now() > deadline {
                bail!("namespace {name}: default ServiceAccount not created within 30s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self { name })
    }
}

/// Runs a cleanup against the cluster from a `Drop`: on a thread with its own runtime and client,
/// since the test's runtime is blocked in the drop (or unwinding). Waits for it to finish.
pub fn cleanup_blocking<F, Fut>(cleanup: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(client) = Client::try_default().await {
                cleanup(client).await;
            }
        });
    })
    .join();
}

impl Drop for TestNamespace {
    /// Deletes the namespace even when the test failed half-way. The test's runtime is blocked
    /// in this drop, so the request goes through a client and runtime of its own.
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_blocking(move |client| async move {
            let api = Api::<Namespace>::all(client);
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Deletes the namespace and waits until it is gone (bounded), so tests leave nothing behind.
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            bail!("namespace {name} still terminating after 90s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Is the pod Running with its Ready condition true?
pub fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The image of a container that cannot start because the image is absent and may not be
/// pulled (`imagePullPolicy: Never`); waiting for such a pod is pointless.
pub fn missing_image(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("ErrImageNeverPull")
        })
        .map(|c| c.image.clone())
}

/// Waits until `count` pods matching `selector` are Running and Ready; returns them.
pub async fn wait_ready_pods(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
) -> anyhow::Result<Vec<Pod>> {
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        if let Some(missing) = list.items.iter().find_map(missing_image) {
            bail!("image {missing} is not in the cluster: run `make images` (or kind load it)");
        }
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_ready).collect();
        if ready.len() >= count {
            return Ok(ready);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{count} ready pods with {selector} expected within {POD_TIMEOUT:?}, {} ready: {}",
                ready.len(),
                describe_pods(pods).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the pod has finished (Succeeded or Failed); returns its phase.
pub async fn wait_finished(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    loop {
        let pod = pods.get(name).await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(phase);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "pod {name} still {phase} after {POD_TIMEOUT:?}: {}",
                describe_pods(pods).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The logs of a pod's only container.
pub async fn logs(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    pods.logs(name, &LogParams::default())
        .await
        .with_context(|| format!("reading logs of pod {name}"))
}

/// One line per pod (phase, reason of waiting containers), for failure messages.
pub async fn describe_pods(pods: &Api<Pod>) -> String {
    match pods.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                let status = p.status.clone().unwrap_or_default();
                let waiting: Vec<String> = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .map(|w| {
                        format!(
                            "{}: {}",
                            w.reason.clone().unwrap_or_default(),
                            w.message.clone().unwrap_or_default()
                        )
                    })
                    .collect();
                format!(
                    "{name} {} {}",
                    status.phase.unwrap_or_default(),
                    waiting.join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join(" | "),
        Err(e) => format!("(listing pods failed: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ready: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .expect("valid pod")
    }

    #[test]
    fn missing_image_is_reported_only_for_never_pull() {
        let pod = |reason: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "status": {"containerStatuses": [{
                    "name": "c", "image": "infermesh/examples:0.1.0", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason}}
                }]}
            }))
            .expect("valid pod")
        };
        assert_eq!(
            missing_image(&pod("ErrImageNeverPull")).as_deref(),
            Some("infermesh/examples:0.1.0")
        );
        assert_eq!(missing_image(&pod("ContainerCreating")), None);
        assert_eq!(missing_image(&Pod::default()), None);
    }

    #[test]
    fn pod_ready_needs_running_and_ready_condition() {
        assert!(pod_ready(&pod("Running", "True")));
        assert!(!pod_ready(&pod("Running", "False")));
        assert!(!pod_ready(&pod("Pending", "True")));
        assert!(!pod_ready(&Pod::default()));
    }
}
