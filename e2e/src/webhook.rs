//! Runs the injection webhook in local mode against the cluster from `KUBECONFIG`: the webhook
//! serves on the node IP (198.18.0.1, or `INFERMESH_E2E_WEBHOOK_HOST`) from this process, and a
//! MutatingWebhookConfiguration built from `deploy/webhook/local/` points the API server at it.
//!
//! The webhook talks to the API as its own ServiceAccount (impersonated), bound by the RBAC of
//! `deploy/webhook/rbac.yaml` moved into the run's namespace: the run proves those permissions
//! suffice.
//!
//! Every run is isolated: a unique id labels the run's namespaces (`webhook-e2e-<id>-...`), the
//! configuration's selectors match only that label, and the configuration is deleted when the
//! run ends (also on panic), so no other user of the cluster is ever blocked by it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use infermesh_webhook::app::{self, Args};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Label that ties namespaces to one run.
pub const RUN_LABEL: &str = "infermesh.io/e2e-run";

/// The client for the cluster in `KUBECONFIG`, or `None` (after saying so) when it is unset.
pub async fn cluster_client(test: &str) -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipping {test}: KUBECONFIG is unset (source /work/cluster.env or run `make test`)"
        );
        return None;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Client::try_default().await {
        Ok(c) => Some(c),
        Err(e) => panic!("KUBECONFIG is set but no client could be built from it: {e}"),
    }
}

pub struct LocalWebhook {
    pub client: Client,
    pub id: String,
    pub config_name: String,
    pub system_namespace: String,
    addr: SocketAddr,
    server: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    namespaces: Vec<String>,
}

impl LocalWebhook {
    /// Starts the webhook and registers its configuration; returns once the API server has the
    /// caBundle the webhook patched in.
    pub async fn start(client: Client, tag: &str) -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .subsec_nanos();
        let id = format!("{tag}-{}-{}", std::process::id() % 100_000, nanos % 100_000);
        let host: IpAddr = std::env::var("INFERMESH_E2E_WEBHOOK_HOST")
            .unwrap_or_else(|_| "198.18.0.1".into())
            .parse()
            .context("INFERMESH_E2E_WEBHOOK_HOST is not an IP address")?;
        let port = std::net::TcpListener::bind((host, 0))
            .with_context(|| {
                format!("cannot listen on {host}: is the local cluster up (node bridge)?")
            })?
            .local_addr()?
            .port();
        let mut me = Self {
            client,
            config_name: format!("infermesh-webhook-e2e-{id}"),
            system_namespace: format!("webhook-e2e-{id}-sys"),
            id,
            addr: SocketAddr::new(host, port),
            server: None,
            namespaces: vec![],
        };
        let sys = me.system_namespace.clone();
        me.create_namespace(&sys, false).await?;
        me.install_rbac().await?;
        me.run_server().await?;
        me.register().await?;
        Ok(me)
    }

    fn args(&self) -> Args {
        Args::parse_from([
            "infermesh-webhook".to_string(),
            format!("--listen={}", self.addr),
            format!("--namespace={}", self.system_namespace),
            format!("--webhook-config={}", self.config_name),
            format!("--extra-san={}", self.addr.ip()),
            format!("--namespace-selector={RUN_LABEL}={}", self.id),
            "--cert-check-interval=1s".to_string(),
            "--proxy-image=infermesh/pause:0.1.0".to_string(),
        ])
    }

    /// The webhook's ServiceAccount and RBAC from deploy/webhook, renamed for this run.
    async fn install_rbac(&self) -> anyhow::Result<()> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/webhook");
        let text = std::fs::read_to_string(dir.join("rbac.yaml"))?;
        let sa_text = std::fs::read_to_string(dir.join("serviceaccount.yaml"))?;
        let (sys, cluster_name) = (self.system_namespace.clone(), self.config_name.clone());
        let pp = PostParams::default();
        let mut sa: ServiceAccount = serde_yaml::from_str(&sa_text)?;
        sa.metadata.namespace = Some(sys.clone());
        Api::<ServiceAccount>::namespaced(self.client.clone(), &sys)
            .create(&pp, &sa)
            .await?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc)?;
            match v["kind"].as_str() {
                Some("ClusterRole") => {
                    let mut r: ClusterRole = serde_yaml::from_value(v)?;
                    r.metadata.name = Some(cluster_name.clone());
                    for rule in r.rules.iter_mut().flatten() {
                        if let Some(names) = rule.resource_names.as_mut() {
                            *names = names
                                .iter()
                                .map(|n| {
                                    if n == "infermesh-webhook" {
                                        cluster_name.clone()
                                    } else {
                                        n.clone()
                                    }
                                })
                                .collect();
                        }
                    }
                    Api::<ClusterRole>::all(self.client.clone())
                        .create(&pp, &r)
                        .await?;
                }
                Some("ClusterRoleBinding") => {
                    let mut b: ClusterRoleBinding = serde_yaml::from_value(v)?;
                    b.metadata.name = Some(cluster_name.clone());
                    b.role_ref.name = cluster_name.clone();
                    for s in b.subjects.iter_mut().flatten() {
                        s.namespace = Some(sys.clone());
                    }
                    Api::<ClusterRoleBinding>::all(self.client.clone())
                        .create(&pp, &b)
                        .await?;
                }
                Some("Role") => {
                    let mut r: Role = serde_yaml::from_value(v)?;
                    r.metadata.namespace = Some(sys.clone());
                    Api::<Role>::namespaced(self.client.clone(), &sys)
                        .create(&pp, &r)
                        .await?;
                }
                Some("RoleBinding") => {
                    let mut b: RoleBinding = serde_yaml::from_value(v)?;
                    b.metadata.namespace = Some(sys.clone());
                    for s in b.subjects.iter_mut().flatten() {
                        s.namespace = Some(sys.clone());
                    }
                    Api::<RoleBinding>::namespaced(self.client.clone(), &sys)
                        .create(&pp, &b)
                        .await?;
                }
                other => bail!("unexpected kind {other:?} in deploy/webhook/rbac.yaml"),
            }
        }
        Ok(())
    }

    /// A client that acts as the webhook's ServiceAccount.
    async fn service_account_client(&self) -> anyhow::Result<Client> {
        let mut cfg = kube::Config::infer().await?;
        cfg.auth_info.impersonate = Some(format!(
            "system:serviceaccount:{}:infermesh-webhook",
            self.system_namespace
        ));
        Ok(Client::try_from(cfg)?)
    }

    async fn run_server(&mut self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        let args = self.args();
        let client = self.service_account_client().await?;
        let task = tokio::spawn(async move {
            app::run_with_client(args, Some(client), async move {
                let _ = rx.await;
            })
            .await
            .map_err(anyhow::Error::from)
        });
        self.server = Some((tx, task));
        // Serving once the port answers.
        let start = Instant::now();
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the webhook did not listen on {} within 30 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops the webhook (the configuration stays: the API server then cannot reach it).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .context("webhook did not stop")???;
        }
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.run_server().await
    }

    async fn register(&self) -> anyhow::Result<()> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/webhook/local/mutatingwebhookconfiguration.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: MutatingWebhookConfiguration = serde_yaml::from_str(&text)?;
        cfg.metadata.name = Some(self.config_name.clone());
        for w in cfg.webhooks.iter_mut().flatten() {
            w.client_config.url = Some(format!("https://{}/mutate", self.addr));
            let sel = w.namespace_selector.get_or_insert_with(Default::default);
            sel.match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: RUN_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec![self.id.clone()]),
                });
        }
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &cfg)
            .await
            .context("creating the MutatingWebhookConfiguration")?;
        // The webhook patches caBundle within its check interval.
        let start = Instant::now();
        loop {
            let cfg = api.get(&self.config_name).await?;
            if cfg
                .webhooks
                .iter()
                .flatten()
                .all(|w| w.client_config.ca_bundle.is_some())
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the webhook did not patch caBundle into {} within 30 s",
                    self.config_name
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The caBundle of each webhook in the configuration.
    pub async fn ca_bundles(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let cfg = api.get(&self.config_name).await?;
        Ok(cfg
            .webhooks
            .iter()
            .flatten()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .clone()
                    .map(|b| b.0)
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Creates `webhook-e2e-<id>-<suffix>`, labelled for this run, annotated for injection when
    /// `annotated`; deleted by [`LocalWebhook::cleanup`].
    pub async fn namespace(&mut self, suffix: &str, annotated: bool) -> anyhow::Result<String> {
        let name = format!("webhook-e2e-{}-{suffix}", self.id);
        self.create_namespace(&name, annotated).await?;
        Ok(name)
    }

    async fn create_namespace(&mut self, name: &str, annotated: bool) -> anyhow::Result<()> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(RUN_LABEL.into(), self.id.clone())])),
                annotations: annotated.then(|| {
                    BTreeMap::from([(infermesh_crds::INJECT_ANNOTATION.into(), "enabled".into())])
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        self.namespaces.push(name.into());
        Ok(())
    }

    /// Waits until the webhook mirrored the annotation onto the namespace label.
    pub async fn wait_for_label(&self, ns: &str) -> anyhow::Result<()> {
        let api = Api::<Namespace>::all(self.client.clone());
        let start = Instant::now();
        loop {
            let n = api.get(ns).await?;
            if n.metadata
                .labels
                .unwrap_or_default()
                .get(infermesh_crds::INJECT_ANNOTATION)
                .map(String::as_str)
                == Some("enabled")
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "namespace {ns} did not get label {}=enabled within 30 s",
                    infermesh_crds::INJECT_ANNOTATION
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes the configuration first (so nothing can be blocked by it), then stops the
    /// webhook and deletes the run's namespaces.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        self.stop().await?;
        delete_cluster_rbac(&self.client, &self.config_name).await;
        let ns_api = Api::<Namespace>::all(self.client.clone());
        for ns in std::mem::take(&mut self.namespaces) {
            let _ = ns_api.delete(&ns, &DeleteParams::background()).await;
        }
        self.config_name.clear();
        Ok(())
    }
}

impl Drop for LocalWebhook {
    /// A failed test still removes its configuration and namespaces: from a thread with its own
    /// runtime and client, since the test's runtime may be unwinding.
    fn drop(&mut self) {
        if self.config_name.is_empty() {
            return;
        }
        let (name, namespaces) = (
            self.config_name.clone(),
            std::mem::take(&mut self.namespaces),
        );
        crate::cleanup_blocking(move |client| async move {
            let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
                .delete(&name, &DeleteParams::default())
                .await;
            delete_cluster_rbac(&client, &name).await;
            let api = Api::<Namespace>::all(client);
            for ns in namespaces {
                let _ = api.delete(&ns, &DeleteParams::background()).await;
            }
        });
    }
}

async fn delete_cluster_rbac(client: &Client, name: &str) {
    let dp = DeleteParams::default();
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(name, &dp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(name, &dp)
        .await;
}
